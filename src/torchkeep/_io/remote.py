"""Remote (fsspec) byte transfer: parallel ranged reads into tensor memory, streaming uploads.

Reads (:class:`RangeReader`): a load asks for many tensors at known offsets. Adjacent
tensors are coalesced into large byte ranges (a larger tensor is split into several) and up
to ``TORCHKEEP_REMOTE_THREADS`` (default 8) ranges are fetched at once. A range is the load's
size divided by the number of threads, between 8 and 64 MiB (``TORCHKEEP_REMOTE_RANGE_SIZE``
fixes it instead). On S3 (s3fs) the
ranges are concurrent ``GET`` requests on s3fs's event loop, pinned to the ETag seen at
open (``If-Match``, so an object replaced mid-read is an error rather than a mix of two
versions), and each response body is copied chunk by chunk straight into the destination
tensors' memory: no whole-range or whole-file buffer exists. Other fsspec filesystems get
the same ranges through ``cat_file(start, end)`` on a small thread pool. A range that comes
back short (the object is shorter than its header says, or was truncated meanwhile) raises
:class:`~torchkeep.errors.CorruptCheckpointError` naming the URL; a body that breaks off is
fetched again (twice), then :class:`RemoteIOError`. Small reads (headers, zip records, formats
that read one small tensor at a time) are served from cached 1 MiB blocks, so they cost one
request per block rather than one per read.

Writes (:class:`MultipartWriter`, S3 only; other filesystems use their own ``open("wb")``):
bytes are packed into parts of ``TORCHKEEP_REMOTE_PART_SIZE`` (16 MiB by default, at least
S3's 5 MiB; doubled every 1000 parts so S3's 10,000-part limit is never reached) and each
full part is uploaded (``UploadPart``) while the next one fills, with at most
``TORCHKEEP_REMOTE_UPLOADS`` (default 4) parts in flight. Peak memory is therefore about
``(uploads + 1) * part_size`` whatever the file size. The object becomes visible only when
:meth:`MultipartWriter.close` completes the upload; :meth:`MultipartWriter.discard` aborts
it (no partial object, no orphaned parts). A file smaller than one part is one ``PutObject``.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from ..errors import CorruptCheckpointError, NotFoundError, TorchkeepError

__all__ = ["RangeReader", "MultipartWriter", "RemoteIOError", "open_writer", "is_s3", "plan_ranges", "range_for", "settings"]

_MIN_PART = 5 << 20  # S3's smallest part (all but the last)
_BLOCK = 1 << 20  # small reads are served from cached blocks of this size
_SMALL_READ = 64 << 10  # reads up to this size go through the block cache
_BLOCKS_KEPT = 16
_CHUNK = 1 << 20  # body chunk copied into tensor memory at a time
_RANGE_MIN = 8 << 20
_RANGE_MAX = 64 << 20
_RETRIES = 2  # a range whose body breaks off is fetched again this many times


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return max(minimum, int(raw))
    except ValueError:
        raise TorchkeepError(f"{name}={raw!r} is not an integer number of bytes/threads; unset it or give a number.") from None


def settings() -> dict[str, int]:
    """The transfer settings in force (from the environment): part/range size and concurrency."""
    rs = _env_int("TORCHKEEP_REMOTE_RANGE_SIZE", 0, 0)
    return {
        "part_size": _env_int("TORCHKEEP_REMOTE_PART_SIZE", 16 << 20, _MIN_PART),
        "range_size": max(64 << 10, rs) if rs else 0,  # 0: by load size (range_for)
        "threads": _env_int("TORCHKEEP_REMOTE_THREADS", 8, 1),
        "uploads": _env_int("TORCHKEEP_REMOTE_UPLOADS", 4, 1),
    }


def is_s3(fs: Any) -> bool:
    mod = sys.modules.get("s3fs")
    return mod is not None and isinstance(fs, mod.S3FileSystem)


def _url(fs: Any, path: str) -> str:
    try:
        return str(fs.unstrip_protocol(path))
    except Exception:  # noqa: BLE001 - only for messages
        return path


def _run(fs: Any, coro: Any) -> Future:
    """Schedule a coroutine on an async filesystem's loop; a concurrent.futures.Future."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None and running is fs.loop:
        coro.close()
        raise TorchkeepError(
            "torchkeep's blocking S3 transfer was called from inside s3fs's own event loop; it would wait for "
            "itself forever. Call it from a thread (e.g. asyncio.to_thread / run_in_executor)."
        )
    return asyncio.run_coroutine_threadsafe(coro, fs.loop)


def _as_error(e: BaseException, url: str, what: str) -> BaseException:
    """Map a client error to a torchkeep error naming the URL (OSErrors pass through)."""
    if isinstance(e, TorchkeepError):
        return e
    code = _error_code(e)
    text = f"{code} {e}"
    if isinstance(e, FileNotFoundError) or code in ("NoSuchKey", "404"):
        return NotFoundError(f"{url}: not found while {what}. Check the URL; the object may have been deleted meanwhile.")
    if code in ("PreconditionFailed", "412") or "pre-condition" in text:
        return CorruptCheckpointError(
            f"{url}: the object changed while it was being read ({what}); another writer replaced it. Read it again "
            f"once the writer is done."
        )
    if code in ("InvalidRange", "416") or "Range Not Satisfiable" in text:
        return CorruptCheckpointError(f"{url}: the object is shorter than its header says ({what}); it is truncated. Re-upload it.")
    return e


class RemoteIOError(TorchkeepError, OSError):
    """A transfer to or from an object store failed (after retries); names the URL."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _error_code(e: BaseException) -> str:
    """The S3 error code (``NoSuchKey``, ``PreconditionFailed``...) behind an s3fs error."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 5:
        resp = getattr(cur, "response", None)
        if isinstance(resp, dict):
            return str(resp.get("Error", {}).get("Code", ""))
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return ""


# ---------------------------------------------------------------------------------- reads
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

    Jobs that touch end to end share a request; a buffer larger than ``range_size`` is split
    over several ranges. The destination buffers are slices of the given ones (no copies).
    """
    out: list[Range] = []
    cur_off, cur_bufs, cur_n = -1, [], 0
    for off, mv in sorted(((o, m) for o, m in jobs if len(m)), key=lambda j: j[0]):
        pos = 0
        while pos < len(mv):
            here = off + pos
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


# --------------------------------------------------------------------------------- writes
class MultipartWriter:
    """A write-only file that streams to one S3 object as a multipart upload.

    ``write`` copies into a part buffer; each full part is uploaded while the next fills
    (at most ``uploads`` parts in flight, the writer blocks on the oldest beyond that).
    ``close`` completes the upload (the object appears atomically); ``discard`` aborts it.
    """

    def __init__(self, fs: Any, path: str, *, part_size: int | None = None, uploads: int | None = None) -> None:
        cfg = settings()
        self.fs = fs
        self.path = path
        self.url = _url(fs, path)
        self.part_size = max(_MIN_PART, part_size or cfg["part_size"])
        self.uploads = max(1, uploads or cfg["uploads"])
        self.bucket, self.key, _ = fs.split_path(path)
        self.closed = False
        self._buf = bytearray(self.part_size)
        self._used = 0
        self._pos = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._inflight: deque[tuple[int, Future]] = deque()
        self.parts_uploaded = 0

    # -- file protocol ---------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        return None

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError(f"{self.url}: write to a closed upload")
        mv = memoryview(data).cast("B")
        n = len(mv)
        pos = 0
        while pos < n:
            take = min(n - pos, len(self._buf) - self._used)
            self._buf[self._used : self._used + take] = mv[pos : pos + take]
            self._used += take
            pos += take
            if self._used == len(self._buf):
                self._send_part()
        self._pos += n
        return n

    def __enter__(self) -> "MultipartWriter":
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    # -- upload ----------------------------------------------------------------------
    def _call(self, method: str, **kw: Any) -> Any:
        return _run(self.fs, self.fs._call_s3(method, Bucket=self.bucket, Key=self.key, **kw)).result()

    def _send_part(self) -> None:
        if self._upload_id is None:
            try:
                self._upload_id = self._call("create_multipart_upload")["UploadId"]
            except Exception as e:  # noqa: BLE001 - re-raised as a torchkeep error where known
                raise _as_error(e, self.url, "starting the upload") from e
        while len(self._inflight) >= self.uploads:
            self._finish_oldest()
        number = len(self._parts) + len(self._inflight) + 1
        # The part goes out as an immutable copy read as a stream (BytesIO shares a bytes
        # object's memory), so the HTTP client sends it in small chunks and never buffers a
        # second copy; the fill buffer is reused at once.
        body = io.BytesIO(bytes(memoryview(self._buf)[: self._used]))
        fut = _run(
            self.fs,
            self.fs._call_s3("upload_part", Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=body),
        )
        self._inflight.append((number, fut))
        self._used = 0
        size = self._size_of(number + 1)
        if size != len(self._buf):
            self._buf = bytearray(size)

    def _size_of(self, number: int) -> int:
        """Part ``number``'s size: doubles every 1000 parts (S3 allows 10,000 per upload)."""
        return self.part_size << min(10, (number - 1) // 1000)

    def _finish_oldest(self) -> None:
        number, fut = self._inflight.popleft()
        try:
            resp = fut.result()
        except Exception as e:  # noqa: BLE001 - re-raised as a torchkeep error where known
            raise _as_error(e, self.url, f"uploading part {number}") from e
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})
        self.parts_uploaded += 1

    def close(self) -> None:
        """Upload what is left and complete the upload: the object appears now, whole."""
        if self.closed:
            return
        try:
            if self._upload_id is None:  # small file: one PutObject
                try:
                    self._call("put_object", Body=bytes(memoryview(self._buf)[: self._used]))
                except Exception as e:  # noqa: BLE001 - re-raised as a torchkeep error where known
                    raise _as_error(e, self.url, "uploading") from e
            else:
                if self._used:
                    self._send_part()
                while self._inflight:
                    self._finish_oldest()
                try:
                    self._call("complete_multipart_upload", UploadId=self._upload_id, MultipartUpload={"Parts": self._parts})
                except Exception as e:  # noqa: BLE001 - re-raised as a torchkeep error where known
                    raise _as_error(e, self.url, "completing the upload") from e
        except BaseException:
            self.discard()
            raise
        self.closed = True
        self._buf = bytearray()
        self.fs.invalidate_cache(self.path)

    def discard(self) -> None:
        """Abort: nothing becomes visible and the uploaded parts are deleted."""
        if self.closed:
            return
        self.closed = True
        for _n, fut in self._inflight:
            try:
                fut.result()
            except Exception:  # noqa: BLE001 - aborting anyway
                pass
        self._inflight.clear()
        self._buf = bytearray()
        if self._upload_id is not None:
            try:
                self._call("abort_multipart_upload", UploadId=self._upload_id)
            except Exception:  # noqa: BLE001 - best effort: S3 lifecycle rules clean up leftovers
                pass
            self._upload_id = None


def open_writer(fs: Any, path: str) -> Any:
    """A write-only file for ``path``: :class:`MultipartWriter` on S3, ``fs.open(path, 'wb')`` elsewhere."""
    if is_s3(fs):
        return MultipartWriter(fs, path)
    return fs.open(path, "wb")
