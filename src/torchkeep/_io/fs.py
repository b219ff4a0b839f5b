"""One place for every filesystem: local paths go straight to ``os``; URLs go to fsspec.

A :class:`Location` is a resolved path: the fsspec filesystem and the path on it, or a plain
local path. Readers use :meth:`Location.open_source` to get a :class:`ByteSource` (positional
reads, ``readinto`` tensor memory); writers use :func:`atomic_write` so a file is either
complete or absent.
"""

from __future__ import annotations

import errno
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from ..errors import NotFoundError

__all__ = ["Location", "ByteSource", "resolve", "atomic_write", "fsync_dir", "write_error"]


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


@dataclass(frozen=True)
class Location:
    """A path on some filesystem. ``fs`` is None for local paths (fast ``os`` calls)."""

    path: str
    fs: Any = None  # fsspec.AbstractFileSystem | None

    @property
    def is_local(self) -> bool:
        return self.fs is None

    @property
    def url(self) -> str:
        if self.fs is None:
            return self.path
        return self.fs.unstrip_protocol(self.path)

    def __str__(self) -> str:
        return self.url

    # -- queries ---------------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.exists(self.path) if self.fs is None else self.fs.exists(self.path)

    def isdir(self) -> bool:
        return os.path.isdir(self.path) if self.fs is None else self.fs.isdir(self.path)

    def size(self) -> int:
        return os.path.getsize(self.path) if self.fs is None else int(self.fs.size(self.path))

    def join(self, *parts: str) -> "Location":
        if self.fs is None:
            return Location(os.path.join(self.path, *parts))
        return Location("/".join([self.path.rstrip("/"), *parts]), self.fs)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1] if self.fs else os.path.basename(self.path.rstrip(os.sep))

    @property
    def parent(self) -> "Location":
        if self.fs is None:
            return Location(os.path.dirname(os.path.abspath(self.path)))
        return Location(self.path.rstrip("/").rsplit("/", 1)[0], self.fs)

    def listdir(self) -> list[str]:
        """Names (not paths) of the entries of a directory, sorted."""
        if self.fs is None:
            return sorted(os.listdir(self.path))
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path, detail=False))

    def makedirs(self) -> None:
        if self.fs is None:
            os.makedirs(self.path, exist_ok=True)
        else:
            self.fs.makedirs(self.path, exist_ok=True)

    def read_bytes(self) -> bytes:
        if self.fs is None:
            with open(self.path, "rb") as f:
                return f.read()
        return self.fs.cat_file(self.path)

    def open(self, mode: str = "rb") -> BinaryIO:
        if self.fs is None:
            return open(self.path, mode)  # noqa: SIM115
        return self.fs.open(self.path, mode)

    def open_source(self) -> "ByteSource":
        return ByteSource(self)

    def require(self, what: str = "checkpoint") -> "Location":
        """Raise NotFoundError naming the path unless it exists."""
        if not self.exists():
            raise NotFoundError(
                f"{what} not found: {self.url!s}. Check the path (relative paths are "
                f"resolved from {os.getcwd()})."
            )
        return self


def resolve(path: "str | os.PathLike[str] | Location") -> Location:
    """Turn a local path, ``file://`` URL or fsspec URL into a :class:`Location`."""
    if isinstance(path, Location):
        return path
    p = os.fspath(path)
    if p.startswith("file://"):
        p = p[len("file://") :]
    if not _is_url(p):
        return Location(os.path.expanduser(p))
    import fsspec

    fs, fs_path = fsspec.core.url_to_fs(p)
    return Location(fs_path, fs)


class ByteSource:
    """Positional reads from one file; local files use ``os.pread``/``os.preadv``, URLs
    parallel ranged requests (:class:`~torchkeep._io.remote.RangeReader`).

    ``size`` is known up front so every length read from a header can be checked against it
    before anything is allocated.
    """

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self.remote: Any = None  # remote.RangeReader for fsspec URLs
        if loc.fs is None:
            self._fd: int | None = os.open(loc.path, os.O_RDONLY)
            self.size = os.fstat(self._fd).st_size
        else:  # parallel ranged reads (see remote.py)
            from .remote import RangeReader

            self._fd = None
            self.remote = RangeReader(loc.fs, loc.path)
            self.size = self.remote.size

    def pread(self, offset: int, n: int) -> bytes:
        if self._fd is not None:
            chunks = []
            while n > 0:
                b = os.pread(self._fd, n, offset)
                if not b:
                    break
                chunks.append(b)
                n -= len(b)
                offset += len(b)
            return b"".join(chunks)
        return self._remote().pread(offset, n)

    def readinto(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; returns bytes read (short only at end of file)."""
        total = 0
        n = len(buf)
        if self._fd is not None:
            while total < n:
                got = os.preadv(self._fd, [buf[total:]], offset + total)
                if got <= 0:
                    break
                total += got
            return total
        return self._remote().readinto(offset, buf)

    def _remote(self) -> Any:
        if self.remote is None:
            raise ValueError(f"{self.loc}: read after close")
        return self.remote

    def fileobj(self) -> BinaryIO:
        """A seekable file object over the same bytes (for zipfile / pickle)."""
        if self._fd is not None:
            return os.fdopen(os.dup(self._fd), "rb")
        return self.loc.fs.open(self.loc.path, "rb")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.remote = None

    def __enter__(self) -> "ByteSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fsync_dir(path: str) -> None:
    """fsync a local directory so a rename or new entry in it is durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(loc: Location, *, fsync: bool = True) -> Iterator[Any]:
    """Yield a writable binary file; on success it replaces ``loc`` in one step.

    Local: a temporary sibling is written, fsynced and renamed over the target, then the
    directory is fsynced. On error the temporary file is removed and ``loc`` is untouched.
    Object stores: the upload only becomes visible when the file is closed successfully.
    """
    if loc.fs is not None:
        from .remote import open_writer

        f = open_writer(loc.fs, loc.path)  # S3: a streaming multipart upload
        try:
            yield f
        except BaseException:
            _abandon(f)
            raise
        f.close()
        return
    directory = os.path.dirname(os.path.abspath(loc.path))
    tmp = os.path.join(directory, f".{os.path.basename(loc.path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(directory, exist_ok=True)
        f = open(tmp, "wb", buffering=0)  # noqa: SIM115
    except OSError as e:  # read-only file system, permissions, no space for a new inode
        if type(e).__module__ != "builtins":
            raise
        raise write_error(e, loc.path) from e
    try:
        yield f
        if fsync:
            os.fsync(f.fileno())
        f.close()
        os.replace(tmp, loc.path)
        if fsync:
            fsync_dir(directory)
    except BaseException as e:
        f.close()
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and type(e).__module__ == "builtins":
            raise write_error(e, loc.path) from e
        raise


def write_error(e: OSError, path: str) -> OSError:
    """``e`` (ENOSPC/EIO/EROFS from a write, fsync or rename, which name no file or only a
    temporary one) as an OSError of the same kind and errno naming the destination."""
    if path in str(e):
        return e
    return OSError(
        e.errno,
        f"{e.strerror or e}; writing {path} failed and nothing was left behind (an earlier file "
        f"there is unchanged). Fix: {_WRITE_FIX.get(e.errno or 0, 'check the disk')}, then save again",
        path,
    )


_WRITE_FIX = {
    errno.ENOSPC: "free disk space (or save elsewhere)",
    errno.EDQUOT: "free space within your disk quota (or save elsewhere)",
    errno.EACCES: "make the folder writable for this user, or save elsewhere",
    errno.EPERM: "make the folder writable for this user, or save elsewhere",
    errno.EROFS: "the filesystem is mounted read-only: save elsewhere",
    errno.ENOENT: "the folder does not exist and cannot be created there: check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
}


def _abandon(f: Any) -> None:
    """Drop an unfinished upload: abort it (multipart) and make sure no later close commits it."""
    try:
        if hasattr(f, "discard"):
            f.discard()
    except Exception:  # noqa: BLE001 - aborting is best effort; the object is never committed
        pass
    try:
        f.closed = True  # fsspec buffered files upload on close/__del__ unless closed
    except (AttributeError, TypeError):
        pass

