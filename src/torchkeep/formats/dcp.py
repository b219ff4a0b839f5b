"""torch.distributed.checkpoint (DCP) folders, read without running anything in them.

Two layouts are read:

* **torch-save** (``dcp.save`` with the default ``FileSystemWriter``): ``.metadata`` is a
  pickle of ``torch.distributed.checkpoint.metadata.Metadata``; ``__<rank>_<n>.distcp``
  files hold one item after another at the offsets ``.metadata`` records. A tensor item is
  the bytes of ``torch.save(chunk)`` (a torch zip archive), a non-tensor item
  (``BytesStorageMetadata``) the bytes of ``torch.save(obj)``.
* **hf-safetensors** (``HuggingFaceStorageWriter(save_distributed=True)``, what torchkeep's
  Checkpointer writes under a process group): one ``shard-<rank>-model-*.safetensors`` per
  rank, each a plain safetensors file whose ``__metadata__["DCP_SHARDING_INFO"]`` gives
  every chunk's offset in the full tensor. No pickle at all.

Safety: ``.metadata`` goes through torchkeep's own pickle interpreter (``_unpickler``) with
an allowlist of the DCP metadata classes (plus ``torch.Size``, dtypes, layouts, paths); they
become inert placeholders that are converted to plain dataclasses here, field by field,
with every value type-checked. Any other global is refused with
:class:`~torchkeep.errors.UnsafePickleError` and nothing is imported or called. Items are
read with the torch-zip reader (same interpreter), never ``torch.load``.

Reading consolidates: every tensor is assembled from its chunks (which must tile it
exactly) into one full tensor, whatever world size wrote it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import torch

from .._io.fs import ByteSource, Location
from ..errors import CorruptCheckpointError, FormatError
from . import safetensors, torchzip
from ._base import CheckpointInfo, MapLocation, TensorInfo, dtype_name, finish_tensor, resolve_device
from ._dcp_metadata import (  # noqa: F401 - re-exported
    METADATA_NAME,
    SAVED_OFFSETS,
    SHARDING_KEY,
    Chunk,
    DcpMetadata,
    Item,
    TensorEntry,
    is_hf_dcp_dir,
    read_metadata,
)

__all__ = [
    "METADATA_NAME",
    "SHARDING_KEY",
    "DcpMetadata",
    "TensorEntry",
    "Chunk",
    "is_hf_dcp_dir",
    "read_metadata",
    "read_flat",
    "read",
    "inspect",
    "write",
]

# ----------------------------------------------------------------------------- items
class _RangeLoc:
    """What error messages and the torch-zip reader see as the 'location' of one item."""

    is_local = False

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class _RangeFile(io.RawIOBase):
    def __init__(self, src: ByteSource, start: int, size: int) -> None:
        self.src, self.start, self.size_, self.pos = src, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, off: int, whence: int = 0) -> int:
        self.pos = off if whence == 0 else self.pos + off if whence == 1 else self.size_ + off
        return self.pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self.size_ - self.pos))
        data = self.src.pread(self.start + self.pos, n) if n else b""
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


class _RangeSource:
    """A ByteSource over ``[start, start + size)`` of another one (one DCP item)."""

    _fd = None

    def __init__(self, src: ByteSource, start: int, size: int, text: str) -> None:
        self.src, self.start, self.size = src, start, size
        self.loc = _RangeLoc(text)

    def pread(self, offset: int, n: int) -> bytes:
        n = max(0, min(n, self.size - offset))
        return self.src.pread(self.start + offset, n)

    def readinto(self, offset: int, buf: memoryview) -> int:
        n = max(0, min(len(buf), self.size - offset))
        return self.src.readinto(self.start + offset, buf[:n]) if n else 0

    def fileobj(self) -> Any:
        return _RangeFile(self.src, self.start, self.size)


class _Files:
    """Open shard files, by name, for one read."""

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self.open: dict[str, ByteSource] = {}
        self.headers: dict[str, safetensors.Header] = {}

    def source(self, name: str) -> ByteSource:
        src = self.open.get(name)
        if src is None:
            try:
                src = self.open[name] = self.loc.join(name).open_source()
            except FileNotFoundError:
                raise CorruptCheckpointError(
                    f"{self.loc.join(name)}: missing; the DCP metadata lists it. The checkpoint is incomplete; use another one."
                ) from None
        return src

    def close(self) -> None:
        for s in self.open.values():
            s.close()


def _item_tree(files: _Files, it: Item, what: str) -> Any:
    src = files.source(it.file)
    if it.offset + it.length > src.size:
        raise CorruptCheckpointError(
            f"{files.loc.join(it.file)}: item {what} ends at byte {it.offset + it.length:,}, the file has {src.size:,}; truncated."
        )
    rs = _RangeSource(src, it.offset, it.length, f"{files.loc.join(it.file)}[{what} @ {it.offset}]")
    return torchzip.read(rs)  # type: ignore[arg-type] - same interface as ByteSource


def _chunk_tensor(meta: DcpMetadata, files: _Files, e: TensorEntry, c: Chunk) -> torch.Tensor:
    it = meta.items[(e.fqn, c.offsets)]
    what = f"{e.fqn!r} chunk {list(c.offsets)}"
    if meta.layout == "hf-safetensors":
        src = files.source(it.file)
        h = files.headers.get(it.file)
        if h is None:
            h = files.headers[it.file] = safetensors.read_header(src)
        t = safetensors.read_tensors(src, h, names=[e.fqn])[e.fqn]
    else:
        t = _item_tree(files, it, what)
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != c.sizes or t.dtype != e.dtype:
        desc = f"{type(t).__name__}" if not isinstance(t, torch.Tensor) else f"{dtype_name(t.dtype)}{list(t.shape)}"
        raise CorruptCheckpointError(
            f"{files.loc.join(it.file)}: {what} should be {dtype_name(e.dtype)}{list(c.sizes)}, holds {desc}; the checkpoint is damaged."
        )
    return t


def full_tensor(meta: DcpMetadata, files: _Files, e: TensorEntry) -> torch.Tensor:
    """The whole tensor, assembled from its chunks (which must not overlap)."""
    if len(e.chunks) == 1 and e.chunks[0].sizes == e.size:
        return _chunk_tensor(meta, files, e, e.chunks[0]).contiguous()
    out = torch.empty(e.size, dtype=e.dtype)
    seen = torch.zeros(e.size, dtype=torch.bool)
    for c in e.chunks:
        sl = tuple(slice(o, o + s) for o, s in zip(c.offsets, c.sizes))
        if bool(seen[sl].any()):
            raise CorruptCheckpointError(f"{meta.path}: chunks of {e.fqn!r} overlap at {list(c.offsets)}; the checkpoint is damaged.")
        seen[sl] = True
        out[sl] = _chunk_tensor(meta, files, e, c)
    return out


def read_flat(
    loc: Location,
    *,
    map_location: MapLocation = "cpu",
    dtype: torch.dtype | None = None,
    names: list[str] | None = None,
    meta: DcpMetadata | None = None,
) -> dict[str, Any]:
    """``flattened key -> full tensor or object`` (every chunk consolidated)."""
    meta = meta or read_metadata(loc)
    device = resolve_device(map_location, "cpu", path=str(loc))
    files = _Files(loc)
    out: dict[str, Any] = {}
    try:
        for fqn in names if names is not None else [*meta.tensors, *meta.objects]:
            e = meta.tensors.get(fqn)
            if e is not None:
                out[fqn] = finish_tensor(full_tensor(meta, files, e), device, dtype)
            elif fqn in meta.objects:
                out[fqn] = _item_tree(files, meta.items[(fqn, None)], repr(fqn))
            else:
                raise FormatError(f"{loc}: the checkpoint has no entry {fqn!r}.")
    finally:
        files.close()
    return out


def _nest(flat: Mapping[str, Any], paths: Mapping[str, tuple[Any, ...]]) -> dict[str, Any]:
    """Undo DCP's flattening (``planner_data``): str keys make dicts, int keys lists."""
    root: dict[str, Any] = {}
    for k, v in flat.items():
        path = paths.get(k, (k,))
        cur: Any = root
        for i in range(len(path) - 1):
            key, nxt = path[i], path[i + 1]
            empty: Any = {} if isinstance(nxt, str) else []
            if isinstance(cur, dict):
                if not isinstance(key, str):
                    raise CorruptCheckpointError(f"bad nesting path {path!r} in DCP planner data")
                cur = cur.setdefault(key, empty)
            else:
                if not isinstance(key, int) or key > 1 << 20:
                    raise CorruptCheckpointError(f"bad nesting path {path!r} in DCP planner data")
                while len(cur) <= key:
                    cur.append(None)
                if cur[key] is None:
                    cur[key] = empty
                cur = cur[key]
        last = path[-1]
        if isinstance(cur, dict) and isinstance(last, str):
            cur[last] = v
        elif isinstance(cur, list) and isinstance(last, int) and last <= 1 << 20:
            while len(cur) <= last:
                cur.append(None)
            cur[last] = v
        else:
            raise CorruptCheckpointError(f"bad nesting path {path!r} in DCP planner data")
    return root


def read(
    loc: Location,
    *,
    map_location: MapLocation = "cpu",
    dtype: torch.dtype | None = None,
    unsafe_pickle: bool = False,
) -> Any:
    """The checkpoint as the nested state dict it was saved from, tensors consolidated."""
    del unsafe_pickle  # items are read by the restricted reader in any case
    meta = read_metadata(loc)
    flat = read_flat(loc, map_location=map_location, dtype=dtype, meta=meta)
    if not meta.paths:
        return flat
    try:
        return _nest(flat, meta.paths)
    except CorruptCheckpointError as e:
        raise CorruptCheckpointError(f"{loc}: {e}; the metadata is damaged.") from None


def inspect(loc: Location) -> CheckpointInfo:
    meta = read_metadata(loc)
    tensors = [TensorInfo(e.fqn, e.size, dtype_name(e.dtype), e.nbytes) for e in meta.tensors.values()]
    size = 0
    for f in meta.files:
        try:
            size += loc.join(f).size()
        except FileNotFoundError:
            raise CorruptCheckpointError(f"{loc.join(f)}: missing; the DCP metadata lists it. The checkpoint is incomplete.") from None
    md: dict[str, Any] = {
        "dcp_layout": meta.layout,
        "files": meta.files,
        "chunks": sum(len(e.chunks) for e in meta.tensors.values()),
    }
    if meta.version:
        md["dcp_version"] = meta.version
    if meta.objects:
        md["objects"] = sorted(meta.objects)
    return CheckpointInfo(str(loc), "dcp", tensors, md, file_size=size)


def write(loc: Location, tree: Any) -> None:
    """Write ``tree`` (nested dicts/lists of tensors and plain values) as a DCP folder.

    Uses torch's own ``FileSystemWriter`` in this process (no process group needed), so the
    result is what ``dcp.save`` writes and ``dcp.load`` reads, at any world size.
    """
    import warnings

    import torch.distributed.checkpoint as dcp

    if not loc.is_local:
        raise FormatError(f"{loc}: DCP folders are written to local paths only; write locally and upload the folder.")
    if not isinstance(tree, Mapping):
        raise FormatError(f"{loc}: a DCP checkpoint is a dict at the top level; got {type(tree).__name__}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: saving in a single process"
        dcp.save(dict(tree), storage_writer=dcp.FileSystemWriter(loc.path))

