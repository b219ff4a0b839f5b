"""Streaming multipart uploads to S3 (:class:`MultipartWriter`); other filesystems use their
own writer. See :mod:`torchkeep._io.remote` for the design."""

from __future__ import annotations

import io
from collections import deque
from concurrent.futures import Future
from typing import Any

from ._remote_base import MIN_PART, _as_error, _run, _url, is_s3, settings

__all__ = ["MultipartWriter", "open_writer"]


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
        self.part_size = max(MIN_PART, part_size or cfg["part_size"])
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
