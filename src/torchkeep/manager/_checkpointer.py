"""Checkpointer: atomic, verified, crash-safe checkpoints of a run, with retention and async save."""

from __future__ import annotations

import atexit
import os
import struct
import sys
import threading
import time
import traceback
import uuid
import warnings
import weakref
from collections.abc import Mapping, MutableMapping
from typing import Any

import torch

from .._api import to_tree
from .._io.fs import Location, resolve
from .._io.gcpause import gc_paused
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, FormatError, StateMismatchError, TorchkeepError, UnsupportedTypeError
from . import _distributed
from ._async import BackgroundWriter, snapshot
from ._layout import (
    DEL_PREFIX,
    MANIFEST,
    OLD_PREFIX,
    STATE_FILE,
    TMP_PREFIX,
    CheckpointRecord,
    FileEntry,
    Manifest,
    environment,
    parse_step,
    step_name,
)
from ._lock import RunLock
from ._retention import KeepBest, KeepEvery, KeepLast, Policy, best_step, retained
from ._storage import Storage, storage_for
from ._verify import Hasher, read_manifest, read_verified

__all__ = ["Checkpointer", "list_checkpoints"]

_LIVE: "weakref.WeakValueDictionary[str, Checkpointer]" = weakref.WeakValueDictionary()
_LIVE_LOCK = threading.RLock()


class Checkpointer:
    """Manage a run's checkpoints in ``directory`` (a local path or an fsspec URL).

    Auto-resume is one line::

        ckpt = tk.Checkpointer("runs/exp1", keep_last=3, keep_best=1, monitor="val_loss")
        start = ckpt.restore(state) or 0        # newest complete, verified checkpoint
        for step in range(start + 1, steps + 1):
            ...
            ckpt.save(state, step, metrics={"val_loss": loss})

    Retention (``keep_last``, ``keep_best`` with ``monitor``/``mode``, ``keep_every``) is the
    union of the given policies; with none, every checkpoint is kept. The newest and the best
    are never deleted, and nothing is deleted before the new checkpoint is committed.

    ``async_save=True``: :meth:`save` returns once the state is copied to host memory (one
    snapshot at most: a save first waits for the previous write), a background thread writes
    it. The host buffers are reused by the next save and released by :meth:`close`. Errors
    surface at the next :meth:`save`, :meth:`wait`, :meth:`close` or at exit.

    The directory is locked for writing: a second process gets :class:`LockError`.
    """

    def __init__(
        self,
        directory: "str | os.PathLike[str]",
        *,
        keep_last: int | None = None,
        keep_best: int | None = None,
        monitor: str | None = None,
        mode: str = "min",
        keep_every: int | None = None,
        async_save: bool = False,
    ) -> None:
        policies: list[Policy] = []
        if keep_last is not None:
            policies.append(KeepLast(keep_last))
        if keep_best is not None:
            if monitor is None:
                raise ValueError("keep_best needs monitor=<metric name> (and mode='min' or 'max') to know what 'best' means")
            policies.append(KeepBest(keep_best, monitor, mode))
        if keep_every is not None:
            policies.append(KeepEvery(keep_every))
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise ValueError(f"monitor must name a metric, got {monitor!r}")
        self.directory: Location = resolve(directory)
        self.policies: tuple[Policy, ...] = tuple(policies)
        self.monitor = monitor
        self.mode = mode
        self.async_save = bool(async_save)
        self._storage: Storage = storage_for(self.directory)
        self._closed = False
        self._env: dict[str, Any] | None = None
        self._warned_monitor = False
        self._writer = BackgroundWriter(f"torchkeep-writer:{self.directory}") if self.async_save else None
        self._buffers: list[torch.Tensor] = []  # the async snapshot's host memory, reused by the next save

        if self.directory.exists() and not self.directory.isdir():
            raise TorchkeepError(f"{self.directory} is a file, not a run directory. Fix: pass a directory path.")
        self._storage.makedirs(self.directory)
        self._key = self._registry_key()
        self._lock = RunLock(self.directory)
        with _LIVE_LOCK:
            other = _LIVE.get(self._key)
            if other is not None and other is not self and not other._closed:
                warnings.warn(
                    f"torchkeep: another Checkpointer of this process was open on {self.directory}; "
                    f"it is closed now (pending writes finished) and this one takes over.",
                    stacklevel=2,
                )
                other.close()
            if _distributed.owns_run_dir():  # [distributed] only rank 0 locks and cleans the run dir
                self._lock.acquire()
            _LIVE[self._key] = self
        self._finalizer = weakref.finalize(self, RunLock.release, self._lock)
        if _distributed.owns_run_dir():
            self._clean_leftovers()

    def _registry_key(self) -> str:
        if self.directory.is_local:
            return os.path.realpath(self.directory.path)
        return self.directory.url

    def __repr__(self) -> str:
        return f"Checkpointer({self.directory.url!r}, policies={list(self.policies)}, async_save={self.async_save})"

    # ------------------------------------------------------------------ save
    @gc_paused
    def save(self, state: Any, step: int, metrics: Mapping[str, Any] | None = None) -> None:
        """Write a checkpoint of ``state`` (anything with ``state_dict()``, or a tree) at ``step``.

        Sync: returns when the checkpoint is durable (fsynced and committed). Async: returns
        once the state is snapshotted to host memory; the previous async write, if still
        running, is waited for first (and its error, if any, is raised here).
        """
        self._check_open()
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        clean = _clean_metrics(metrics)
        if self.monitor and self.monitor not in clean and not self._warned_monitor:
            self._warned_monitor = True
            warnings.warn(
                f"torchkeep: monitor={self.monitor!r} is not in the metrics of step {step} "
                f"({sorted(clean)}); such steps never count as best. Pass metrics={{{self.monitor!r}: value}}.",
                stacklevel=2,
            )
        created = time.time()
        if _distributed.active():  # [distributed] every rank writes its shards via DCP; rank 0 commits
            self.wait()
            _distributed.save(self, state, step, clean, created)
            return
        tree = to_tree(state)
        if self._writer is None:
            self._write(tree, step, clean, created)
            return
        self._writer.wait()
        snap, self._buffers = snapshot(tree, self._buffers)
        self._writer.submit(lambda: self._write(snap, step, clean, created), f"step {step} in {self.directory}")

    def wait(self) -> None:
        """Block until pending async writes are on disk; raise the writer's error, if any."""
        if self._writer is not None:
            self._writer.wait()

    def close(self) -> None:
        """Finish pending writes (raising their error) and release the run-directory lock."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._closed = True
            self._buffers = []
            self._finalizer()
            with _LIVE_LOCK:
                if _LIVE.get(self._key) is self:
                    del _LIVE[self._key]

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise TorchkeepError(f"this Checkpointer on {self.directory} is closed; create a new one to keep saving.")

    def _write(self, tree: Any, step: int, metrics: dict[str, Any], created: float) -> None:
        st = self._storage
        run = self.directory
        name = step_name(step)
        final = run.join(name)
        self._lock.renew()
        if st.supports_rename:
            work = run.join(f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}")
        else:  # object store: write in place, the manifest is the commit marker
            work = final
            if st.exists(final):
                st.remove_tree(final)
        try:
            st.makedirs(work)
            state_loc = work.join(STATE_FILE)
            hasher = Hasher()
            size = st.write_state(state_loc, tree, hasher)
            entry = self._file_entry(state_loc, hasher, size)
            if self._env is None:
                self._env = environment()
            run_info = {"monitor": self.monitor, "mode": self.mode} if self.monitor else {}
            man = Manifest(step, {STATE_FILE: entry}, metrics, created, STATE_FILE, self._env, run=run_info)
            st.write_file(work.join(MANIFEST), man.to_bytes())
            st.fsync_dir(work)
            if st.supports_rename:
                self._commit(work, final)
        except BaseException:
            _quietly(st.remove_tree, work)
            raise
        self._apply_retention()

    def _file_entry(self, loc: Location, hasher: Hasher, size: int) -> FileEntry:
        head_len = size - hasher.nbytes
        head = self._storage.read_head(loc, max(head_len, 8))
        if head_len < 8 or struct.unpack("<Q", head[:8])[0] + 8 != head_len:
            raise TorchkeepError(f"{loc}: written file does not match the bytes hashed while writing; not committed. This is a torchkeep bug.")
        return hasher.entry(head, size)

    def _commit(self, work: Location, final: Location) -> None:
        st = self._storage
        old = None
        if st.exists(final):  # re-saving a step: move the old one aside (restored at start if we die)
            old = self.directory.join(f"{OLD_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}")
            st.rename(final, old)
        try:
            st.rename(work, final)
        except BaseException:
            if old is not None:
                _quietly(st.rename, old, final)
            raise
        st.fsync_dir(self.directory)
        if old is not None:
            _quietly(st.remove_tree, old)

    # ------------------------------------------------------------- retention
    def _apply_retention(self) -> None:
        if not self.policies:
            return
        records = [r for r in self._records() if r.valid]
        keep = retained(records, self.policies, monitor=self.monitor, mode=self.mode)
        for r in records:
            if r.step in keep:
                continue
            try:
                self._delete(resolve_child(self.directory, r.path))
            except OSError as e:
                warnings.warn(f"torchkeep: retention could not delete {r.path}: {e}; it is left in place.", stacklevel=3)

    def _delete(self, loc: Location) -> None:
        st = self._storage
        if st.supports_rename:
            gone = self.directory.join(f"{DEL_PREFIX}{loc.name}-{uuid.uuid4().hex[:8]}")
            st.rename(loc, gone)
            st.fsync_dir(self.directory)
            st.remove_tree(gone)
        else:
            st.remove_tree(loc)

    def _clean_leftovers(self) -> None:
        """Remove what interrupted saves and deletes left behind (we hold the lock)."""
        st = self._storage
        run = self.directory
        names = st.listdir(run)
        present = set(names)
        for n in names:
            loc = run.join(n)
            if n.startswith((TMP_PREFIX, DEL_PREFIX)):
                _quietly(st.remove_tree, loc)
            elif n.startswith(OLD_PREFIX):
                base = n[len(OLD_PREFIX) :].rsplit("-", 1)[0]
                if parse_step(base) is not None and base not in present and st.exists(loc.join(MANIFEST)):
                    _quietly(st.rename, loc, run.join(base))  # a replace died half-way: put it back
                    present.add(base)
                else:
                    _quietly(st.remove_tree, loc)
            elif not st.supports_rename and parse_step(n) is not None and not st.exists(loc.join(MANIFEST)):
                _quietly(st.remove_tree, loc)

    # --------------------------------------------------------------- restore
    @gc_paused
    def restore(self, state: Any, step: int | None = None) -> int | None:
        """Load the newest complete, verified checkpoint into ``state``; return its step.

        Newer checkpoints that are damaged or incomplete are skipped with a warning saying
        which and why. Returns None when the run has no checkpoint (a new run).
        ``step=N`` loads exactly N or raises CheckpointNotFoundError / CorruptCheckpointError.
        ``state`` is anything with ``load_state_dict()`` (it receives what ``tk.load`` of the
        state file returns) or a dict, which is cleared and filled with the saved tree.
        """
        self._check_open()
        self.wait()
        if not callable(getattr(state, "load_state_dict", None)) and not isinstance(state, MutableMapping):
            raise UnsupportedTypeError(
                f"restore needs an object with load_state_dict() (a module, tk.TrainState, ...) or a dict to fill, "
                f"not {type(state).__name__}."
            )
        if _distributed.active():  # [distributed] ranks agree on a verified step; DCP reshards
            return _distributed.restore(self, state, step)
        steps = self._committed_steps()
        if step is not None:
            if step not in steps:
                avail = ", ".join(map(str, sorted(steps)[-10:])) or "none"
                raise CheckpointNotFoundError(
                    f"{self.directory}: no complete checkpoint for step {step} (available: {avail}). "
                    f"Fix: pass one of these steps, or step=None for the newest."
                )
            _, tree = self._read_step(step)
            _load(state, tree, self.directory.join(step_name(step)))
            return step
        for s in sorted(steps, reverse=True):
            try:
                _, tree = self._read_step(s)
            except (FormatError, OSError) as e:
                warnings.warn(f"torchkeep: skipping checkpoint step {s} in {self.directory}: {e}", stacklevel=2)
                continue
            _load(state, tree, self.directory.join(step_name(s)))
            return s
        return None

    def _read_step(self, step: int) -> tuple[Manifest, Any]:
        loc = self.directory.join(step_name(step))
        man, tree = read_verified(loc)
        if man.step != step:
            raise CorruptCheckpointError(f"{loc}: the manifest says step {man.step}, the folder name says {step}; damaged or moved.")
        return man, tree

    # --------------------------------------------------------------- listing
    def _committed_steps(self) -> set[int]:
        st = self._storage
        out = set()
        for n in st.listdir(self.directory):
            s = parse_step(n)
            if s is not None and st.exists(self.directory.join(n, MANIFEST)):
                out.add(s)
        return out

    def _records(self) -> list[CheckpointRecord]:
        return list_checkpoints(self.directory, storage=self._storage)

    def checkpoints(self) -> list[CheckpointRecord]:
        """Committed checkpoints, oldest first (waits for a pending async write).

        ``valid`` is a cheap check (manifest readable, files present at their sizes);
        ``restore`` and ``torchkeep verify`` check every checksum.
        """
        self.wait()
        return self._records()

    def latest(self) -> CheckpointRecord | None:
        """The newest valid checkpoint, or None."""
        valid = [r for r in self.checkpoints() if r.valid]
        return valid[-1] if valid else None

    def best(self) -> CheckpointRecord | None:
        """The best valid checkpoint by ``monitor``/``mode``, or None (no monitor, no metric)."""
        valid = [r for r in self.checkpoints() if r.valid]
        s = best_step(valid, self.monitor, self.mode)
        return next((r for r in valid if r.step == s), None)


def resolve_child(run: Location, path: str) -> Location:
    return run.join(path.rstrip("/").rsplit("/", 1)[-1])


def list_checkpoints(directory: "str | os.PathLike[str] | Location", *, storage: Storage | None = None) -> list[CheckpointRecord]:
    """Records of the committed step folders of a run directory, oldest first (no lock needed)."""
    run = resolve(directory)
    st = storage or storage_for(run)
    out = []
    for n in st.listdir(run):
        s = parse_step(n)
        if s is None:
            continue
        loc = run.join(n)
        if not st.exists(loc.join(MANIFEST)):
            continue  # not committed: not a checkpoint
        try:
            man = read_manifest(loc)
        except (FormatError, OSError) as e:
            out.append(CheckpointRecord(s, loc.url, {}, 0, 0.0, False, str(e)))
            continue
        problem = None
        if man.step != s:
            problem = f"manifest says step {man.step}, folder name says {s}"
        for fname, entry in man.files.items():
            if problem:
                break
            try:
                size = loc.join(fname).size()
            except (FileNotFoundError, OSError):
                problem = f"{fname} is missing"
                continue
            if size != entry.size:
                problem = f"{fname} has {size:,} bytes, the manifest says {entry.size:,} (truncated?)"
        out.append(CheckpointRecord(s, loc.url, dict(man.metrics), man.size, man.created, problem is None, problem))
    out.sort(key=lambda r: r.step)
    return out


def _load(state: Any, tree: Any, where: Location) -> None:
    if not callable(getattr(state, "load_state_dict", None)):
        state.clear()
        state.update(tree)
        return
    try:
        state.load_state_dict(tree)
    except TorchkeepError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        saved = sorted(k for k in tree if isinstance(k, str) and not k.startswith("_")) if isinstance(tree, Mapping) else []
        hint = (
            f" The checkpoint holds {saved[:12]}: restore into the same kind of object it was saved from (e.g. a "
            f"tk.TrainState with those names), or take just the weights with tk.load_into(model, {str(where)!r})."
            if saved else ""
        )
        raise StateMismatchError(
            f"{where}: the saved state does not fit the {type(state).__name__} it is restored into: "
            f"{type(e).__name__}: {str(e).strip().rstrip('.')[:500]}.{hint}"
        ) from e


def _clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise UnsupportedTypeError(f"metrics must be a dict of name -> number, got {type(metrics).__name__}")
    out: dict[str, Any] = {}
    bad = []
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        elif hasattr(v, "item") and callable(v.item) and not isinstance(v, (int, float, str, bool)):
            try:
                v = v.item()
            except (TypeError, ValueError):
                pass
        if not isinstance(k, str) or not isinstance(v, (int, float, str, bool, type(None))):
            bad.append(f"{k!r}: {type(v).__name__}")
            continue
        out[k] = v
    if bad:
        raise UnsupportedTypeError(
            f"metrics must map str to numbers/strings/bools/None; cannot store {', '.join(bad)}. Fix: pass float(value)."
        )
    return out


def _quietly(fn: Any, *args: Any) -> None:
    """Best-effort cleanup: never let it mask the error being raised."""
    try:
        fn(*args)
    except Exception:  # noqa: BLE001
        pass


@atexit.register
def _finish_pending() -> None:
    """At exit, finish pending async writes; a failure is printed, never silent."""
    for ck in list(_LIVE.values()):
        try:
            ck.close()
        except BaseException as e:  # noqa: BLE001
            print(
                f"torchkeep: an async checkpoint write failed and was not saved ({ck.directory}):",
                file=sys.stderr,
            )
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
