"""safetensors: torchkeep's own format, written and read without the safetensors package.

Layout (the public spec): 8-byte little-endian header length N, N bytes of JSON header,
then the data. The header maps tensor names to ``{"dtype", "shape", "data_offsets"}`` and
``__metadata__`` to str -> str. torchkeep pads the header with spaces so the data starts on
an aligned offset and lays tensors out largest-itemsize first, so every tensor is aligned
in the file; any safetensors reader reads the result.

Nested trees: their structure goes into ``__metadata__["torchkeep.tree"]`` (see ``_tree``).
"""

from __future__ import annotations

import json
import math
import reprlib
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .._io import jsonio
from .._io.fastio import read_jobs, write_tensors
from .._io.fs import ByteSource, Location, atomic_write
from .._io.gcpause import gc_paused
from ..errors import CorruptCheckpointError, FormatError
from . import _tree
from ._base import (
    ST_DTYPES,
    ST_NAMES,
    CheckpointInfo,
    MapLocation,
    TensorInfo,
    check_dtype_for_safetensors,
    dtype_name,
    finish_tensor,
    resolve_device,
)

__all__ = ["sniff", "read_header", "write", "write_tree", "read", "inspect", "header_info", "Header", "TREE_KEY"]

FORMAT_VERSION = "1"
TREE_KEY = "torchkeep.tree"
ALIAS_KEY = "torchkeep.aliases"
USER_KEY = "torchkeep.metadata"
_MAX_HEADER = 100 << 20  # the safetensors spec's own limit
_ALIGN_LARGE = 4096
_ALIGN_SMALL = 64


def sniff(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


@dataclass
class Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # relative to data start
    end: int


@dataclass
class Header:
    path: str
    entries: dict[str, Entry]
    metadata: dict[str, str]
    data_start: int
    file_size: int

    def tensor_infos(self, file: str | None = None) -> list[TensorInfo]:
        return [
            TensorInfo(e.name, e.shape, dtype_name(e.dtype), e.end - e.begin, file)
            for e in self.entries.values()
        ]


def _all_ints(xs: list[Any]) -> bool:
    for x in xs:
        if type(x) is not int:
            return False
    return True


_ITEMSIZE: dict[torch.dtype, int] = {}


def _itemsize(dt: torch.dtype) -> int:
    n = _ITEMSIZE.get(dt)
    if n is None:
        n = _ITEMSIZE[dt] = torch.empty((), dtype=dt).element_size()
    return n


_FIX = "the file is damaged; download or save it again"
_TREE_DEPTH = 2 * _tree._MAX_DEPTH + 8  # a tuple level is two JSON levels ({"$tu": [...]})


def _short(x: Any) -> str:
    """repr bounded in length and depth: a hostile header may nest values a thousand deep."""
    return reprlib.repr(x)


@gc_paused
def read_header(src: ByteSource) -> Header:
    """Parse and validate the header; every length is checked against the file size."""
    path = str(src.loc)
    if src.size < 8:
        raise CorruptCheckpointError(f"{path}: {src.size} bytes is too short for a safetensors file (truncated?).")
    (n,) = struct.unpack("<Q", src.pread(0, 8))
    if n > min(_MAX_HEADER, src.size - 8):
        raise CorruptCheckpointError(
            f"{path}: safetensors header claims {n:,} bytes but the file has {src.size:,}; "
            f"the file is truncated or not safetensors."
        )
    raw = src.pread(8, n)
    # the entries are validated below without recursion, so no nesting walk (fast for big headers)
    header = jsonio.loads(raw, what="safetensors header", path=path, max_depth=None, fix=_FIX)
    data_start = 8 + n
    data_len = src.size - data_start
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CorruptCheckpointError(f"{path}: safetensors __metadata__ must map str to str.")
    entries: dict[str, Entry] = {}
    problems: list[str] = []
    for name, spec in header.items():
        try:
            dt_name, shape, offs = spec["dtype"], spec["shape"], spec["data_offsets"]
        except (TypeError, KeyError):
            problems.append(f"{name!r}: entry lacks dtype/shape/data_offsets")
            continue
        dt = ST_DTYPES.get(dt_name) if isinstance(dt_name, str) else None
        if dt is None:
            problems.append(f"{name!r}: unknown dtype {_short(dt_name)}")
            continue
        # exact-type checks are the fast path (json gives list/int); bool is not a size
        if not (type(shape) is list and (not shape or (_all_ints(shape) and min(shape) >= 0))):
            problems.append(f"{name!r}: bad shape {_short(shape)}")
            continue
        if not (type(offs) is list and len(offs) == 2 and type(offs[0]) is int and type(offs[1]) is int):
            problems.append(f"{name!r}: bad data_offsets {_short(offs)}")
            continue
        b, e = offs
        numel = math.prod(shape)
        itemsize = _itemsize(dt)
        if not (0 <= b <= e <= data_len):
            problems.append(f"{name!r}: data_offsets {offs} outside the {data_len:,} data bytes (truncated file?)")
        elif e - b != numel * itemsize:
            problems.append(f"{name!r}: shape {shape} of {dt_name} needs {numel * itemsize:,} bytes, offsets give {e - b:,}")
        else:
            entries[name] = Entry(name, dt, tuple(shape), b, e)
    if not problems:
        spans = sorted((e.begin, e.end, e.name) for e in entries.values() if e.end > e.begin)
        for (b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                problems.append(f"tensors {n0!r} and {n1!r} overlap")
    if problems:
        raise CorruptCheckpointError(
            f"{path}: damaged safetensors header: " + "; ".join(problems[:20])
            + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        )
    return Header(path, entries, meta, data_start, src.size)


# ------------------------------------------------------------------------------- write
def _layout(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Largest itemsize first (stable), so each tensor is aligned within an aligned data start."""
    return sorted(tensors, key=lambda k: -tensors[k].element_size())


@gc_paused
def build_header(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None
) -> tuple[bytes, list[str]]:
    # one pass over the tensors; the layout is _layout's (largest itemsize first, stable)
    entries = []
    for k, t in tensors.items():
        dt = t.dtype
        size = _itemsize(dt)
        entries.append((k, size, t.numel() * size, dt, t.shape))
    order_e = sorted(entries, key=lambda e: -e[1])
    order = [e[0] for e in order_e]
    offsets: dict[str, list[int]] = {}
    pos = 0
    for k, _size, n, _dt, _shape in order_e:
        offsets[k] = [pos, pos + n]
        pos += n
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    names = ST_NAMES
    for k, _size, _n, dt, shape in entries:
        header[k] = {"dtype": names[dt], "shape": list(shape), "data_offsets": offsets[k]}
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    align = _ALIGN_LARGE if pos >= (16 << 20) else _ALIGN_SMALL
    padded = -(-(8 + len(raw)) // align) * align - 8
    raw += b" " * (padded - len(raw))
    return struct.pack("<Q", len(raw)) + raw, order


def write(
    loc: Location,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    fsync: bool = True,
    hook: Callable[[str, memoryview], None] | None = None,
    atomic: bool = True,
) -> int:
    """Write a flat name -> tensor mapping; returns the file size."""
    for k, t in tensors.items():
        _tree.check_tensor(t, k)
        check_dtype_for_safetensors(t, k)
    return _write_checked(loc, tensors, metadata, fsync=fsync, hook=hook, atomic=atomic)


def _write_checked(
    loc: Location,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None,
    *,
    fsync: bool,
    hook: Callable[[str, memoryview], None] | None,
    atomic: bool = True,
) -> int:
    """:func:`write` for tensors already validated (``_tree.flatten`` checks them)."""
    head, order = build_header(tensors, metadata)

    def emit(f: Any) -> int:
        f.write(head)
        return len(head) + write_tensors(f, ((k, tensors[k]) for k in order), hook=hook)

    if atomic:
        with atomic_write(loc, fsync=fsync) as f:
            return emit(f)
    with (open(loc.path, "wb", buffering=0) if loc.is_local else loc.open("wb")) as f:
        return emit(f)


def encode_tree(tree: Any, metadata: Mapping[str, Any] | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and ``__metadata__`` for a tree: flat state dicts keep their own names."""
    meta: dict[str, str] = {"format": "pt", "torchkeep": FORMAT_VERSION}
    if _tree.is_flat_state_dict(tree):
        structure, tensors = _tree.flatten(dict(tree), validate_dtype=check_dtype_for_safetensors)
        aliases = {k: v["$t"] for k, v in structure.items() if v["$t"] != k}
        if aliases:
            meta[ALIAS_KEY] = json.dumps(aliases, separators=(",", ":"))
    else:
        structure, tensors = _tree.flatten(tree, validate_dtype=check_dtype_for_safetensors)
        meta[TREE_KEY] = json.dumps(structure, separators=(",", ":"), allow_nan=False)
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str):
                raise TypeError(f"metadata keys must be str, got {k!r}")
            if isinstance(v, str) and not k.startswith("torchkeep") and k != "format":
                meta[k] = v
        meta[USER_KEY] = json.dumps(dict(metadata), separators=(",", ":"), default=_meta_default)
    return tensors, meta


def _meta_default(o: Any) -> Any:
    raise TypeError(f"metadata value {o!r} of type {type(o).__name__} is not JSON-serializable")


def write_tree(
    loc: Location,
    tree: Any,
    metadata: Mapping[str, Any] | None = None,
    *,
    fsync: bool = True,
    hook: Callable[[str, memoryview], None] | None = None,
) -> int:
    tensors, meta = encode_tree(tree, metadata)  # validates every tensor and dtype
    return _write_checked(loc, tensors, meta, fsync=fsync, hook=hook)


# -------------------------------------------------------------------------------- read
def read_tensors(
    src: ByteSource,
    header: Header,
    *,
    names: list[str] | None = None,
    map_location: MapLocation = "cpu",
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    device = resolve_device(map_location, "cpu", path=header.path)
    out: dict[str, torch.Tensor] = {}
    jobs = []
    for name in names if names is not None else list(header.entries):
        e = header.entries[name]
        t = torch.empty(e.shape, dtype=e.dtype)
        out[name] = t
        if e.end > e.begin:
            jobs.append((header.data_start + e.begin, t))
    read_jobs(src, jobs)
    return {k: finish_tensor(v, device, dtype) for k, v in out.items()}


@gc_paused
def decode_tree(header: Header, tensors: dict[str, torch.Tensor]) -> Any:
    meta = header.metadata
    if TREE_KEY in meta:
        structure = jsonio.loads(meta[TREE_KEY], what="torchkeep tree metadata", path=header.path, expect=None, max_depth=_TREE_DEPTH, fix=_FIX)
        return _tree.unflatten(structure, tensors, where=header.path)
    if ALIAS_KEY in meta:
        aliases = jsonio.loads(meta[ALIAS_KEY], what="torchkeep alias metadata", path=header.path, fix=_FIX)
        if not all(isinstance(v, str) for v in aliases.values()):
            raise CorruptCheckpointError(f"{header.path}: torchkeep alias metadata must map names to names; {_FIX}.")
        return _restore_aliases(header.path, tensors, aliases)
    return tensors


def _restore_aliases(path: str, tensors: dict[str, torch.Tensor], aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    out = dict(tensors)
    for k, target in aliases.items():
        if target not in tensors:
            raise CorruptCheckpointError(f"{path}: tied tensor {k!r} refers to missing {target!r}.")
        out[k] = tensors[target]
    return out


def user_metadata(meta: Mapping[str, str]) -> dict[str, Any]:
    """Metadata to show users: their own (decoded) plus foreign keys; not our internals."""
    out: dict[str, Any] = {k: v for k, v in meta.items() if not k.startswith("torchkeep")}
    if USER_KEY in meta:
        try:
            out.update(jsonio.loads(meta[USER_KEY], what="user metadata", path="", fix=_FIX))
        except CorruptCheckpointError:
            pass  # shown raw instead, under its own key
    return out


def read(src: ByteSource, *, map_location: MapLocation = "cpu", dtype: torch.dtype | None = None) -> Any:
    header = read_header(src)
    return decode_tree(header, read_tensors(src, header, map_location=map_location, dtype=dtype))


def tree_values(structure: Any) -> dict[str, Any]:
    """Non-tensor leaves of a tree structure by dotted path (for inspect)."""
    try:
        tree = _tree.unflatten(structure, _AnyTensor(), where="")
    except FormatError:
        return {}
    out: dict[str, Any] = {}

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, (list, tuple)) and not (node and all(isinstance(x, (int, float, str, bool, type(None))) for x in node)):
            for i, v in enumerate(node):
                walk(v, path + (i,))
        elif node is not _TENSOR:
            out[_tree.path_str(path)] = node if isinstance(node, (int, float, str, bool, type(None), list, tuple)) else repr(node)

    walk(tree, ())
    return out


_TENSOR = object()


class _AnyTensor(dict):  # every name resolves to a marker: values only, no data
    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: Any) -> Any:
        return _TENSOR


def inspect(src: ByteSource) -> CheckpointInfo:
    return header_info(read_header(src))


def header_info(header: Header) -> CheckpointInfo:
    """What :func:`inspect` reports, from a header already read."""
    info = CheckpointInfo(header.path, "safetensors", header.tensor_infos(), user_metadata(header.metadata), file_size=header.file_size)
    if TREE_KEY in header.metadata:
        try:
            info.values = tree_values(
                jsonio.loads(header.metadata[TREE_KEY], what="torchkeep tree metadata", path=header.path, expect=None, max_depth=_TREE_DEPTH)
            )
        except CorruptCheckpointError:
            pass  # inspect shows the tensors; load reports the damage
    return info
