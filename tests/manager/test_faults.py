"""Faults during save: ENOSPC / EIO at every filesystem call site, inside the tensor writes,
on a real full tmpfs, and in the async writer. Invariant: the error is raised, no partial
folder is left, and every earlier checkpoint is byte-for-byte unchanged."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path

import pytest
import torch
from _helpers import mounted_tmpfs
from manager._toy import Toy

from torchkeep import load as tk_load
from torchkeep.manager import Checkpointer
from torchkeep.manager._storage import Storage

ERRNOS = [errno.ENOSPC, errno.EIO]


def snapshot_dir(d: Path) -> dict[str, str]:
    """Every file under d (except the lock) -> sha256 of its bytes."""
    out = {}
    for root, _dirs, files in os.walk(d):
        for f in files:
            p = Path(root) / f
            if f != ".lock":
                out[str(p.relative_to(d))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class FaultyStorage(Storage):
    """Fails the ``nth`` call of method ``site`` with ``OSError(err)``."""

    def __init__(self, site: str, err: int, nth: int = 1) -> None:
        self.site, self.err, self.nth, self.calls = site, err, nth, 0

    def __getattribute__(self, name: str):  # noqa: ANN204
        attr = object.__getattribute__(self, name)
        if name == object.__getattribute__(self, "site"):
            def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
                self.calls += 1
                if self.calls == self.nth:
                    from _reliability import record

                    record("fault", f"Checkpointer.save: Storage.{name} #{self.nth} {errno.errorcode.get(self.err, self.err)}")
                    raise OSError(self.err, os.strerror(self.err), str(a[0]) if a else None)
                return attr(*a, **k)

            return wrapper
        return attr


SITES = [
    ("makedirs", 1),
    ("write_state", 1),
    ("read_head", 1),
    ("write_file", 1),
    ("fsync_dir", 1),  # the new step folder
    ("rename", 1),  # the commit rename
]


def _assert_intact(d: Path, before: dict[str, str], step: int) -> None:
    names = os.listdir(d)
    assert not [n for n in names if n.startswith((".tmp-", ".del-", ".old-"))], names
    after = snapshot_dir(d)
    assert {k: v for k, v in after.items() if k in before} == before
    t = Toy()
    assert Checkpointer(d).restore(t) == step and t.matches(step)


@pytest.mark.parametrize("err", ERRNOS, ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize(("site", "nth"), SITES, ids=[s for s, _ in SITES])
def test_fault_at_each_call_site(tmp_path: Path, site: str, nth: int, err: int) -> None:
    ck = Checkpointer(tmp_path, keep_last=1)
    ck.save(Toy().fill(1), 1)
    before = snapshot_dir(tmp_path)
    ck._storage = FaultyStorage(site, err, nth)
    with pytest.raises(OSError) as e:
        ck.save(Toy().fill(2), 2)
    assert e.value.errno == err
    assert sorted(os.listdir(tmp_path)) == [".lock", "step_00000001"]
    ck.close()
    _assert_intact(tmp_path, before, 1)


@pytest.mark.parametrize("err", ERRNOS, ids=["ENOSPC", "EIO"])
def test_fault_when_replacing_a_step_keeps_the_old_copy(tmp_path: Path, err: int) -> None:
    ck = Checkpointer(tmp_path)
    ck.save(Toy().fill(5), 5)
    before = snapshot_dir(tmp_path)
    ck._storage = FaultyStorage("rename", err, nth=2)  # old moved aside, then the commit fails
    with pytest.raises(OSError):
        ck.save(Toy().fill(2), 5)
    ck.close()
    _assert_intact(tmp_path, before, 5)


def test_fsync_of_run_dir_failing_after_commit_raises(tmp_path: Path) -> None:
    """The rename happened but its durability is unknown: the caller must hear about it."""
    ck = Checkpointer(tmp_path)
    ck.save(Toy().fill(1), 1)
    ck._storage = FaultyStorage("fsync_dir", errno.EIO, nth=2)
    with pytest.raises(OSError):
        ck.save(Toy().fill(2), 2)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_retention_delete_failure_warns_but_keeps_the_new_checkpoint(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, keep_last=1)
    ck.save(Toy().fill(1), 1)
    ck._storage = FaultyStorage("remove_tree", errno.EIO)
    with pytest.warns(UserWarning, match="retention could not delete"):
        ck.save(Toy().fill(2), 2)
    t = Toy()
    assert ck.restore(t) == 2 and t.matches(2)


def _os_proxy(**overrides):  # noqa: ANN003, ANN202
    """The os module with some functions replaced (patched into one module's namespace)."""
    proxy = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    for k, v in overrides.items():
        setattr(proxy, k, v)
    return proxy


@pytest.mark.parametrize("err", ERRNOS, ids=["ENOSPC", "EIO"])
def test_error_inside_tensor_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    """The failure comes from the writev that writes tensor bytes, after part of them landed."""
    import torchkeep._io.fastio as fastio

    ck = Checkpointer(tmp_path)
    ck.save(Toy(big=1 << 20).fill(1), 1)
    before = snapshot_dir(tmp_path)
    calls = {"n": 0}

    def writev(fd: int, bufs):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(err, os.strerror(err))
        return os.writev(fd, [bytes(bufs[0])[: max(1, len(bufs[0]) // 2)]])  # a short write first

    monkeypatch.setattr(fastio, "os", _os_proxy(writev=writev))
    with pytest.raises(OSError) as e:
        ck.save(Toy(big=1 << 20).fill(2), 2)
    assert e.value.errno == err and calls["n"] >= 2
    monkeypatch.undo()
    ck.close()
    _assert_intact(tmp_path, before, 1)


def test_eio_from_file_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchkeep._io.fs as fsmod

    ck = Checkpointer(tmp_path)
    ck.save(Toy().fill(1), 1)
    before = snapshot_dir(tmp_path)

    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fsmod, "os", _os_proxy(fsync=fsync))
    with pytest.raises(OSError, match="Input/output error"):
        ck.save(Toy().fill(2), 2)
    monkeypatch.undo()
    ck.close()
    _assert_intact(tmp_path, before, 1)


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # noqa: ANN201
    """A real 2 MiB tmpfs (needs root and mount); skipped where that is not possible."""
    with mounted_tmpfs(tmp_path, "2m", "tmpfs") as mnt:
        yield mnt


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_real_disk_full(small_tmpfs: Path, async_save: bool) -> None:
    ck = Checkpointer(small_tmpfs / "run", async_save=async_save)
    ck.save(Toy(big=100_000).fill(1), 1)  # ~400 KB
    ck.wait()
    before = snapshot_dir(small_tmpfs / "run")
    with pytest.raises(OSError) as e:
        ck.save(Toy(big=1_000_000).fill(2), 2)  # ~4 MB: does not fit
        ck.wait()
    assert e.value.errno == errno.ENOSPC
    ck.close()
    _assert_intact(small_tmpfs / "run", before, 1)
    # space is free again: the next save works
    ck = Checkpointer(small_tmpfs / "run")
    ck.save(Toy(big=100_000).fill(3), 3)
    t = Toy(big=100_000)
    assert ck.restore(t) == 3 and t.matches(3)


# ------------------------------------------------------------------------------ async
def test_async_error_surfaces_at_wait_then_next_save_works(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, async_save=True)
    ck.save(Toy().fill(1), 1)
    ck.wait()
    real = ck._storage
    ck._storage = FaultyStorage("write_state", errno.ENOSPC)
    ck.save(Toy().fill(2), 2)  # returns: the failure is in the background
    with pytest.raises(OSError) as e:
        ck.wait()
    assert e.value.errno == errno.ENOSPC
    assert any("background writer of step 2" in n for n in getattr(e.value, "__notes__", []))
    ck.wait()  # reported once
    ck._storage = real
    ck.save(Toy().fill(3), 3)
    ck.wait()
    assert [r.step for r in ck.checkpoints()] == [1, 3]


def test_async_error_surfaces_at_next_save_and_close(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, async_save=True)
    ck._storage = FaultyStorage("write_file", errno.EIO)
    ck.save(Toy().fill(1), 1)
    with pytest.raises(OSError):
        ck.save(Toy().fill(2), 2)  # the previous write's error, before anything else
    ck._storage = FaultyStorage("write_file", errno.EIO)
    ck.save(Toy().fill(3), 3)
    with pytest.raises(OSError):
        ck.close()
    assert [n for n in os.listdir(tmp_path) if not n.startswith(".lock")] == []


def test_async_snapshot_is_isolated_and_one_pending(tmp_path: Path) -> None:
    go = threading.Event()

    class Gate(Storage):
        def write_state(self, loc, tree, hook):  # noqa: ANN001, ANN201
            go.wait(10)
            return super().write_state(loc, tree, hook)

    ck = Checkpointer(tmp_path, async_save=True)
    ck._storage = Gate()
    toy = Toy().fill(1)
    ck.save(toy, 1)  # returns while the writer is blocked
    toy.fill(99)  # training goes on, mutating parameters in place
    second = threading.Thread(target=ck.save, args=(toy, 2))
    second.start()
    second.join(0.3)
    assert second.is_alive(), "a second save must wait for the pending write (one snapshot at most)"
    go.set()
    second.join(10)
    ck.wait()
    t = Toy()
    assert ck.restore(t, step=1) == 1 and t.matches(1)
    assert ck.restore(t, step=2) == 2 and t.matches(99)


def test_async_reuses_host_buffers_and_keeps_each_step(tmp_path: Path) -> None:
    """Saves of the same layout copy into the previous snapshot's memory; every step keeps its own values."""
    ck = Checkpointer(tmp_path, async_save=True)
    toy = Toy().fill(1)
    ck.save(toy, 1)
    first = [b.data_ptr() for b in ck._buffers]
    toy.fill(2)
    ck.save(toy, 2)  # waits for step 1's write, then overwrites the same buffers
    assert [b.data_ptr() for b in ck._buffers] == first
    toy.fill(3)
    ck.wait()
    for step in (1, 2):
        t = Toy()
        assert ck.restore(t, step=step) == step and t.matches(step)
    bigger = torch.nn.Linear(8, 8)  # another layout: fresh buffers, nothing stale written
    ck.save(bigger, 3)
    ck.wait()
    got = tk_load(tmp_path / "step_00000003")
    assert torch.equal(got["weight"], bigger.weight) and torch.equal(got["bias"], bigger.bias)
    ck.close()
    assert ck._buffers == []


def test_async_ties_stay_tied(tmp_path: Path) -> None:
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    ck = Checkpointer(tmp_path, async_save=True)
    ck.save(model, 1)
    ck.wait()
    import torchkeep as tk

    info = tk.inspect(tmp_path / "step_00000001")
    assert info.num_tensors == 1  # stored once, as in a sync save
    out = tk.load(tmp_path / "step_00000001")
    assert torch.equal(out["emb.weight"], emb.weight) and torch.equal(out["head.weight"], emb.weight)


def test_async_error_printed_at_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import errno, sys
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from manager._toy import Toy
        from torchkeep.manager import Checkpointer
        from torchkeep.manager._storage import Storage

        class Full(Storage):
            def write_state(self, loc, tree, hook):
                raise OSError(errno.ENOSPC, "No space left on device (injected)")

        ck = Checkpointer({str(tmp_path)!r}, async_save=True)
        ck._storage = Full()
        ck.save(Toy(), 1)
        print("returned")
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "returned" in r.stdout
    assert "async checkpoint write failed" in r.stderr
    assert "No space left on device (injected)" in r.stderr


def test_async_pending_write_finished_at_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from manager._toy import Toy
        from torchkeep.manager import Checkpointer
        from torchkeep.manager._storage import Storage

        class Slow(Storage):
            def write_state(self, loc, tree, hook):
                time.sleep(0.5)
                return super().write_state(loc, tree, hook)

        ck = Checkpointer({str(tmp_path)!r}, async_save=True)
        ck._storage = Slow()
        ck.save(Toy(big=1000).fill(4), 4)
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    t = Toy(big=1000)
    assert Checkpointer(tmp_path).restore(t) == 4 and t.matches(4)
