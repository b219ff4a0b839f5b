"""Moving tensor bytes between memory and files without a serialised copy.

Writes gather many tensors into one ``os.writev`` (few syscalls for many small tensors, no
copy for large ones); reads go straight into the destination tensor's memory with
``preadv``, split across a small thread pool for large files (``os.preadv`` releases the
GIL). ``hook(name, memoryview)`` sees every tensor's bytes while they are in memory (used for
checksums).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from .fs import ByteSource

__all__ = ["tensor_bytes", "write_tensors", "read_into", "ReadJob", "read_jobs"]

_IOV_MAX = 512
_BATCH_BYTES = 8 << 20
_CHUNK = 64 << 20  # one read request for large tensors
_PARALLEL_MIN = 32 << 20  # below this total, threads cost more than they give


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A flat byte view of a CPU tensor's data (contiguous copy only when needed)."""
    if t.device.type != "cpu":
        t = t.detach().to("cpu")
    if not t.is_contiguous():
        t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    flat = t.detach().reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return memoryview(flat.numpy()).cast("B")


def write_tensors(
    f: Any,
    items: Iterable[tuple[str, torch.Tensor]],
    *,
    hook: Callable[[str, memoryview], None] | None = None,
) -> int:
    """Write each tensor's bytes in order; returns bytes written."""
    fd: int | None
    try:
        fd = f.fileno()
        f.flush()  # anything buffered must land before our direct writes
    except (AttributeError, OSError, ValueError):
        fd = None
    total = 0
    batch: list[memoryview] = []
    keep: list[Any] = []  # keep tensors alive until their bytes are written
    batch_bytes = 0

    def flush() -> None:
        nonlocal batch, batch_bytes, keep
        if not batch:
            return
        if fd is not None:
            bufs = batch
            while bufs:
                n = os.writev(fd, bufs[:_IOV_MAX])
                # drop fully written buffers, trim the partially written one
                while bufs and n >= len(bufs[0]):
                    n -= len(bufs[0])
                    bufs = bufs[1:]
                if bufs and n:
                    bufs = [bufs[0][n:], *bufs[1:]]
        else:
            for b in batch:
                f.write(b)
        batch, batch_bytes, keep = [], 0, []

    for name, t in items:
        mv = tensor_bytes(t)
        if hook is not None:
            hook(name, mv)
        if not len(mv):
            continue
        keep.append(mv)
        batch.append(mv)
        batch_bytes += len(mv)
        total += len(mv)
        if batch_bytes >= _BATCH_BYTES or len(batch) >= _IOV_MAX:
            flush()
    flush()
    return total


def read_into(src: ByteSource, offset: int, out: torch.Tensor) -> None:
    """Fill CPU tensor ``out`` (contiguous) with the bytes at ``offset``."""
    mv = tensor_bytes(out)
    if not len(mv):
        return
    got = src.readinto(offset, mv)
    if got != len(mv):
        from ..errors import CorruptCheckpointError

        raise CorruptCheckpointError(
            f"{src.loc}: file ends after {offset + got} bytes but a tensor needs bytes up to "
            f"{offset + len(mv)}; the file is truncated. Re-download or re-save it."
        )


ReadJob = tuple[int, torch.Tensor]  # (file offset, destination CPU tensor)


def read_jobs(src: ByteSource, jobs: Sequence[ReadJob], *, threads: int | None = None) -> None:
    """Run reads, large ones split in chunks over a thread pool when it pays."""
    total = sum(t.numel() * t.element_size() for _, t in jobs)
    if total < _PARALLEL_MIN or not src.loc.is_local:
        for off, t in jobs:
            read_into(src, off, t)
        return
    pieces: list[tuple[int, memoryview]] = []
    for off, t in jobs:
        mv = tensor_bytes(t)
        for start in range(0, len(mv), _CHUNK):
            pieces.append((off + start, mv[start : start + _CHUNK]))
    n = threads or min(8, max(2, (os.cpu_count() or 2)))

    def run(piece: tuple[int, memoryview]) -> int:
        off, mv = piece
        got = src.readinto(off, mv)
        return got - len(mv)

    with ThreadPoolExecutor(n) as ex:
        short = [s for s in ex.map(run, pieces) if s]
    if short:
        from ..errors import CorruptCheckpointError

        raise CorruptCheckpointError(f"{src.loc}: file is shorter than its header says; it is truncated.")
