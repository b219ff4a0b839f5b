"""Legacy torch files (``torch.save`` before 1.6, or ``_use_new_zipfile_serialization=False``)
and bare pickle files (``pickle.dump`` of dicts, tensors, arrays): read and inspect.

Legacy layout: pickled magic number, protocol version (1001), sys_info dict, the main
pickle (storages as persistent ids ``('storage', type, key, location, numel, view)``), a
pickled list of storage keys, then each storage's bytes prefixed by its 8-byte
little-endian element count. The main pickle is interpreted twice by the restricted
unpickler: once without data to learn each storage's type and size (all ``inspect``
needs), then with every storage read from its offset once its size is checked against
the file.

Bare pickles may hold tensors pickled by plain ``pickle``: their storages reduce to
``torch.storage._load_from_bytes(<bytes of a legacy torch.save>)``; those bytes are read
by this module's own reader (never ``torch.load``), nested at most twice.

``unsafe_pickle=True`` uses ``torch.load(weights_only=False)`` (legacy) or ``pickle.load``
(bare pickles): explicit opt-in, runs the file's code.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

import numpy as np
import torch

from .._io.fastio import read_jobs
from .._io.fs import ByteSource
from ..errors import CorruptCheckpointError, FormatError
from ._base import CheckpointInfo, MapLocation
from ._pickled import Context, Storage
from ._pickled_tree import convert_modules, summarize
from ._unpickler import PickleTruncated, unpickle

__all__ = ["read", "read_raw", "inspect", "read_pickle", "read_pickle_raw", "inspect_pickle", "load_from_bytes", "LEGACY_MAGIC"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_MAX_PICKLE = 1 << 31


class MemSource:
    """Bytes in memory with the ByteSource reading interface (nested torch.save data)."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.size = len(data)
        self.loc = name

    def pread(self, offset: int, n: int) -> bytes:
        return self.data[offset : offset + n]


def _bytes(src: Any, limit: int = _MAX_PICKLE) -> bytes:
    if isinstance(src, MemSource):
        return src.data
    if src.size > limit:
        raise FormatError(f"{src.loc}: pickle of {src.size:,} bytes is too large to read safely.")
    return src.pread(0, src.size)


def _fill(src: Any, offset: int, buf: torch.Tensor) -> None:
    n = buf.numel()
    if not n:
        return
    if isinstance(src, MemSource):
        buf.numpy()[:] = np.frombuffer(src.data, dtype=np.uint8, count=n, offset=offset)
    else:
        read_jobs(src, [(offset, buf)])


class _Legacy:
    """One legacy file: header checked, main pickle located, storage offsets computed."""

    def __init__(self, src: Any, data: bytes, *, depth: int = 0) -> None:
        self.src = src
        self.path = str(src.loc)
        self.data = data
        self.depth = depth
        probe = Context(self.path)
        magic = unpickle(data, path=self.path, ctx=probe, what="legacy header")
        if magic.value != LEGACY_MAGIC:
            raise FormatError(f"{self.path}: not a legacy torch file (bad magic number).")
        proto = unpickle(data, path=self.path, ctx=probe, start=magic.end, what="legacy header")
        if proto.value != PROTOCOL_VERSION:
            raise FormatError(f"{self.path}: legacy torch file with unsupported protocol version {proto.value!r}.")
        info = unpickle(data, path=self.path, ctx=probe, start=proto.end, what="legacy header")
        if isinstance(info.value, dict) and info.value.get("little_endian") is False:
            raise FormatError(
                f"{self.path}: saved on a big-endian machine, which torchkeep does not convert. Load it "
                f"with tk.load(path, unsafe_pickle=True) if you trust it."
            )
        self.main_start = info.end
        self.pids: dict[str, tuple[torch.dtype, str, int]] = {}
        # pass 1: the storages' types and sizes (no data)
        ctx = self.context(materialize=False)
        self.stub_tree = unpickle(data, path=self.path, ctx=ctx, start=self.main_start, what="main pickle")
        keys = unpickle(data, path=self.path, ctx=Context(self.path), start=self.stub_tree.end, what="storage key list")
        if not isinstance(keys.value, list) or not all(isinstance(k, str) for k in keys.value):
            raise CorruptCheckpointError(f"{self.path}: legacy storage key list is damaged.")
        self.offsets: dict[str, int] = {}
        pos = keys.end
        for k in keys.value:
            if k not in self.pids:
                raise CorruptCheckpointError(f"{self.path}: storage {k!r} is listed but never used; the file is damaged.")
            dt, _loc, numel = self.pids[k]
            head = src.pread(pos, 8)
            if len(head) < 8:
                raise CorruptCheckpointError(f"{self.path}: file ends before storage {k!r}; it is truncated. Re-download or re-save it.")
            (count,) = struct.unpack("<q", head)
            nbytes = count * dt.itemsize
            if count < 0 or pos + 8 + nbytes > src.size:
                raise CorruptCheckpointError(
                    f"{self.path}: storage {k!r} claims {max(count, 0) * dt.itemsize:,} bytes but only "
                    f"{src.size - pos - 8:,} remain; the file is truncated or damaged."
                )
            if count < numel:
                raise CorruptCheckpointError(f"{self.path}: storage {k!r} holds {count} elements, the pickle needs {numel}.")
            self.offsets[k] = pos + 8
            pos += 8 + nbytes
        missing = sorted(set(self.pids) - set(self.offsets))
        if missing:
            raise CorruptCheckpointError(f"{self.path}: storages {missing[:10]} have no data in the file; it is damaged.")

    def context(self, *, materialize: bool, map_location: MapLocation = "cpu", dtype: torch.dtype | None = None) -> Context:
        storages: dict[str, Storage] = {}

        def load(ctx: Context, pid: Any) -> Any:
            if isinstance(pid, tuple) and pid and pid[0] in ("module", b"module") and len(pid) >= 2:
                return pid[1]  # the class of a pickled module, with its source: a placeholder
            p = ctx.parse_pid(pid)
            if p.view is not None:
                raise FormatError(f"{self.path}: storage views from torch < 0.4 are not supported; re-save the file with a newer torch.")
            st = storages.get(p.key)
            if st is not None:
                return st
            if not ctx.materialize:
                self.pids.setdefault(p.key, (p.dtype, p.location, p.numel))
                st = Storage(p.key, p.dtype, p.numel * p.dtype.itemsize, p.location)
            else:
                dt, _, numel = self.pids[p.key]
                buf = torch.empty(numel * dt.itemsize, dtype=torch.uint8)
                _fill(self.src, self.offsets[p.key], buf)
                st = Storage(p.key, dt, buf.numel(), p.location, ctx.place(buf, p.location))
            storages[p.key] = st
            return st

        return Context(
            self.path, persistent_load=load, load_from_bytes=load_from_bytes, materialize=materialize,
            map_location=map_location, dtype=dtype, depth=self.depth,
        )

    def tree(self, *, map_location: MapLocation, dtype: torch.dtype | None) -> Any:
        ctx = self.context(materialize=True, map_location=map_location, dtype=dtype)
        return unpickle(self.data, path=self.path, ctx=ctx, start=self.main_start, what="main pickle").value


def _open(src: ByteSource) -> _Legacy:
    """Read the pickles at the head of the file (not the storages after them) and parse."""
    n = 1 << 20
    while True:
        n = min(n, src.size)
        try:
            return _Legacy(src, src.pread(0, n))
        except PickleTruncated:
            if n >= src.size:
                raise
            n *= 8


def read(src: ByteSource, *, map_location: MapLocation = "cpu", dtype: torch.dtype | None = None, unsafe_pickle: bool = False) -> Any:
    if unsafe_pickle:
        from .torchzip import cast_tree

        with src.fileobj() as f:
            return cast_tree(torch.load(f, map_location=map_location, weights_only=False), dtype)
    return convert_modules(_open(src).tree(map_location=map_location, dtype=dtype), path=str(src.loc))


def read_raw(src: ByteSource, *, map_location: MapLocation = "cpu") -> Any:
    return _open(src).tree(map_location=map_location, dtype=None)


def inspect(src: ByteSource) -> CheckpointInfo:
    legacy = _open(src)
    tensors, values, placeholders = summarize(convert_modules(legacy.stub_tree.value, path=legacy.path))
    return CheckpointInfo(legacy.path, "torch-legacy", tensors, {}, values, placeholders, src.size)


# --------------------------------------------------------------------------- bare pickles
def load_from_bytes(ctx: Context, b: bytes) -> Any:
    """``torch.storage._load_from_bytes``: a nested legacy torch.save, read by our own reader."""
    mem = MemSource(b, f"{ctx.path} (nested storage bytes)")
    legacy = _Legacy(mem, b, depth=ctx.depth + 1)
    if not ctx.materialize:
        return legacy.stub_tree.value
    return legacy.tree(map_location=ctx.map_location, dtype=None)


def _pickle_tree(src: ByteSource, *, materialize: bool, map_location: MapLocation, dtype: torch.dtype | None) -> Any:
    ctx = Context(str(src.loc), load_from_bytes=load_from_bytes, materialize=materialize, map_location=map_location, dtype=dtype)
    return unpickle(_bytes(src), path=str(src.loc), ctx=ctx).value


def read_pickle(src: ByteSource, *, map_location: MapLocation = "cpu", dtype: torch.dtype | None = None, unsafe_pickle: bool = False) -> Any:
    if unsafe_pickle:
        from .torchzip import cast_tree

        with src.fileobj() as f:
            return cast_tree(pickle.load(f), dtype)  # noqa: S301 - the explicit, documented opt-in
    return convert_modules(_pickle_tree(src, materialize=True, map_location=map_location, dtype=dtype), path=str(src.loc))


def read_pickle_raw(src: ByteSource, *, map_location: MapLocation = "cpu") -> Any:
    return _pickle_tree(src, materialize=True, map_location=map_location, dtype=None)


def inspect_pickle(src: ByteSource) -> CheckpointInfo:
    tree = _pickle_tree(src, materialize=False, map_location="cpu", dtype=None)
    tensors, values, placeholders = summarize(convert_modules(tree, path=str(src.loc)))
    return CheckpointInfo(str(src.loc), "pickle", tensors, {}, values, placeholders, src.size)
