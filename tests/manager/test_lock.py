"""One writer per run directory: a second process gets LockError naming the holder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from torchkeep.errors import LockError
from torchkeep.manager import Checkpointer

HOLD = textwrap.dedent(
    """
    import sys
    from torchkeep.manager import Checkpointer
    ck = Checkpointer(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()  # hold until the parent closes stdin
    """
)


def test_second_process_gets_lock_error(tmp_path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(LockError) as e:
            Checkpointer(tmp_path)
        msg = str(e.value)
        assert f"pid {p.pid}" in msg and str(tmp_path) in msg and "Fix:" in msg
        assert isinstance(e.value, RuntimeError)
    finally:
        p.stdin.close()
        p.wait(60)
    # the holder exited: the lock is free again
    ck = Checkpointer(tmp_path)
    ck.save({"x": torch.ones(2)}, 1)


def test_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    p.kill()
    p.wait(60)
    Checkpointer(tmp_path).close()


def test_same_process_new_instance_takes_over(tmp_path: Path) -> None:
    a = Checkpointer(tmp_path, async_save=True)
    a.save({"x": torch.ones(2)}, 1)
    with pytest.warns(UserWarning, match="another Checkpointer of this process was open"):
        b = Checkpointer(tmp_path)
    assert [r.step for r in b.checkpoints()] == [1]  # a's pending write was finished
    with pytest.raises(Exception, match="is closed"):
        a.save({"x": torch.ones(2)}, 2)
    b.close()
    c = Checkpointer(tmp_path)  # closed instances release the lock
    c.close()


def test_lock_released_when_garbage_collected(tmp_path: Path) -> None:
    import gc

    Checkpointer(tmp_path)
    gc.collect()
    p = subprocess.run(
        [sys.executable, "-c", "import sys; from torchkeep.manager import Checkpointer; Checkpointer(sys.argv[1])", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr


def test_lease_on_object_store(tmp_path: Path) -> None:
    url = f"memory://tk-lock-{os.getpid()}-{tmp_path.name}/run"
    a = Checkpointer(url)
    import fsspec

    fs = fsspec.filesystem("memory")
    # a lease written by a process elsewhere
    lock_path = "/" + url[len("memory://") :] + "/.lock"
    a.close()
    fs.pipe(lock_path, b'{"pid": 4242, "host": "node7", "token": "x", "expires": 9e18}')
    with pytest.raises(LockError, match="pid 4242 on host node7"):
        Checkpointer(url)
    fs.pipe(lock_path, b'{"pid": 4242, "host": "node7", "token": "x", "expires": 1}')  # expired
    b = Checkpointer(url)
    b.close()
    assert not fs.exists(lock_path)
