"""DCP folders read offline (single process): tk.load/inspect, convert both ways, verify, and
safety: a hostile .metadata is refused without running anything."""

from __future__ import annotations

import os
import pickle
import shutil
import warnings

import pytest
import torch

import torchkeep as tk
from torchkeep.cli import main as cli_main
from torchkeep.errors import CorruptCheckpointError, UnsafePickleError

dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available in this build", allow_module_level=True)
dcp = pytest.importorskip("torch.distributed.checkpoint")


def _state() -> dict:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(m.parameters(), lr=0.003)
    m(torch.randn(3, 5)).sum().backward()
    opt.step()
    return {"model": m.state_dict(), "opt": opt.state_dict(), "extra": {"epoch": 7, "name": "run-a", "hist": [1, 2.5]}}


def _torch_save(sd: dict, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, checkpoint_id=path)


def test_torch_written_dcp_folder_loads_and_inspects(tmp_path):
    sd = _state()
    folder = str(tmp_path / "ckpt")
    _torch_save(sd, folder)
    assert tk.formats.detect(tk._io.fs.resolve(folder)) == "dcp"
    got = tk.load(folder)
    for k, v in sd["model"].items():
        assert torch.equal(got["model"][k], v)
    for pid, st in sd["opt"]["state"].items():  # DCP turns dict keys into strings
        for name, v in st.items():
            assert torch.equal(got["opt"]["state"][str(pid)][name], v)
    assert got["extra"] == {"epoch": 7, "name": "run-a", "hist": [1, 2.5]}
    assert got["opt"]["param_groups"][0]["lr"] == 0.003
    assert got["opt"]["param_groups"][0]["betas"] == (0.9, 0.999)

    info = tk.inspect(folder)
    assert info.format == "dcp"
    assert {t.name for t in info.tensors} == {f"model.{k}" for k in sd["model"]} | {
        f"opt.state.{p}.{n}" for p, st in sd["opt"]["state"].items() for n in st
    }
    assert info.metadata["dcp_layout"] == "torch-save"
    assert "extra.epoch" in info.metadata["objects"]
    assert info.total_bytes == sum(v.numel() * v.element_size() for v in sd["model"].values()) + sum(
        v.numel() * v.element_size() for st in sd["opt"]["state"].values() for v in st.values()
    )


def test_convert_dcp_to_safetensors_and_back_loads_with_dcp_load(tmp_path, capsys):
    sd = _state()
    folder = str(tmp_path / "ckpt")
    _torch_save(sd, folder)
    out = str(tmp_path / "flat.safetensors")
    assert cli_main(["convert", folder, out]) == 0
    flat = tk.load(out)
    assert torch.equal(flat["model"]["0.weight"], sd["model"]["0.weight"])
    assert flat["extra"]["epoch"] == 7

    back = str(tmp_path / "back")
    assert cli_main(["convert", out, back, "--dcp"]) == 0
    assert cli_main(["convert", out, back, "--dcp"]) == 2  # never overwrites without --force
    assert cli_main(["convert", out, back, "--dcp", "--force"]) == 0
    target = {"model": {k: torch.zeros_like(v) for k, v in sd["model"].items()}, "extra": {"epoch": 0}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(target, checkpoint_id=back)  # torch's own reader
    for k, v in sd["model"].items():
        assert torch.equal(target["model"][k], v)
    assert target["extra"]["epoch"] == 7

    assert cli_main(["verify", folder]) == 0
    assert cli_main(["inspect", back, "--json"]) == 0
    assert '"format": "dcp"' in capsys.readouterr().out


class _Boom:
    def __reduce__(self):  # what a hostile .metadata pickles: os.system("touch MARKER")
        return (os.system, (f"touch {self.marker}",))


def test_hostile_metadata_is_refused_and_never_runs(tmp_path):
    folder = tmp_path / "ckpt"
    _torch_save(_state(), str(folder))
    marker = tmp_path / "PWNED"
    boom = _Boom()
    boom.marker = str(marker)
    (folder / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": boom}))
    for fn in (tk.load, tk.inspect):
        with pytest.raises(UnsafePickleError, match=r"os\.system|posix\.system"):
            fn(str(folder))
    assert cli_main(["verify", str(folder)]) == 2
    assert cli_main(["convert", str(folder), str(tmp_path / "x.safetensors")]) == 2
    assert not marker.exists()


def test_metadata_naming_any_other_class_is_refused(tmp_path):
    import argparse

    folder = tmp_path / "ckpt"
    _torch_save(_state(), str(folder))
    (folder / ".metadata").write_bytes(pickle.dumps(argparse.Namespace(state_dict_metadata={})))
    with pytest.raises(UnsafePickleError, match="argparse.Namespace"):
        tk.load(str(folder))


def test_truncated_item_file_is_corrupt_not_a_crash(tmp_path):
    folder = tmp_path / "ckpt"
    _torch_save(_state(), str(folder))
    distcp = next(p for p in folder.iterdir() if p.suffix == ".distcp")
    distcp.write_bytes(distcp.read_bytes()[: distcp.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError):
        tk.load(str(folder))
    assert cli_main(["verify", str(folder)]) == 1


def test_missing_item_file_names_it(tmp_path):
    folder = tmp_path / "ckpt"
    _torch_save(_state(), str(folder))
    for p in folder.glob("*.distcp"):
        p.unlink()
    with pytest.raises(CorruptCheckpointError, match=r"__0_0\.distcp: missing"):
        tk.load(str(folder))


def test_hf_layout_shards_consolidate(tmp_path):
    """DCP's Hugging Face layout (what a Checkpointer writes under a process group), written
    here as two chunk files by hand: the reader assembles the full tensor from the offsets."""
    import json

    full = torch.arange(30, dtype=torch.float32).reshape(6, 5)
    folder = tmp_path / "hf"
    folder.mkdir()
    for i, (lo, hi) in enumerate(((0, 4), (4, 6)), start=1):
        meta = {"DCP_SHARDING_INFO": json.dumps({"w": {"saved_offsets": [lo, 0]}})}
        tk.formats.safetensors.write(tk._io.fs.resolve(str(folder / f"shard-{i:05d}-model-00001-of-00001.safetensors")),
                                     {"w": full[lo:hi].clone()}, meta)
    got = tk.load(str(folder))
    assert torch.equal(got["w"], full)
    info = tk.inspect(str(folder))
    assert info.format == "dcp" and info.tensors[0].shape == (6, 5)
    # a chunk that overlaps another is damage, not a silent overwrite
    meta = {"DCP_SHARDING_INFO": json.dumps({"w": {"saved_offsets": [3, 0]}})}
    tk.formats.safetensors.write(tk._io.fs.resolve(str(folder / "shard-00002-model-00001-of-00001.safetensors")),
                                 {"w": full[3:6].clone()}, meta)
    with pytest.raises(CorruptCheckpointError):
        tk.load(str(folder))
    shutil.rmtree(folder)


def test_metadata_whose_chunks_do_not_tile_the_tensor_is_corrupt(tmp_path):
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    folder = tmp_path / "ckpt"
    _torch_save(_state(), str(folder))
    md = pickle.loads((folder / ".metadata").read_bytes())  # our own file, written just above
    md.state_dict_metadata["model.0.weight"].chunks.append(ChunkStorageMetadata(torch.Size([2, 0]), torch.Size([2, 5])))
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(CorruptCheckpointError, match=r"model\.0\.weight"):
        tk.inspect(str(folder))
