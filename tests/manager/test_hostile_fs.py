"""The file system turns hostile under torchkeep: a directory remounted read-only (a real
tmpfs, root only; skipped elsewhere), and a run directory deleted under a running
Checkpointer. Invariant: an error naming the path is raised (or the save succeeds
completely), no partial output is left, and no earlier checkpoint changes."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from _helpers import mounted_tmpfs
from _reliability import record
from manager._toy import Toy

import torchkeep as tk
from torchkeep.manager import Checkpointer


def _snapshot(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def remountable(tmp_path: Path):  # noqa: ANN201
    with mounted_tmpfs(tmp_path, "16m", "ro") as mnt:
        yield mnt


def test_read_only_directory(remountable: Path) -> None:
    d = remountable
    tk.save({"old": torch.ones(3)}, d / "model.safetensors")
    tk.save({"old": torch.ones(3)}, d / "model.pt")
    tk.save({"a": torch.ones(3000), "b": torch.ones(3000)}, d / "sharded", max_shard_size="16KB")
    ck = Checkpointer(d / "run")
    ck.save(Toy().fill(1), 1)
    ck.close()
    before = _snapshot(d)
    r = subprocess.run(["mount", "-o", "remount,ro", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.decode().strip()}")
    new = {"new": torch.zeros(3)}
    for target, kw in ((d / "model.safetensors", {}), (d / "model.pt", {}), (d / "fresh.safetensors", {}),
                       (d / "sharded", {"max_shard_size": "16KB"}), (d / "fresh-sharded", {"max_shard_size": "16KB"})):
        with pytest.raises(OSError) as e:
            tk.save(new, target, **kw)
        assert e.value.errno == errno.EROFS and str(target) in str(e.value), str(e.value)
        record("fault", f"read-only directory: tk.save {target.name}")
    with pytest.raises(OSError) as e:  # a writer cannot take the run's lock
        Checkpointer(d / "run").save(Toy().fill(2), 2)
    assert e.value.errno == errno.EROFS
    record("fault", "read-only directory: Checkpointer.save")
    assert _snapshot(d) == before
    t = Toy()
    t.load_state_dict(tk.load(d / "run" / "step_00000001"))  # still readable
    assert t.matches(1)


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_run_directory_deleted_under_a_running_checkpointer(tmp_path: Path, async_save: bool) -> None:
    run = tmp_path / "run"
    ck = Checkpointer(run, async_save=async_save, keep_last=2)
    ck.save(Toy().fill(1), 1)
    ck.wait()
    shutil.rmtree(run)
    record("fault", f"run directory deleted ({'async' if async_save else 'sync'})")
    try:
        ck.save(Toy().fill(2), 2)
        ck.wait()
    except (OSError, tk.TorchkeepError) as e:
        assert str(run) in str(e), f"the error does not name the run directory: {e}"
        assert not run.exists() or not [n for n in os.listdir(run) if n.startswith("step_")]
    else:  # recreated: the new step must be complete and the only one
        t = Toy()
        assert ck.restore(t) == 2 and t.matches(2)
        assert [r.step for r in ck.checkpoints()] == [2]
    finally:
        ck.close()
    assert not [n for n in (os.listdir(run) if run.exists() else []) if ".tmp-" in n]
