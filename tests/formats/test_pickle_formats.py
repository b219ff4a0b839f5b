"""Pickle-based formats read by the restricted unpickler: torch zip, legacy, bare pickle,
TorchScript; the torch zip writer. Real files written by torch itself, compared bit for bit."""

from __future__ import annotations

import argparse
import collections
import importlib
import pickle
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import assert_tree_equal, BytesRead

import torchkeep as tk
from torchkeep._io.fs import resolve
from torchkeep.formats import read_pickled_raw

FORMATS = ["zip", "legacy"]


def _save(obj, path: Path, fmt: str) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def _dtypes() -> list[torch.dtype]:
    out = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
           torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128]
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "uint16", "uint32", "uint64"):
        if isinstance(getattr(torch, name, None), torch.dtype):
            out.append(getattr(torch, name))
    return out


def _sample(dt: torch.dtype, shape=(3, 4)) -> torch.Tensor:
    raw = torch.randint(0, 256, (int(np.prod(shape)) * torch.empty((), dtype=dt).element_size(),), dtype=torch.uint8)
    return raw.view(dt).reshape(shape)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_dtype_bit_exact(tmp_path, fmt):
    tree = {dtype_name: _sample(dt) for dtype_name, dt in ((str(d), d) for d in _dtypes())}
    p = _save(tree, tmp_path / "all.pt", fmt)
    got = tk.load(p)
    assert_tree_equal(tree, got)
    info = tk.inspect(p)
    assert info.format == ("torch-zip" if fmt == "zip" else "torch-legacy")
    assert {t.name: (t.dtype, t.shape, t.nbytes) for t in info.tensors} == {
        k: (str(v.dtype).removeprefix("torch."), tuple(v.shape), v.numel() * v.element_size()) for k, v in tree.items()
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_shapes_views_and_shared_storage(tmp_path, fmt):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    emb = torch.randn(5, 3)
    tree = {
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 7),
        "t": base.t(),  # non-contiguous
        "slice": base[1:3, ::2],  # offset + stride
        "base": base,
        "tied_a": emb,
        "tied_b": emb,  # same object
        "tied_c": emb.detach(),  # same storage, other tensor object (state_dict style)
        "nested": [base[0], (base[1], {"deep": base[2:]})],
        "epoch": 7,
        "loss": 0.25,
        "name": "run",
        "none": None,
        "flag": True,
        "ints": {1: "one", 2: "two"},
    }
    got = tk.load(_save(tree, tmp_path / "v.pt", fmt))
    assert_tree_equal(tree, got)
    assert got["t"].stride() == (1, 6) and got["slice"].storage_offset() == 6
    s = got["base"].untyped_storage().data_ptr()
    for k in ("t", "slice"):
        assert got[k].untyped_storage().data_ptr() == s
    assert got["nested"][1][1]["deep"].untyped_storage().data_ptr() == s
    assert got["tied_a"] is got["tied_b"]
    assert got["tied_c"].data_ptr() == got["tied_a"].data_ptr()
    got["base"][0, 0] = 100.0  # views stay views
    assert got["t"][0, 0] == 100.0


def test_state_dict_keeps_ordered_dict_and_metadata(tmp_path):
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    sd = m.state_dict()
    got = tk.load(_save(sd, tmp_path / "sd.pt", "zip"))
    assert type(got) is collections.OrderedDict
    assert_tree_equal(dict(sd), dict(got))
    assert got._metadata == sd._metadata
    m2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    m2.load_state_dict(got)


def test_training_checkpoint_with_optimizer(tmp_path):
    m = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randn(3, 4)).sum().backward()
    opt.step()
    ckpt = {"epoch": 3, "model_state_dict": m.state_dict(), "optimizer_state_dict": opt.state_dict(), "loss": 0.5,
            "rng": torch.get_rng_state()}
    got = tk.load(_save(ckpt, tmp_path / "ckpt.tar", "zip"))
    assert_tree_equal(ckpt, got)
    opt2 = torch.optim.AdamW(torch.nn.Linear(4, 2).parameters(), lr=1e-3)
    opt2.load_state_dict(got["optimizer_state_dict"])


# ------------------------------------------------------------------------- whole models
MODULE_SRC = textwrap.dedent(
    """
    import os, torch

    MARKER = {marker!r}

    def _touch(what):
        with open(MARKER, "a") as f:
            f.write(what + "\\n")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 3, 3)
            self.bn = torch.nn.BatchNorm2d(3)
            self.register_buffer("scratch", torch.zeros(2), persistent=False)

        def __setstate__(self, state):
            _touch("setstate")
            super().__setstate__(state)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.head = torch.nn.Linear(3, 5)
            self.tied = self.head  # same module twice
            self.emb = torch.nn.Embedding(5, 3)
            self.out = torch.nn.Linear(3, 5, bias=False)
            self.out.weight = self.emb.weight  # tied parameter
            self.register_buffer("steps", torch.tensor(7))
            self.extra = None
            self.cfg = {{"width": 3}}

        def __setstate__(self, state):
            _touch("setstate")
            super().__setstate__(state)

        def __reduce_ex__(self, proto):
            return super().__reduce_ex__(proto)
    """
)


@pytest.fixture
def moved_class_model(tmp_path, monkeypatch):
    """A whole-model pickle whose module file is gone (the 'class moved after refactor' case)."""
    marker = tmp_path / "ran.txt"
    mod_dir = tmp_path / "userpkg"
    mod_dir.mkdir()
    (mod_dir / "tk_moved_models.py").write_text(MODULE_SRC.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(mod_dir))
    mod = importlib.import_module("tk_moved_models")
    model = mod.Net()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    paths = {}
    for fmt in FORMATS:
        paths[fmt] = _save(model, tmp_path / f"whole-{fmt}.pt", fmt)
    _save({"model": model, "epoch": 4, "args": argparse.Namespace(lr=0.1)}, tmp_path / "wrapped.pt", "zip")
    paths["wrapped"] = tmp_path / "wrapped.pt"
    del sys.modules["tk_moved_models"]
    (mod_dir / "tk_moved_models.py").unlink()
    importlib.invalidate_caches()
    return paths, expected, marker


@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_model_pickle_loads_as_state_dict_without_running_code(moved_class_model, fmt):
    paths, expected, marker = moved_class_model
    got = tk.load(paths[fmt])
    assert list(got) == list(expected)
    assert_tree_equal(expected, dict(got))
    assert "block.scratch" not in got  # non-persistent buffer
    assert got["out.weight"].data_ptr() == got["emb.weight"].data_ptr()  # tie kept
    assert not any(isinstance(v, torch.nn.Parameter) or v.requires_grad for v in got.values())
    info = tk.inspect(paths[fmt])
    assert [t.name for t in info.tensors] == list(expected)
    assert not marker.exists(), "code from the pickled classes ran"
    assert "tk_moved_models" not in sys.modules


def test_module_inside_a_tree_and_raw_read(moved_class_model):
    paths, expected, marker = moved_class_model
    got = tk.load(paths["wrapped"])
    assert set(got) == {"model", "epoch", "args"} and got["epoch"] == 4
    assert_tree_equal(expected, dict(got["model"]))
    ns = got["args"]
    assert isinstance(ns, tk.Placeholder) and ns.class_path == "argparse.Namespace"
    assert ns.state == {"lr": 0.1} and repr(ns) == "<Placeholder argparse.Namespace>"
    raw = read_pickled_raw(resolve(paths["wrapped"]))
    net = raw["model"]
    assert isinstance(net, tk.Placeholder) and net.class_path == "tk_moved_models.Net"
    assert set(net.state["_modules"]) == {"block", "head", "tied", "emb", "out"}
    assert torch.equal(net.state["_modules"]["head"].state["_parameters"]["weight"], expected["head.weight"])
    info = tk.inspect(paths["wrapped"])
    assert "args: argparse.Namespace" in info.placeholders
    assert info.values["epoch"] == 4
    assert not marker.exists()


# ------------------------------------------------------------------------ bare pickles
def test_bare_pickle_with_tensors_numpy_and_namespace(tmp_path):
    w = torch.randn(3, 4)
    tree = {"w": w, "view": w[1], "half": torch.ones(2, dtype=torch.float16), "u16": torch.arange(3).to(torch.uint16),
            "np_f": np.float32(1.5), "np_i": np.int64(-3), "arr": np.arange(6, dtype=np.float64).reshape(2, 3),
            "arr_f": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)), "b": b"\x00\xff", "ba": bytearray(b"xy"),
            "s": {1, 2}, "fs": frozenset({"a"}), "c": 1 + 2j, "od": collections.OrderedDict(a=1),
            "args": argparse.Namespace(lr=0.1, layers=[1, 2]), "dt": torch.float16, "dev": torch.device("cpu"), "size": torch.Size([2, 3])}
    for proto in (2, 4, 5):
        p = tmp_path / f"t{proto}.pkl"
        p.write_bytes(pickle.dumps(tree, protocol=proto))
        got = tk.load(p)
        for k in ("w", "view", "half", "u16"):
            assert_tree_equal(tree[k], got[k])
        # (plain pickle re-serialises a view's storage, so pickle.loads does not share it either)
        assert type(got["np_f"]) is np.float32 and got["np_f"] == 1.5
        assert type(got["np_i"]) is np.int64 and got["np_i"] == -3
        for k in ("arr", "arr_f"):
            assert got[k].dtype == tree[k].dtype and np.array_equal(got[k], tree[k])
        assert got["b"] == b"\x00\xff" and got["ba"] == bytearray(b"xy")
        assert got["s"] == {1, 2} and got["fs"] == frozenset({"a"}) and got["c"] == 1 + 2j
        assert got["od"] == collections.OrderedDict(a=1)
        assert got["args"].class_path == "argparse.Namespace" and got["args"].state == {"lr": 0.1, "layers": [1, 2]}
        assert got["dt"] is torch.float16 and got["dev"] == torch.device("cpu") and got["size"] == torch.Size([2, 3])
        info = tk.inspect(p)
        assert info.format == "pickle"
        assert {t.name for t in info.tensors} == {"w", "view", "half", "u16"}
        assert info.values["np_f"] == 1.5 and "args: argparse.Namespace" in info.placeholders


def test_pickle_protocol0_and_1(tmp_path):
    tree = {"a": [1, 2.5, "x", None, True], "b": (1, (2,)), "c": {"k": b"v"}}
    for proto in (0, 1):
        p = tmp_path / f"p{proto}.pkl"
        p.write_bytes(pickle.dumps(tree, protocol=proto))
        # protocol 0/1 files start without PROTO; read through the pickle reader directly
        from torchkeep.formats import legacy

        with resolve(p).open_source() as src:
            assert legacy.read_pickle(src) == tree


# --------------------------------------------------------------------------- TorchScript
class _Scriptable(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = torch.nn.Linear(2, 3)
        self.seq = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        self.register_buffer("b", torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(self.l(x) + self.b)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_parameters_and_buffers(tmp_path, how):
    m = _Scriptable().eval()
    sm = torch.jit.script(m) if how == "script" else torch.jit.trace(m, torch.randn(4, 2))
    p = tmp_path / "m.pt"
    torch.jit.save(sm, str(p))
    got = tk.load(p)
    expected = sm.state_dict()
    assert list(got) == list(expected)
    assert_tree_equal(dict(expected), got)
    info = tk.inspect(p)
    assert info.format == "torchscript" and [t.name for t in info.tensors] == list(expected)
    assert_tree_equal(dict(expected), tk.load(p, unsafe_pickle=True))


# ------------------------------------------------------------------ map_location, dtype
def test_map_location_forms_and_dtype_cast(tmp_path):
    w = torch.randn(4, 4)
    tree = {"w": w, "v": w[0], "i": torch.arange(3)}
    p = _save(tree, tmp_path / "m.pt", "zip")
    for ml in ("cpu", torch.device("cpu"), {"cpu": "cpu"}, lambda storage, loc: storage, None):
        assert_tree_equal(tree, tk.load(p, map_location=ml))
    got = tk.load(p, dtype=torch.float16)
    assert got["w"].dtype == torch.float16 and got["i"].dtype == torch.int64
    assert torch.equal(got["w"], w.half()) and torch.equal(got["v"], w[0].half())


def test_saved_on_cuda1_opens_on_cpu_legacy(tmp_path):
    """Rewrite the saved location to cuda:1 (no GPU needed): the default map_location is cpu."""
    p = _save({"w": torch.arange(4.0)}, tmp_path / "c.pt", "legacy")
    data = p.read_bytes()
    assert data.count(b"X\x03\x00\x00\x00cpu") == 1
    p.write_bytes(data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:1"))
    got = tk.load(p)
    assert got["w"].device.type == "cpu" and torch.equal(got["w"], torch.arange(4.0))
    if not torch.cuda.is_available():
        with pytest.raises(tk.TorchkeepError, match="CUDA is not available"):
            tk.load(p, map_location=None)


def test_map_location_cuda_zip(tmp_path):
    import zipfile

    p = _save({"w": torch.arange(4.0)}, tmp_path / "c.pt", "zip")
    with zipfile.ZipFile(p) as z:
        records = {n: z.read(n) for n in z.namelist()}
    q = tmp_path / "c1.pt"
    with zipfile.ZipFile(q, "w", zipfile.ZIP_STORED) as z:
        for n, b in records.items():
            z.writestr(n, b.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:1") if n.endswith("data.pkl") else b)
    got = tk.load(q)
    assert got["w"].device.type == "cpu" and torch.equal(got["w"], torch.arange(4.0))
    got = tk.load(q, map_location={"cuda:1": "cpu"})
    assert torch.equal(got["w"], torch.arange(4.0))


# -------------------------------------------------------------------------- the writer
def test_write_torch_zip_round_trip_and_torch_load(tmp_path):
    emb = torch.randn(5, 3)
    tree = {"epoch": 2, "model": {"emb": emb, "head": emb, "b": torch.zeros(3, dtype=torch.bfloat16)},
            "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
            "hist": (1.0, float("inf")), "dt": torch.float32, "raw": b"\x01"}
    p = tmp_path / "out.pt"
    tk.save(tree, p, metadata={"note": "hi", "n": 1})
    theirs = torch.load(p, weights_only=True)
    assert_tree_equal(tree, theirs)
    ours = tk.load(p)
    assert_tree_equal(tree, ours)
    assert ours["model"]["emb"].data_ptr() == ours["model"]["head"].data_ptr()
    info = tk.inspect(p)
    assert info.metadata == {"note": "hi", "n": 1} and info.values["epoch"] == 2
    assert not list(tmp_path.glob(".*tmp*"))


def test_write_module_and_numpy_leaves(tmp_path):
    m = torch.nn.Linear(2, 2)
    tk.save(m, tmp_path / "m.pth")
    assert_tree_equal(dict(m.state_dict()), dict(torch.load(tmp_path / "m.pth", weights_only=True)))
    tk.save({"a": np.arange(3), "s": np.float64(2.5)}, tmp_path / "n.pt")
    got = torch.load(tmp_path / "n.pt", weights_only=True)
    assert torch.equal(got["a"], torch.arange(3)) and got["s"] == 2.5


def test_write_refuses_objects_naming_the_key(tmp_path):
    with pytest.raises(tk.UnsupportedTypeError, match="cfg.args"):
        tk.save({"cfg": {"args": argparse.Namespace(a=1)}}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


# ------------------------------------------------------------------------------- speed
def test_inspect_reads_no_tensor_data(tmp_path, monkeypatch):
    tree = {f"layer{i}.weight": torch.zeros(64, 64) for i in range(50)}
    p = _save(tree, tmp_path / "big.pt", "zip")
    from torchkeep._io import fs

    reads = []
    orig = fs.ByteSource.pread
    monkeypatch.setattr(fs.ByteSource, "pread", lambda self, off, n: reads.append(n) or orig(self, off, n))
    monkeypatch.setattr(fs.ByteSource, "readinto", lambda *a: pytest.fail("inspect read tensor data"))
    info = tk.inspect(p)
    assert info.num_tensors == 50 and info.total_bytes == 50 * 64 * 64 * 4
    assert sum(reads) < 64 * 1024


def test_inspect_of_a_large_file_reads_only_headers(tmp_path):
    p = tmp_path / "big.pt"
    torch.save({f"w{i}": torch.empty(16 << 20, dtype=torch.uint8) for i in range(4)}, p)
    with BytesRead() as r:
        info = tk.inspect(p)
    assert info.total_bytes == 4 * (16 << 20)
    assert r.n < 256 * 1024, f"inspect read {r.n:,} bytes of a {p.stat().st_size:,}-byte file"


def test_torch_zip_on_fsspec_memory():
    tree = {"w": torch.randn(3, 3), "step": 5}
    url = "memory://tk-pickle-tests/run/ckpt.pt"
    tk.save(tree, url, metadata={"who": "memory"})
    assert_tree_equal(tree, tk.load(url))
    assert tk.inspect(url).metadata == {"who": "memory"}
    import fsspec

    with fsspec.open(url, "rb") as f:
        assert_tree_equal(tree, torch.load(f, weights_only=True))


def test_torch_zip_storages_are_read_in_one_pass_after_the_pickle(tmp_path, monkeypatch):
    """A CPU load collects every storage and reads them in one coalesced pass (parallel
    ranges on object stores); a load with a dtype cast reads each storage as it is named."""
    import torchkeep.formats.torchzip as tz

    base = torch.arange(40.0)
    tree = {"a": torch.randn(8, 8), "b": torch.randn(100), "view": base[10:20], "base": base, "n": 3}
    p = tmp_path / "m.pt"
    torch.save(tree, p)
    calls = []
    real = tz.read_jobs
    monkeypatch.setattr(tz, "read_jobs", lambda src, jobs, **k: (calls.append(len(jobs)), real(src, jobs, **k))[1])
    got = tk.load(p)
    assert calls == [3]  # three storages, one pass
    assert all(torch.equal(got[k], tree[k]) for k in ("a", "b", "view", "base")) and got["n"] == 3
    got["base"][10] = -1.0
    assert got["view"][0] == -1.0  # the view still shares its base's storage
    calls.clear()
    half = tk.load(p, dtype=torch.float16)
    assert calls == [1, 1, 1] and half["a"].dtype == torch.float16
    assert torch.equal(half["b"], tree["b"].half())
