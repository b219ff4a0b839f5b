"""Checkpointer under a process group: 2 CPU processes on gloo, DDP and FSDP2 (fully_shard).

Each test starts real ranks (``_launch.launch``: subprocesses, env init, a free port on
127.0.0.1, a deadline). What is compared is every tensor of the TrainState, whole
(DTensors gathered), bit for bit, against the reference the saving run wrote.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from pathlib import Path

import pytest
import torch

import torchkeep as tk
from torchkeep.cli import main as cli_main

dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent))
from _launch import describe, launch  # noqa: E402
from dist_worker import build, compare, full_view, plain_values, train  # noqa: E402

pytestmark = pytest.mark.slow


def _ok(ranks) -> None:
    assert all(r.returncode == 0 for r in ranks), describe(ranks)


def _ref(path: Path) -> tuple[dict, dict]:
    ref = tk.load(str(path))
    return {k: v for k, v in ref.items() if not k.startswith("rand.")}, tk.inspect(str(path)).metadata["values"]


def _restore_here(run: Path, ref: dict, values: dict, step: int, epoch: int) -> None:
    """World size 1 without a process group: a plain model restores the multi-rank step."""
    model, state, extra = build("plain", seed=7)
    assert compare(full_view(state), ref)  # differs before
    with tk.Checkpointer(str(run)) as ck:
        assert ck.restore(state) == step
    assert compare(full_view(state), ref) == []
    assert plain_values(state) == values and extra["epoch"] == epoch
    train(model, state, extra, 1, 0)  # and training goes on


def test_fsdp2_save_at_2_restore_at_2_and_1(tmp_path):
    run, ref_path, out = tmp_path / "run", tmp_path / "ref.safetensors", tmp_path / "out"
    out.mkdir()
    torch_dcp = tmp_path / "torch_dcp"
    _ok(launch("train_save", {"kind": "fsdp", "run": str(run), "steps": [1, 3], "ref": str(ref_path), "torch_dcp": str(torch_dcp)}))
    step_dir = run / "step_00000003"
    shards = sorted(p.name for p in (step_dir / "dcp").iterdir())
    assert shards == ["shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]
    man = json.loads((step_dir / "manifest.json").read_text())
    assert man["env"]["world_size"] == 2 and set(man["files"]) == {"state.safetensors", *(f"dcp/{s}" for s in shards)}
    # each rank's shard is a plain safetensors file holding its half of the weights
    from safetensors import safe_open

    with safe_open(str(step_dir / "dcp" / shards[1]), framework="pt") as f:
        assert list(f.get_slice("model.0.weight").get_shape()) == [4, 6]  # rows 5..8 of 9

    # restore at world size 2: into FSDP2 (same sharding) and into DDP (whole tensors)
    _ok(launch("restore_check", {"kinds": ["fsdp", "ddp"], "run": str(run), "ref": str(ref_path), "step": 3, "epoch": 3,
                                 "out": str(out), "check_rng": True}))
    # world size 1 under a process group (FSDP2 on a 1-rank mesh)
    _ok(launch("restore_check", {"kinds": ["fsdp"], "run": str(run), "ref": str(ref_path), "step": 3, "epoch": 3,
                                 "out": str(out), "check_rng": False}, world=1))
    ref, values = _ref(ref_path)
    _restore_here(run, ref, values, 3, 3)

    # the same step read offline: tk.load assembles the shards; inspect lists every tensor
    tree = tk.load(str(step_dir))
    assert torch.equal(tree["model"]["0.weight"], ref["model.0.weight"])
    info = tk.inspect(str(step_dir))
    assert {"model.0.weight", "opt.state.model.2.bias.exp_avg_sq"} <= {t.name for t in info.tensors}
    # the dcp/ folder is what torch's HuggingFaceStorageReader loads, here in one process
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader

    target = {k: torch.zeros_like(v) for k, v in ref.items() if k.startswith(("model.", "opt.state."))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(target, storage_reader=HuggingFaceStorageReader(str(step_dir / "dcp")))
    assert all(torch.equal(target[k], ref[k]) for k in target)
    # torch's own dcp.save of the FSDP2 model (.metadata + .distcp chunks), read safely
    got = tk.load(str(torch_dcp))["model"]
    assert all(torch.equal(got[k], ref[f"model.{k}"]) for k in ("0.weight", "0.bias", "2.weight", "2.bias"))
    assert cli_main(["verify", str(torch_dcp)]) == 0
    assert cli_main(["convert", str(step_dir), str(tmp_path / "one.safetensors")]) == 0
    assert cli_main(["ls", str(run)]) == 0
    assert cli_main(["verify", str(run)]) == 0

    # one flipped byte in rank 1's shard of the newest step: verify names it, restore falls back
    shard = step_dir / "dcp" / shards[1]
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert cli_main(["verify", str(run)]) == 1
    model, state, extra = build("plain", seed=7)
    with tk.Checkpointer(str(run)) as ck, pytest.warns(UserWarning, match="skipping checkpoint step 3"):
        assert ck.restore(state) == 1


def test_ddp_save_at_2_restore_at_2_and_1(tmp_path):
    run, ref_path, out = tmp_path / "run", tmp_path / "ref.safetensors", tmp_path / "out"
    out.mkdir()
    _ok(launch("train_save", {"kind": "ddp", "run": str(run), "steps": [2], "ref": str(ref_path)}))
    _ok(launch("restore_check", {"kinds": ["ddp", "fsdp"], "run": str(run), "ref": str(ref_path), "step": 2, "epoch": 2,
                                 "out": str(out), "check_rng": True}))
    ref, values = _ref(ref_path)
    _restore_here(run, ref, values, 2, 2)


def test_save_at_1_restore_at_2(tmp_path):
    """A step written by one process (no process group) restores into DDP and FSDP2 ranks."""
    run, ref_path, out = tmp_path / "run", tmp_path / "ref.safetensors", tmp_path / "out"
    out.mkdir()
    model, state, extra = build("plain", seed=0)
    train(model, state, extra, 2, 0)
    with tk.Checkpointer(str(run)) as ck:
        ck.save(state, 2)
    assert not (run / "step_00000002" / "dcp").exists()  # the single-process layout, unchanged
    tk.save(full_view(state), str(ref_path), metadata={"values": plain_values(state), "world": 1})
    _ok(launch("restore_check", {"kinds": ["fsdp", "ddp"], "run": str(run), "ref": str(ref_path), "step": 2, "epoch": 2,
                                 "out": str(out), "check_rng": False}))


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_rank_killed_mid_save_commits_nothing(tmp_path, kind):
    run, ref_path, out = tmp_path / "run", tmp_path / "ref.safetensors", tmp_path / "out"
    out.mkdir()
    ranks = launch("kill_mid_save", {"kind": kind, "run": str(run), "ref": str(ref_path), "out": str(out)}, timeout=120)
    assert ranks[1].returncode == -signal.SIGKILL, describe(ranks)
    assert (out / "rank1-dying").exists()  # it died inside the save, after writing its shard
    assert ranks[0].returncode == 3, describe(ranks)  # rank 0 raised (did not hang, did not commit)
    assert not (out / "rank0-committed").exists()
    err = (out / "rank0-error.txt").read_text()
    assert err.startswith("TorchkeepError") and "step 2 was not saved" in err and "Nothing was committed" in err, err
    assert sorted(os.listdir(run)) == [".lock", "step_00000001"]  # no step 2, no leftover tmp folder
    ref = tk.load(str(ref_path))
    model, state, extra = build("plain", seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped: step 1 is intact
        with tk.Checkpointer(str(run)) as ck:
            assert ck.restore(state) == 1
    assert compare(full_view(state), ref) == []
    assert cli_main(["verify", str(run)]) == 0
