"""safetensors: exact round trips of every dtype and tree shape, interop, errors."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import safetensors.torch as st
import torch

import torchkeep as tk
from torchkeep.formats._base import ST_DTYPES

from _helpers import BytesRead, assert_tree_equal


def _sample(dtype: torch.dtype, shape=(3, 4)) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype.is_floating_point and dtype.itemsize == 1:
        return torch.randn(shape).to(dtype)
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype)
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=torch.float64).to(dtype)
    info = torch.iinfo(dtype)
    lo, hi = max(info.min, -(2**62)), min(info.max, 2**62)
    return torch.randint(lo, hi, shape, dtype=torch.int64).to(dtype) if dtype != torch.uint64 else torch.randint(0, 2**62, shape, dtype=torch.int64).to(dtype)


@pytest.mark.parametrize("dtype", sorted(set(ST_DTYPES.values()), key=str), ids=str)
def test_every_dtype_round_trips_bit_exact(tmp_path, dtype):
    sd = {"x": _sample(dtype), "scalar": _sample(dtype, ()), "empty": _sample(dtype, (0, 5))}
    p = tmp_path / "a.safetensors"
    tk.save(sd, p)
    back = tk.load(p)
    assert_tree_equal(sd, back)
    # any safetensors reader reads the file (the package maps the dtypes it knows)
    if dtype in set(st._TYPES.values()):
        ref = st.load_file(p)
        assert_tree_equal(sd, {k: ref[k] for k in sd})


def test_non_contiguous_views_and_nan_inf(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    base[0, 0] = float("nan")
    base[1, 1] = float("inf")
    sd = {"t": base.t(), "strided": base[:, ::2], "nan": base}
    tk.save(sd, tmp_path / "a.safetensors")
    back = tk.load(tmp_path / "a.safetensors")
    assert_tree_equal({k: v.contiguous() for k, v in sd.items()}, back)


def test_tied_weights_written_once_and_come_back_tied(tmp_path):
    emb = torch.nn.Embedding(100, 16)
    head = torch.nn.Linear(16, 100, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    p = tmp_path / "tied.safetensors"
    tk.save(model, p)
    assert list(st.load_file(p)) == ["emb.weight"]  # stored once
    assert os.path.getsize(p) < 100 * 16 * 4 * 1.5
    back = tk.load(p)
    assert list(back) == ["emb.weight", "head.weight"]
    assert back["emb.weight"] is back["head.weight"]
    assert torch.equal(back["head.weight"], emb.weight.detach())


def test_training_checkpoint_tree_round_trips(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    ckpt = {
        "epoch": 7,
        "loss": 0.125,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "history": [1.5, float("nan"), float("inf"), -0.0],
        "shape": (2, 3),
        "flags": {"amp": False, "note": None, "$weird": "key"},
        "dtype": torch.bfloat16,
        "device": torch.device("cpu"),
        "blob": b"\x00\xff",
        "z": complex(1.5, -2),
        "np": np.arange(6, dtype=np.int16).reshape(2, 3),
        "big": 2**62 + 1,
    }
    p = tmp_path / "ckpt.safetensors"
    tk.save(ckpt, p)
    back = tk.load(p)
    assert_tree_equal(ckpt, back)
    assert list(back["optimizer_state_dict"]["state"]) == [0, 1, 2, 3, 4, 5]  # int keys stay ints
    # the same tree loads into a fresh optimizer
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer_state_dict"])
    # and the tensors are plain safetensors for any other reader
    names = set(st.load_file(p))
    assert "model_state_dict.0.weight" in names and "optimizer_state_dict.state.0.exp_avg" in names


def test_header_and_data_are_aligned(tmp_path):
    sd = {"a": torch.zeros(3, dtype=torch.int8), "b": torch.zeros(5, dtype=torch.float64), "c": torch.zeros(2, dtype=torch.float16)}
    p = tmp_path / "a.safetensors"
    tk.save(sd, p)
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 64 == 0
    header = json.loads(raw[8 : 8 + n])
    for k, t in sd.items():
        assert header[k]["data_offsets"][0] % t.element_size() == 0
    assert list(k for k in header if k != "__metadata__") == ["a", "b", "c"]  # user order kept


def test_metadata_round_trip_and_inspect(tmp_path):
    p = tmp_path / "m.safetensors"
    tk.save({"w": torch.ones(2, 3)}, p, metadata={"author": "me", "lr": 0.1, "tags": ["a"]})
    info = tk.inspect(p)
    assert info.format == "safetensors"
    assert info.metadata["author"] == "me" and info.metadata["lr"] == 0.1 and info.metadata["tags"] == ["a"]
    assert [(t.name, t.shape, t.dtype, t.nbytes) for t in info.tensors] == [("w", (2, 3), "float32", 24)]
    assert st.load_file(p).keys() == {"w"}
    from safetensors import safe_open

    with safe_open(p, "pt") as g:
        assert g.metadata()["author"] == "me"


def test_inspect_reads_only_the_header_of_a_large_file(tmp_path):
    p = tmp_path / "big.safetensors"
    n_elems = (1 << 30) // 4  # 1 GiB of float32 declared
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_elems], "data_offsets": [0, n_elems * 4]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + n_elems * 4)  # sparse: no data written
    with BytesRead() as r:
        info = tk.inspect(p)
    assert r.n < 64 * 1024, f"inspect read {r.n:,} bytes"
    assert info.total_bytes == 1 << 30 and info.total_params == n_elems


def test_map_location_and_dtype(tmp_path):
    p = tmp_path / "a.safetensors"
    sd = {"f": torch.randn(3), "i": torch.arange(3)}
    tk.save(sd, p)
    back = tk.load(p, dtype=torch.float16)
    assert back["f"].dtype == torch.float16 and back["i"].dtype == torch.int64
    assert torch.equal(back["f"], sd["f"].half())
    for ml in ("cpu", torch.device("cpu"), {"cuda:1": "cpu"}, lambda storage, loc: storage):
        assert tk.load(p, map_location=ml)["f"].device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(tk.TorchkeepError, match="CUDA is not available"):
            tk.load(p, map_location="cuda:0")


def test_real_bert_checkpoint(bert_safetensors):
    ref = st.load_file(bert_safetensors)
    back = tk.load(bert_safetensors)
    assert list(back) == list(ref) or set(back) == set(ref)
    for k in ref:
        assert torch.equal(ref[k], back[k]), k
    info = tk.inspect(bert_safetensors)
    assert info.num_tensors == len(ref)
    assert info.total_params == sum(t.numel() for t in ref.values())


def test_unsupported_values_name_the_key(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"keep me")
    with pytest.raises(tk.UnsupportedTypeError, match=r"'opt\.hook'.*object"):
        tk.save({"opt": {"hook": object()}}, p)
    with pytest.raises(tk.UnsupportedTypeError, match=r"'w'.*complex128.*complex64"):
        tk.save({"w": torch.zeros(2, dtype=torch.complex128)}, p)
    with pytest.raises(tk.UnsupportedTypeError, match=r"'s'.*to_dense"):
        tk.save({"s": torch.eye(3).to_sparse()}, p)
    with pytest.raises(tk.UnsupportedTypeError, match=r"'m'.*meta"):
        tk.save({"m": torch.empty(3, device="meta")}, p)
    assert p.read_bytes() == b"keep me"  # nothing the user had is lost
    assert os.listdir(tmp_path) == ["x.safetensors"]  # no temp files left


def test_fsspec_memory_filesystem():
    sd = {"w": torch.randn(4, 4)}
    tk.save(sd, "memory://bucket/a.safetensors")
    assert_tree_equal(sd, tk.load("memory://bucket/a.safetensors"))
    assert tk.inspect("memory://bucket/a.safetensors").num_tensors == 1
