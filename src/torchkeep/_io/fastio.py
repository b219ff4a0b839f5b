"""Moving tensor bytes between memory and files without a serialised copy.

Writes: large tensors go to ``os.writev`` straight from their memory; runs of small tensors
are packed by one ``torch.cat`` into a reusable staging buffer and written with the large
ones, so a save costs a few syscalls and no per-tensor numpy round trip. (Starting
writeback early with ``sync_file_range`` was measured slower than one final fsync here.)

Reads: jobs are sorted by file offset; adjacent large tensors are read by one ``preadv``
straight into their memory (scatter, no copy); runs of adjacent small tensors are read in
one request into a staging buffer and scattered by one ``torch._foreach_copy_``. Large
loads can be split into contiguous stretches over a few threads (``os.preadv`` releases the
GIL); each thread reads sequentially, which keeps the kernel's readahead working when the
page cache is cold.

``hook(name, memoryview)`` sees every tensor's bytes while they are in memory (checksums).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from .fs import ByteSource

__all__ = ["tensor_bytes", "write_tensors", "read_into", "ReadJob", "read_jobs"]

_IOV_MAX = 1024  # Linux's limit on buffers per readv/writev
_BATCH_BYTES = 8 << 20  # one writev's worth
_SMALL = 64 << 10  # tensors under this are packed/staged rather than given their own iovec
_STAGE = 4 << 20  # staging buffer for runs of small tensors
_RUN_MAX = 64 << 20  # one preadv's worth of direct reads
_PARALLEL_MIN = 256 << 20  # below this total, one sequential reader is as fast as several


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _threads_default() -> int:
    # Sequential large reads already saturate ordinary disks and the page cache's copy
    # speed on small machines; several streams pay off on fast NVMe / many cores.
    # Two readers measured as good as or better than one here (2 cores, warm and cold).
    return max(2, min(4, (os.cpu_count() or 1) // 4))


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


def _u8(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a CPU tensor's bytes (copied to CPU/contiguous when needed)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    if not t.is_contiguous():
        t = t.contiguous()
    flat = t.reshape(-1)
    return flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)


# ------------------------------------------------------------------------------ write
def _writev_all(fd: int, bufs: list[memoryview]) -> None:
    while bufs:
        n = os.writev(fd, bufs[:_IOV_MAX])
        # drop fully written buffers, trim the partially written one
        i = 0
        while i < len(bufs) and n >= len(bufs[i]):
            n -= len(bufs[i])
            i += 1
        bufs = bufs[i:]
        if bufs and n:
            bufs[0] = bufs[0][n:]


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
    small: list[tuple[str, torch.Tensor]] = []  # pending small tensors (uint8 views)
    small_bytes = 0
    stage = torch.empty(_STAGE, dtype=torch.uint8) if fd is not None else None
    stage_used = 0

    def flush() -> None:
        nonlocal batch, batch_bytes, keep, stage_used
        pack()
        if not batch:
            return
        if fd is not None:
            _writev_all(fd, batch)
        else:
            for b in batch:
                f.write(b)
        batch, batch_bytes, keep, stage_used = [], 0, [], 0

    def pack() -> None:
        """Copy the pending small tensors into the stage (one torch.cat) and queue it."""
        nonlocal small, small_bytes, stage_used, batch_bytes
        if not small:
            return
        assert stage is not None
        region = stage[stage_used : stage_used + small_bytes]
        torch.cat([u for _, u in small], out=region)
        mv = memoryview(region.numpy()).cast("B")
        if hook is not None:
            pos = 0
            for name, u in small:
                n = u.numel()
                hook(name, mv[pos : pos + n])
                pos += n
        batch.append(mv)
        batch_bytes += small_bytes
        stage_used += small_bytes
        small, small_bytes = [], 0

    for name, t in items:
        n = t.numel() * t.element_size()
        if fd is not None and 0 < n < _SMALL:
            if stage_used + small_bytes + n > _STAGE:
                flush()
            small.append((name, _u8(t)))
            small_bytes += n
            total += n
            continue
        pack()  # keep file order: pending small tensors go first
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


# ------------------------------------------------------------------------------- read
def read_into(src: ByteSource, offset: int, out: torch.Tensor) -> None:
    """Fill CPU tensor ``out`` (contiguous) with the bytes at ``offset``."""
    mv = tensor_bytes(out)
    if not len(mv):
        return
    got = src.readinto(offset, mv)
    if got != len(mv):
        _truncated(src, offset + got, offset + len(mv))


def _truncated(src: ByteSource, got_to: int, need: int) -> None:
    from ..errors import CorruptCheckpointError

    raise CorruptCheckpointError(
        f"{src.loc}: file ends after {got_to} bytes but a tensor needs bytes up to "
        f"{need}; the file is truncated. Re-download or re-save it."
    )


ReadJob = tuple[int, torch.Tensor]  # (file offset, destination CPU tensor)

# A segment of the file read by one request: ("direct", offset, [tensors]) reads straight
# into the tensors' memory; ("staged", offset, [uint8 views]) goes through a staging buffer.
_Segment = tuple[str, int, list[torch.Tensor], int]


def _segments(jobs: Sequence[ReadJob]) -> list[_Segment]:
    items = sorted(((off, t) for off, t in jobs if t.numel()), key=lambda j: j[0])
    segs: list[_Segment] = []
    kind, seg_off, seg_ts, seg_n = "", -1, [], 0
    for off, t in items:
        n = t.numel() * t.element_size()
        k = "staged" if n < _SMALL else "direct"
        limit = _STAGE if k == "staged" else _RUN_MAX
        if k == kind and off == seg_off + seg_n and seg_n + n <= limit and len(seg_ts) < _IOV_MAX:
            seg_ts.append(t)
            seg_n += n
            continue
        if seg_ts:
            segs.append((kind, seg_off, seg_ts, seg_n))
        if k == "direct" and n > _RUN_MAX:  # one huge tensor: pieces of _RUN_MAX
            flat = t.view(-1).view(torch.uint8) if t.dtype != torch.uint8 else t.view(-1)
            for p in range(0, n, _RUN_MAX):
                segs.append(("direct", off + p, [flat[p : p + _RUN_MAX]], min(_RUN_MAX, n - p)))
            kind, seg_off, seg_ts, seg_n = "", -1, [], 0
            continue
        kind, seg_off, seg_ts, seg_n = k, off, [t], n
    if seg_ts:
        segs.append((kind, seg_off, seg_ts, seg_n))
    return segs


def _preadv_all(src: ByteSource, fd: int, offset: int, bufs: list[memoryview], total: int) -> None:
    done = 0
    while bufs:
        got = os.preadv(fd, bufs[:_IOV_MAX], offset + done)
        if got <= 0:
            _truncated(src, offset + done, offset + total)
        done += got
        i = 0
        while i < len(bufs) and got >= len(bufs[i]):
            got -= len(bufs[i])
            i += 1
        bufs = bufs[i:]
        if bufs and got:
            bufs[0] = bufs[0][got:]


def _run_segments(src: ByteSource, fd: int, segs: Sequence[_Segment]) -> None:
    stage: torch.Tensor | None = None
    for kind, off, ts, n in segs:
        if kind == "direct":
            _preadv_all(src, fd, off, [tensor_bytes(t) for t in ts], n)
            continue
        if stage is None:
            stage = torch.empty(_STAGE, dtype=torch.uint8)
        region = stage[:n]
        _preadv_all(src, fd, off, [memoryview(region.numpy()).cast("B")], n)
        dests = [t.view(-1).view(torch.uint8) if t.dtype != torch.uint8 else t.view(-1) for t in ts]
        srcs = list(region.split([d.numel() for d in dests]))
        if hasattr(torch, "_foreach_copy_"):
            torch._foreach_copy_(dests, srcs)
        else:  # pragma: no cover - older torch
            for d, s in zip(dests, srcs):
                d.copy_(s)


def read_jobs(src: ByteSource, jobs: Sequence[ReadJob], *, threads: int | None = None) -> None:
    """Fill each destination (contiguous CPU tensor) with the bytes at its file offset.

    Adjacent tensors are read by one request; large loads may be split over ``threads``
    contiguous stretches (default from ``TORCHKEEP_READ_THREADS``, else by core count).
    """
    remote = getattr(src, "remote", None)
    if remote is not None:  # URLs: coalesced ranges fetched in parallel (remote.py)
        remote.read_jobs(jobs)
        return
    fd = getattr(src, "_fd", None)
    if fd is None or not src.loc.is_local:
        for off, t in jobs:
            read_into(src, off, t)
        return
    segs = _segments(jobs)
    total = sum(s[3] for s in segs)
    n = threads or _env_int("TORCHKEEP_READ_THREADS", _threads_default())
    if n <= 1 or total < _PARALLEL_MIN or len(segs) < 2:
        _run_segments(src, fd, segs)
        return
    # contiguous stretches of about total/n bytes, one per thread
    parts: list[list[_Segment]] = [[]]
    acc, share = 0, total / n
    for s in segs:
        if acc >= share * len(parts) and len(parts) < n:
            parts.append([])
        parts[-1].append(s)
        acc += s[3]
    with ThreadPoolExecutor(len(parts)) as ex:
        for fut in [ex.submit(_run_segments, src, fd, p) for p in parts]:
            fut.result()
