"""Checkpointer on a real S3 API (moto on 127.0.0.1, s3fs client): commit by marker.

Object stores have no atomic rename: a step is written in place and its manifest, uploaded
last, is the commit marker. These tests pin what that promises: saves restore bit-equal,
retention deletes old steps on S3, damage is found, and a save that dies before its marker
leaves a step that is never listed valid nor restored, while later saves still work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from _helpers import assert_tree_equal

import torchkeep as tk
from torchkeep.cli import main
from torchkeep.manager import Checkpointer
from torchkeep.manager._checkpointer import list_checkpoints
from torchkeep.manager._layout import MANIFEST, STATE_FILE
from torchkeep.manager._storage import ObjectStorage

pytestmark = pytest.mark.s3
HERE = os.path.dirname(os.path.abspath(__file__))


def _fs():
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    return fs


def _names(url: str) -> list[str]:
    return sorted(p.rsplit("/", 1)[-1] for p in _fs().ls(url, detail=False))


def _train_state(seed: int) -> tk.TrainState:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, 16)).pow(2).mean().backward()
        opt.step()
    return tk.TrainState(model=model, optimizer=opt, progress={"epoch": seed})


def _state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"w": torch.randn(128, 32, generator=g), "b": torch.randn(32, generator=g), "step": step}


def test_save_restore_bit_equal_and_retention_deletes_on_s3(s3_bucket):
    run = f"{s3_bucket}/runs/exp1"
    with Checkpointer(run, keep_last=2) as ck:
        for step in range(1, 6):
            st = _train_state(step)
            ck.save(st, step, {"loss": 1.0 / step})
        saved = st.state_dict()
        assert [r.step for r in ck.checkpoints()] == [4, 5]
        assert all(r.valid for r in ck.checkpoints())
    # retention removed steps 1-3 from the bucket itself, not only from the listing
    assert _names(run) == ["step_00000004", "step_00000005"]  # (the lease was released at close)
    assert sorted(_names(f"{run}/step_00000005")) == [MANIFEST, STATE_FILE]

    fresh = _train_state(99)
    with Checkpointer(run, keep_last=2) as ck:
        assert ck.restore(fresh) == 5
    assert_tree_equal(saved, fresh.state_dict())


def test_keep_best_on_s3_keeps_best_and_newest(s3_bucket):
    run = f"{s3_bucket}/runs/best"
    losses = {1: 0.5, 2: 0.1, 3: 0.7, 4: 0.9, 5: 0.8}
    with Checkpointer(run, keep_best=1, monitor="loss", keep_last=1) as ck:
        for s, loss in losses.items():
            ck.save(_state(s), s, {"loss": loss})
        assert ck.best().step == 2
    assert [n for n in _names(run) if n.startswith("step_")] == ["step_00000002", "step_00000005"]


def test_async_save_on_s3(s3_bucket):
    run = f"{s3_bucket}/runs/async"
    with Checkpointer(run, keep_last=3, async_save=True) as ck:
        for s in range(1, 5):
            ck.save(_state(s), s)
        ck.wait()
        assert [r.step for r in ck.checkpoints()] == [2, 3, 4]
        out: dict = {}
        assert ck.restore(out) == 4
    assert_tree_equal(_state(4), out)


class _CrashBeforeMarker(ObjectStorage):
    """The save of one step fails before its manifest, and so does the cleanup (as if the
    process had died there): the state object is on S3, the commit marker is not."""

    def __init__(self, step_dir: str) -> None:
        self.step_dir = step_dir

    def write_file(self, loc, data):  # noqa: ANN001, ANN201
        if loc.name == MANIFEST and self.step_dir in loc.path:
            raise OSError(5, "Input/output error (injected)")
        return super().write_file(loc, data)

    def remove_tree(self, loc):  # noqa: ANN001, ANN201
        if self.step_dir in loc.path:
            raise OSError(5, "Input/output error (injected)")
        return super().remove_tree(loc)


def test_injected_failure_before_marker_is_never_valid(s3_bucket, capsys):
    run = f"{s3_bucket}/runs/inject"
    ck = Checkpointer(run)
    ck.save(_state(1), 1)
    ck.save(_state(2), 2)
    ck._storage = _CrashBeforeMarker("step_00000003")
    with pytest.raises(OSError, match="injected"):
        ck.save(_state(3), 3)
    # the step's data is on S3, its marker is not
    assert _names(f"{run}/step_00000003") == [STATE_FILE]
    assert [r.step for r in ck.checkpoints()] == [1, 2]
    assert [r.step for r in list_checkpoints(run)] == [1, 2]
    out: dict = {}
    assert ck.restore(out) == 2
    assert_tree_equal(_state(2), out)
    with pytest.raises(tk.CheckpointNotFoundError, match="step 3"):
        ck.restore({}, step=3)

    assert main(["verify", run, "--json"]) == 0  # incomplete is not damage
    res = {r["step"]: r["status"] for r in json.loads(capsys.readouterr().out)["results"]}
    assert res == {1: "ok", 2: "ok", 3: "incomplete"}
    assert main(["ls", run, "--json"]) == 0
    assert [r["step"] for r in json.loads(capsys.readouterr().out)] == [1, 2]
    ck.close()

    # a new Checkpointer removes the leftover; saving and restoring step 3 works again
    with Checkpointer(run) as ck2:
        assert "step_00000003" not in _names(run)
        ck2.save(_state(3), 3)
        out = {}
        assert ck2.restore(out) == 3
    assert_tree_equal(_state(3), out)


def test_killed_process_before_marker(s3_bucket, s3_endpoint):
    run = f"{s3_bucket}/runs/killed"
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "_kill_child.py"), run, "3"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert proc.stdout.split() == ["saved", "1", "saved", "2", "dying"]
    assert _names(f"{run}/step_00000003") == [STATE_FILE]  # uploaded, never committed
    assert [(r.step, r.valid) for r in list_checkpoints(run)] == [(1, True), (2, True)]

    # the dead writer's lease does not block the next run; it restores step 2, not 3
    with Checkpointer(run) as ck:
        out: dict = {}
        assert ck.restore(out) == 2
        assert_tree_equal(_state(2), out)
        ck.save(_state(3), 3)
    with Checkpointer(run) as ck:
        out = {}
        assert ck.restore(out) == 3
    assert_tree_equal(_state(3), out)


def test_damaged_object_is_detected(s3_bucket, capsys):
    run = f"{s3_bucket}/runs/damaged"
    with Checkpointer(run) as ck:
        for s in (1, 2):
            ck.save(_state(s), s)
    obj = f"{run}/step_00000002/{STATE_FILE}"
    fs = _fs()
    raw = bytearray(fs.cat_file(obj))
    raw[-7] ^= 0x10  # one bit of the last tensor's data
    fs.pipe_file(obj, bytes(raw))

    assert main(["verify", run]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and "step_00000002/state.safetensors" in out and "checksum mismatch" in out
    assert main(["ls", run, "--verify", "--json"]) == 0
    rows = {r["step"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[1]["valid"] and not rows[2]["valid"] and "checksum" in rows[2]["problem"]
    with pytest.raises(tk.CorruptCheckpointError, match="step_00000002"):
        tk.load(f"{run}/step_00000002")

    with Checkpointer(run) as ck, warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got: dict = {}
        assert ck.restore(got) == 1  # the damaged newest step is skipped, with a warning
    assert any("step 2" in str(x.message) for x in w)
    assert_tree_equal(_state(1), got)


def test_truncated_object_is_listed_invalid(s3_bucket, capsys):
    run = f"{s3_bucket}/runs/short"
    with Checkpointer(run) as ck:
        ck.save(_state(1), 1)
    obj = f"{run}/step_00000001/{STATE_FILE}"
    fs = _fs()
    fs.pipe_file(obj, fs.cat_file(obj)[:-100])
    [rec] = list_checkpoints(run)
    assert not rec.valid and "truncated" in rec.problem
    assert main(["verify", f"{run}/step_00000001"]) == 1
    assert "truncated" in capsys.readouterr().out


def test_cli_ls_and_verify_on_s3_run(s3_bucket, capsys):
    run = f"{s3_bucket}/runs/cli"
    with Checkpointer(run, monitor="loss") as ck:
        for s, loss in [(10, 0.4), (20, 0.2), (30, 0.3)]:
            ck.save(_state(s), s, {"loss": loss})
    assert main(["ls", run]) == 0
    out = capsys.readouterr().out
    assert "3 checkpoint(s)" in out and "loss=0.2" in out and "best" in out and "latest" in out
    assert main(["verify", run]) == 0
    assert "3 verified, no damage" in capsys.readouterr().out
    assert main(["inspect", f"{run}/step_00000020"]) == 0
    assert "torchkeep-step" in capsys.readouterr().out


def test_listing_sees_changes_made_by_another_client(s3_bucket):
    """Sizes come from S3, not from a listing this process cached before another writer
    truncated the object."""
    import s3fs

    run = f"{s3_bucket}/runs/stale"
    with Checkpointer(run) as ck:
        ck.save(_state(1), 1)
        tk.load(f"{run}/step_00000001")  # lists (and caches) the step folder
        other = s3fs.S3FileSystem(skip_instance_cache=True)  # another process, in effect
        obj = f"{run}/step_00000001/{STATE_FILE}"
        other.pipe_file(obj, other.cat_file(obj)[:-64])
        [rec] = ck.checkpoints()
        assert not rec.valid and "truncated" in rec.problem


class _FailingUpload(ObjectStorage):
    def write_state(self, loc, tree, hook):  # noqa: ANN001, ANN201
        def failing(name, mv):  # noqa: ANN001, ANN202
            hook(name, mv)
            raise OSError(28, "No space left on device (injected)")

        return super().write_state(loc, tree, failing)


def test_async_save_failure_on_s3_surfaces_and_commits_nothing(s3_bucket):
    run = f"{s3_bucket}/runs/async-fail"
    ck = Checkpointer(run, async_save=True)
    ck.save(_state(1), 1)
    ck.wait()
    ck._storage = _FailingUpload()
    ck.save(_state(2), 2)  # returns once snapshotted; the upload fails in the background
    with pytest.raises(OSError, match="injected"):
        ck.wait()
    ck._storage = ObjectStorage()
    assert [r.step for r in ck.checkpoints()] == [1]
    assert "step_00000002" not in _names(run)  # the aborted upload left nothing behind
    out: dict = {}
    assert ck.restore(out) == 1
    ck.close()
    assert_tree_equal(_state(1), out)
