"""Parallel ranged reads of remote objects into tensor memory (:class:`RangeReader`).
See :mod:`torchkeep._io.remote` for the design."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ..errors import CorruptCheckpointError, NotFoundError, TorchkeepError
from ._remote_base import RemoteIOError, _as_error, _run, _url, is_s3, settings

__all__ = ["RangeReader", "plan_ranges", "range_for"]

_BLOCK = 1 << 20  # small reads are served from cached blocks of this size
_SMALL_READ = 64 << 10  # reads up to this size go through the block cache
_BLOCKS_KEPT = 16
_CHUNK = 1 << 20  # body chunk copied into tensor memory at a time
_RANGE_MIN = 8 << 20
_RANGE_MAX = 64 << 20
_GAP = 4 << 10  # bytes between two reads that one request reads through and drops
_RETRIES = 2  # a range whose body breaks off is fetched again this many times


Range = tuple[int, list[memoryview]]  # (object offset, destination buffers in byte order)


def range_for(total: int, threads: int) -> int:
    """Default range size: spread a load over all ``threads`` requests, in ranges of 8 to
    64 MiB (large enough that per-request latency is small, small enough to keep every
    connection busy on large loads)."""
    share = -(-total // max(1, threads))
    share = -(-share // (1 << 20)) << 20  # whole MiB
    return min(_RANGE_MAX, max(_RANGE_MIN, share))


def plan_ranges(jobs: Sequence[tuple[int, memoryview]], range_size: int) -> list[Range]:
    """Coalesce (offset, buffer) jobs into contiguous ranges of at most ``range_size`` bytes.

    Jobs that touch end to end, or are at most ``_GAP`` bytes apart (the record headers
    between a torch zip's storages), share a request; a buffer larger than ``range_size``
    is split over several ranges. The destination buffers are slices of the given ones (no copies).
    """
    out: list[Range] = []
    cur_off, cur_bufs, cur_n = -1, [], 0
    for off, mv in sorted(((o, m) for o, m in jobs if len(m)), key=lambda j: j[0]):
        pos = 0
        while pos < len(mv):
            here = off + pos
            gap = here - (cur_off + cur_n)
            if cur_bufs and 0 < gap <= _GAP and cur_n + gap < range_size:
                cur_bufs.append(memoryview(bytearray(gap)))  # read through (e.g. zip record headers)
                cur_n += gap
            if cur_bufs and (here != cur_off + cur_n or cur_n >= range_size):
                out.append((cur_off, cur_bufs))
                cur_off, cur_bufs, cur_n = -1, [], 0
            if not cur_bufs:
                cur_off = here
            take = min(len(mv) - pos, range_size - cur_n)
            cur_bufs.append(mv[pos : pos + take])
            cur_n += take
            pos += take
    if cur_bufs:
        out.append((cur_off, cur_bufs))
    return out


def _u8_view(t: torch.Tensor) -> memoryview:
    flat = t.view(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return memoryview(flat.numpy()).cast("B")


class RangeReader:
    """Positional reads of one remote object; :meth:`read_jobs` fetches ranges in parallel."""

    def __init__(self, fs: Any, path: str) -> None:
        self.fs = fs
        self.path = path
        self.url = _url(fs, path)
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise NotFoundError(f"{self.url}: not found. Check the URL (bucket and key).") from None
        if info.get("type") == "directory":
            raise NotFoundError(f"{self.url}: is a folder (prefix), not an object. Point at a file inside it.")
        self.size = int(info.get("size") or 0)
        self._s3 = is_s3(fs)
        etag = info.get("ETag") or info.get("etag")
        self._etag: str | None = etag if isinstance(etag, str) and etag else None
        self._blocks: OrderedDict[int, bytes] = OrderedDict()  # block index -> bytes, LRU
        cfg = settings()
        self.range_size = cfg["range_size"]
        self.threads = cfg["threads"]

    # -- single reads ---------------------------------------------------------------
    def pread(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (short only at the end of the object)."""
        n = max(0, min(n, self.size - offset))
        if n == 0:
            return b""
        if n <= _SMALL_READ:
            buf = bytearray(n)
            self._small_read(offset, memoryview(buf))
            return bytes(buf)
        return self._fetch(offset, n)

    def _small_read(self, offset: int, out: memoryview) -> None:
        """Serve a small read from 1 MiB blocks (fetched once, a few kept): headers, zip
        records and the small tensors of formats read one tensor at a time cost one request
        per block instead of one (or two) per read."""
        pos = 0
        while pos < len(out):
            i, at = divmod(offset + pos, _BLOCK)
            block = self._blocks.get(i)
            if block is None:
                block = self._fetch(i * _BLOCK, min(_BLOCK, self.size - i * _BLOCK))
                self._blocks[i] = block
                while len(self._blocks) > _BLOCKS_KEPT:
                    self._blocks.popitem(last=False)
            else:
                self._blocks.move_to_end(i)
            take = min(len(out) - pos, len(block) - at)
            out[pos : pos + take] = block[at : at + take]
            pos += take

    def _fetch(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset`` straight from the store (large reads split over ranges)."""
        buf = bytearray(n)
        jobs = [(offset, memoryview(buf))]
        self._check_bounds(jobs)
        self._get(jobs, n)
        return bytes(buf)

    def readinto(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset`` with parallel ranged reads; returns bytes read."""
        want = max(0, min(len(buf), self.size - offset))
        if want:
            self.read_jobs_bytes([(offset, buf[:want])])
        return want

    # -- many reads -----------------------------------------------------------------
    def read_jobs(self, jobs: Sequence[tuple[int, torch.Tensor]]) -> None:
        """Fill each contiguous CPU tensor with the bytes at its offset."""
        self.read_jobs_bytes([(off, _u8_view(t)) for off, t in jobs if t.numel()])

    def read_jobs_bytes(self, jobs: Sequence[tuple[int, memoryview]]) -> None:
        self._check_bounds(jobs)
        total = sum(len(mv) for _, mv in jobs)
        if total <= _SMALL_READ:  # a few small tensors: from the block cache
            for off, mv in jobs:
                self._small_read(off, mv)
            return
        self._get(jobs, total)

    def _check_bounds(self, jobs: Sequence[tuple[int, memoryview]]) -> None:
        for off, mv in jobs:
            if off < 0 or off + len(mv) > self.size:
                raise CorruptCheckpointError(
                    f"{self.url}: a read needs bytes up to {off + len(mv):,} but the object has {self.size:,}; "
                    f"it is truncated. Re-upload it."
                )

    def _get(self, jobs: Sequence[tuple[int, memoryview]], total: int) -> None:
        ranges = plan_ranges(jobs, self.range_size or range_for(total, self.threads))
        if ranges:
            self._read_ranges(ranges)

    def _read_ranges(self, ranges: list[Range]) -> None:
        if self._s3:
            got = _run(self.fs, self._s3_ranges(ranges)).result()
        else:
            got = self._generic_ranges(ranges)
        for (off, bufs), n in zip(ranges, got):
            need = sum(len(b) for b in bufs)
            if n != need:
                raise CorruptCheckpointError(
                    f"{self.url}: the object ends after {off + n:,} bytes but a read needs bytes up to "
                    f"{off + need:,}; it is truncated. Re-upload it."
                )

    # generic fsspec: cat_file ranges on a thread pool
    def _generic_ranges(self, ranges: list[Range]) -> list[int]:
        def one(r: Range) -> int:
            off, bufs = r
            n = sum(len(b) for b in bufs)
            try:
                data = self.fs.cat_file(self.path, start=off, end=off + n)
            except Exception as e:  # noqa: BLE001 - re-raised as a torchkeep error where known
                raise _as_error(e, self.url, f"reading bytes {off}-{off + n}") from e
            return _scatter(memoryview(data), bufs)

        if len(ranges) == 1 or self.threads == 1:
            return [one(r) for r in ranges]
        with ThreadPoolExecutor(min(self.threads, len(ranges))) as ex:
            return list(ex.map(one, ranges))

    # S3: concurrent GETs on s3fs's loop, bodies streamed into the buffers
    async def _s3_ranges(self, ranges: list[Range]) -> list[int]:
        sem = asyncio.Semaphore(self.threads)
        bucket, key, version = self.fs.split_path(self.path)
        extra: dict[str, Any] = {}
        if version:
            extra["VersionId"] = version
        if self._etag:
            extra["IfMatch"] = self._etag

        async def one(r: Range) -> int:
            off, bufs = r
            n = sum(len(b) for b in bufs)
            where = f"reading bytes {off}-{off + n}"
            async with sem:
                for attempt in range(_RETRIES + 1):
                    try:
                        resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={off}-{off + n - 1}", **extra)
                    except Exception as e:  # noqa: BLE001 - s3fs already retried; a torchkeep error where known
                        raise _as_error(e, self.url, where) from e
                    body = resp["Body"]
                    try:
                        return await _stream_into(body, bufs)
                    except (asyncio.CancelledError, TorchkeepError):
                        raise
                    except Exception as e:  # noqa: BLE001 - the connection broke mid-body: fetch the range again
                        if attempt == _RETRIES:
                            raise RemoteIOError(
                                f"{self.url}: {where} failed {attempt + 1} times ({type(e).__name__}: {e}). "
                                f"Check the connection to the object store and try again."
                            ) from e
                        await asyncio.sleep(0.2 * 2**attempt)
                    finally:
                        body.close()
            raise AssertionError("unreachable")  # pragma: no cover

        return await _gather_or_cancel([one(r) for r in ranges])


async def _gather_or_cancel(coros: list[Any]) -> list[Any]:
    """Run the coroutines concurrently; on the first failure cancel the rest, then raise it
    (no request keeps writing into buffers the caller has given up on)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        pending = [t for t in tasks if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)
    return [t.result() for t in tasks]


async def _stream_into(body: Any, bufs: list[memoryview]) -> int:
    """Copy a response body into ``bufs`` in order, chunk by chunk; returns bytes copied."""
    total = 0
    for b in bufs:
        pos = 0
        while pos < len(b):
            chunk = await body.read(min(_CHUNK, len(b) - pos))
            if not chunk:
                return total
            b[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
            total += len(chunk)
    return total


def _scatter(data: memoryview, bufs: list[memoryview]) -> int:
    pos = 0
    for b in bufs:
        k = min(len(b), len(data) - pos)
        if k <= 0:
            break
        b[:k] = data[pos : pos + k]
        pos += k
    return pos
