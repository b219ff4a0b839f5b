"""Async save: snapshot the state to host memory, write it on a background thread.

Memory bound: at most one snapshot exists at a time. ``save`` first waits for the previous
write to finish, then copies every tensor of the new state to host memory (pinned when it
lives on a CUDA device, so the copy runs at full PCIe speed), then returns; the writer
thread owns the snapshot until it is on disk. Peak extra host memory is therefore one copy
of the state (its tensor bytes), never two.

The host buffers are kept and reused by the next save when the state has the same tensors
(shapes and dtypes, in the same order), as in a training loop: copying into memory that is
already mapped avoids the page faults of fresh allocations, which cost more than the copy
itself on CPU. The cost is that the one host copy stays resident between saves; a state of
another layout simply gets fresh buffers.

Errors in the writer are kept and re-raised at the next ``save``/``wait()``/``close()``;
at interpreter exit pending writes are finished and a failure is printed to stderr.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["snapshot", "BackgroundWriter"]


def _alias_key(t: torch.Tensor) -> tuple[Any, ...]:
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        ptr = id(t)
    return (t.device.type, t.device.index, ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def snapshot(tree: Any, reuse: list[torch.Tensor] | None = None) -> tuple[Any, list[torch.Tensor]]:
    """A copy of ``tree`` whose tensors are private host-memory copies, and its buffers.

    Containers are rebuilt (dict/list/tuple, the same types where possible); tensors that
    share a view (tied weights) stay shared in the copy; other leaves are immutable values
    and are kept as they are. CUDA tensors go to pinned memory with one synchronize at the end.

    ``reuse``: the buffers a previous call returned, no longer in use by anyone; the i-th
    distinct tensor is copied into the i-th buffer when shape, dtype and pinning match.
    """
    memo: dict[tuple[Any, ...], torch.Tensor] = {}
    buffers: list[torch.Tensor] = []
    old = reuse or []
    cuda = False

    def copy(t: torch.Tensor) -> torch.Tensor:
        nonlocal cuda
        key = _alias_key(t)
        hit = memo.get(key)
        if hit is not None:
            return hit
        t = t.detach()
        pin = t.device.type == "cuda"
        cuda = cuda or pin
        i = len(buffers)
        prev = old[i] if i < len(old) else None
        if prev is not None and prev.shape == t.shape and prev.dtype == t.dtype and (not pin or prev.is_pinned()):
            out = prev
        elif t.device.type == "cpu":
            out = torch.empty(t.shape, dtype=t.dtype)
        else:
            out = torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
        out.copy_(t, non_blocking=pin)
        memo[key] = out
        buffers.append(out)
        return out

    def walk(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return copy(obj)
        if isinstance(obj, dict):
            items = [(k, walk(v)) for k, v in obj.items()]
            try:
                new = type(obj)()
                new.update(items)
                return new
            except TypeError:
                return dict(items)
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        if isinstance(obj, tuple):
            vals = [walk(v) for v in obj]
            return type(obj)(*vals) if hasattr(obj, "_fields") else tuple(vals)
        return obj

    out = walk(tree)
    if cuda:
        torch.cuda.synchronize()
    return out, buffers


class BackgroundWriter:
    """Runs one job at a time on a daemon thread; keeps the first error for the caller."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._what = ""

    @property
    def pending(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, fn: Callable[[], None], what: str) -> None:
        """Wait for the previous job (raising its error), then start ``fn``."""
        self.wait()

        def run() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - handed to the caller at wait()
                self._error = e

        self._what = what
        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        t = self._thread
        if t is not None:
            t.join()
            self._thread = None
        err, self._error = self._error, None
        if err is not None:
            if hasattr(err, "add_note"):
                err.add_note(f"torchkeep: raised by the background writer of {self._what}; that checkpoint was not saved.")
            raise err
