"""The table of contents of a torch.distributed.checkpoint folder, as plain data.

``.metadata`` (the torch-save layout) is a pickle: it is read by torchkeep's own interpreter
with an allowlist of DCP's metadata classes, which become inert placeholders converted here
field by field. The hf-safetensors layout has no pickle: its table comes from the shards'
headers. See :mod:`torchkeep.formats.dcp`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from .._io.fs import Location
from ..errors import CorruptCheckpointError, FormatError, UnsafePickleError
from . import _pickle_globals as G
from . import safetensors
from ._base import dtype_name
from ._pickled import Context
from ._unpickler import Placeholder, unpickle

__all__ = ["METADATA_NAME", "SHARDING_KEY", "SAVED_OFFSETS", "DcpMetadata", "TensorEntry", "Chunk", "Item", "is_hf_dcp_dir", "read_metadata"]

METADATA_NAME = ".metadata"
SHARDING_KEY = "DCP_SHARDING_INFO"
SAVED_OFFSETS = "saved_offsets"
_MAX_METADATA = 256 << 20
_HF_SHARD = re.compile(r"^shard-\d{5}-model-\d{5}-of-\d{5}\.safetensors$")
_MD = "torch.distributed.checkpoint.metadata"

# The only globals a DCP .metadata pickle may name (besides torch.Size, dtypes and layouts).
DCP_CLASSES = frozenset({
    (_MD, "Metadata"),
    (_MD, "TensorStorageMetadata"),
    (_MD, "BytesStorageMetadata"),
    (_MD, "ChunkStorageMetadata"),
    (_MD, "TensorProperties"),
    (_MD, "MetadataIndex"),
    (_MD, "StorageMeta"),
    (_MD, "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint._hf_utils", "_HFStorageInfo"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
})
_LAYOUTS = {"torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch._mkldnn", "torch.jagged"}


@dataclass(frozen=True)
class Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.sizes:
            n *= s
        return n


@dataclass
class TensorEntry:
    fqn: str
    dtype: torch.dtype
    size: tuple[int, ...]
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.size:
            n *= s
        return n * self.dtype.itemsize


@dataclass(frozen=True)
class Item:
    file: str
    offset: int = 0  # torch-save layout: byte range of the item in its .distcp file
    length: int = 0


@dataclass
class DcpMetadata:
    """A DCP checkpoint's table of contents, as plain data."""

    path: str
    layout: str  # "torch-save" | "hf-safetensors"
    tensors: dict[str, TensorEntry]
    objects: list[str]  # non-tensor entries (torch-save layout only)
    items: dict[tuple[str, tuple[int, ...] | None], Item]
    paths: dict[str, tuple[Any, ...]]  # flattened key -> nested path (planner_data)
    version: str | None = None

    @property
    def files(self) -> list[str]:
        return sorted({it.file for it in self.items.values()})


# ----------------------------------------------------------------------------- .metadata
class _MetadataContext(Context):
    """The unpickler's context for ``.metadata``: only the DCP classes resolve."""

    def find_global(self, module: str, name: str, pos: int) -> Any:
        mod = G.normalize_module(module)
        if (mod, name) in DCP_CLASSES:
            return _class_ref(self, mod, name)
        if (mod, name) == ("torch.serialization", "_get_layout"):
            return _LAYOUT_GLOBAL
        if (mod, name) in (("torch", "Size"), ("collections", "OrderedDict"), ("copyreg", "_reconstructor"),
                           ("copyreg", "__newobj__"), ("builtins", "set"), ("builtins", "frozenset"),
                           ("builtins", "object")) or (mod == "torch" and name in G.TORCH_DTYPES):
            return super().find_global(module, name, pos)
        if G.is_hostile(mod, name):
            return super().find_global(module, name, pos)  # raises UnsafePickleError naming it
        raise UnsafePickleError(
            f"{self.path}: refusing to load: the DCP metadata pickle names {module}.{name}, which a "
            f"torch.distributed.checkpoint .metadata file never contains (pickle byte {pos}). Nothing "
            f"from the file was run. The folder is damaged or crafted; load it only with torch's own "
            f"dcp.load if you trust its source."
        )


def _class_ref(ctx: Context, mod: str, name: str) -> Placeholder:
    path = f"{mod}.{name}"
    ref = ctx._refs.get(path)
    if ref is None:
        ref = ctx._refs[path] = Placeholder(path, kind="global")
    return ref


def _h_layout(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or len(args) != 1 or args[0] not in _LAYOUTS:
        raise G._bad(ctx, "torch.serialization._get_layout", args)
    return args[0]


_LAYOUT_GLOBAL = G.SafeGlobal("torch.serialization._get_layout", _h_layout)


def _is_obj(x: Any, name: str) -> bool:
    return isinstance(x, Placeholder) and x.kind == "object" and x.class_path.rsplit(".", 1)[-1] == name


def _attrs(x: Placeholder) -> dict[str, Any]:
    st = x.state
    if isinstance(st, tuple) and len(st) == 2 and isinstance(st[1], dict):  # (dict, slots)
        st = {**(st[0] or {}), **st[1]}
    return dict(st) if isinstance(st, dict) else {}


def _ints(x: Any, where: str, what: str) -> tuple[int, ...]:
    if isinstance(x, (tuple, list, torch.Size)) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in x):
        return tuple(int(v) for v in x)
    raise CorruptCheckpointError(f"{where}: {what} must be a list of non-negative ints, got {x!r:.100}; the metadata is damaged.")


def read_metadata(loc: Location) -> DcpMetadata:
    """The table of contents of a DCP folder (either layout), validated."""
    names = loc.listdir()
    if METADATA_NAME in names:
        return _torch_save_metadata(loc)
    if any(n.endswith(".safetensors") for n in names):
        return _hf_metadata(loc, names)
    raise FormatError(f"{loc}: not a torch.distributed.checkpoint folder (no .metadata and no *.safetensors shards).")


def _torch_save_metadata(loc: Location) -> DcpMetadata:
    mloc = loc.join(METADATA_NAME)
    where = str(mloc)
    size = mloc.size()
    if size > _MAX_METADATA:
        raise CorruptCheckpointError(f"{where}: {size:,} bytes is too large for DCP metadata; the file is damaged.")
    raw = mloc.read_bytes()
    if not raw:
        raise CorruptCheckpointError(f"{where}: empty; the save that wrote it was interrupted. Use an older checkpoint.")
    ctx = _MetadataContext(where)
    md = unpickle(raw, path=where, ctx=ctx, what="DCP metadata").value
    if not _is_obj(md, "Metadata"):
        raise CorruptCheckpointError(f"{where}: does not hold a DCP Metadata object (found {type(md).__name__}); the file is damaged.")
    a = _attrs(md)
    sdm = a.get("state_dict_metadata")
    if not isinstance(sdm, dict):
        raise CorruptCheckpointError(f"{where}: Metadata.state_dict_metadata is missing or not a dict; the file is damaged.")
    tensors: dict[str, TensorEntry] = {}
    objects: list[str] = []
    for fqn, m in sdm.items():
        if not isinstance(fqn, str):
            raise CorruptCheckpointError(f"{where}: a state_dict_metadata key is a {type(fqn).__name__}, not a str; damaged.")
        if _is_obj(m, "BytesStorageMetadata"):
            objects.append(fqn)
        elif _is_obj(m, "TensorStorageMetadata"):
            tensors[fqn] = _tensor_entry(fqn, _attrs(m), where)
        else:
            raise CorruptCheckpointError(f"{where}: entry {fqn!r} is a {m!r:.80}, not tensor or bytes metadata; damaged.")
    items: dict[tuple[str, tuple[int, ...] | None], Item] = {}
    sd = a.get("storage_data")
    if not isinstance(sd, dict):
        raise CorruptCheckpointError(f"{where}: Metadata.storage_data is missing; the checkpoint was not written by FileSystemWriter.")
    for k, v in sd.items():
        if not _is_obj(k, "MetadataIndex") or not _is_obj(v, "_StorageInfo"):
            raise CorruptCheckpointError(f"{where}: storage_data maps {k!r:.60} to {v!r:.60}; expected MetadataIndex -> _StorageInfo.")
        ka, va = _attrs(k), _attrs(v)
        fqn, off = ka.get("fqn"), ka.get("offset")
        if not isinstance(fqn, str):
            raise CorruptCheckpointError(f"{where}: a MetadataIndex has no fqn; damaged.")
        offt = None if off is None else _ints(off, where, f"offset of {fqn!r}")
        rel, start, length = va.get("relative_path"), va.get("offset"), va.get("length")
        if va.get("transform_descriptors"):
            raise FormatError(
                f"{where}: item {fqn!r} was written through stream transforms {va['transform_descriptors']!r} "
                f"(compression/encryption extensions), which torchkeep does not read. Convert it with torch's dcp tools."
            )
        if (not isinstance(rel, str) or "/" in rel or "\\" in rel or rel.startswith(".") or not isinstance(start, int)
                or not isinstance(length, int) or start < 0 or length < 0):
            raise CorruptCheckpointError(f"{where}: storage entry of {fqn!r} is malformed ({va!r:.120}); damaged.")
        items[(fqn, offt)] = Item(rel, start, length)
    paths: dict[str, tuple[Any, ...]] = {}
    pd = a.get("planner_data")
    if isinstance(pd, dict):
        for k, p in pd.items():
            if isinstance(k, str) and isinstance(p, (tuple, list)) and p and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in p):
                paths[k] = tuple(p)
    version = a.get("version") if isinstance(a.get("version"), str) else None
    meta = DcpMetadata(where.rsplit("/", 1)[0], "torch-save", tensors, objects, items, paths, version)
    _check_items(meta, where)
    return meta


def _tensor_entry(fqn: str, a: dict[str, Any], where: str) -> TensorEntry:
    props = a.get("properties")
    dtype = None
    if _is_obj(props, "TensorProperties"):
        st = props.state
        cand = st[0] if isinstance(st, tuple) and st else (st.get("dtype") if isinstance(st, dict) else None)
        if isinstance(cand, torch.dtype):
            dtype = cand
    if dtype is None:
        raise CorruptCheckpointError(f"{where}: tensor {fqn!r} has no dtype in its TensorProperties; damaged.")
    size = _ints(a.get("size"), where, f"size of {fqn!r}")
    chunks = a.get("chunks")
    if not isinstance(chunks, list):
        raise CorruptCheckpointError(f"{where}: tensor {fqn!r} has no chunk list; damaged.")
    out = []
    for c in chunks:
        if not _is_obj(c, "ChunkStorageMetadata"):
            raise CorruptCheckpointError(f"{where}: a chunk of {fqn!r} is {c!r:.60}; damaged.")
        ca = _attrs(c)
        out.append(Chunk(_ints(ca.get("offsets"), where, f"chunk offsets of {fqn!r}"), _ints(ca.get("sizes"), where, f"chunk sizes of {fqn!r}")))
    return TensorEntry(fqn, dtype, size, out)


def _check_items(meta: DcpMetadata, where: str) -> None:
    """Every chunk has an item, fits its tensor, and the chunks tile the tensor exactly."""
    problems = []
    for e in meta.tensors.values():
        total = 0
        for c in e.chunks:
            if len(c.offsets) != len(e.size) or len(c.sizes) != len(e.size) or any(
                o + s > n for o, s, n in zip(c.offsets, c.sizes, e.size)
            ):
                problems.append(f"chunk {list(c.offsets)}+{list(c.sizes)} of {e.fqn!r} lies outside its shape {list(e.size)}")
            elif (e.fqn, c.offsets) not in meta.items:
                problems.append(f"chunk at {list(c.offsets)} of {e.fqn!r} has no stored item")
            total += c.numel
        n = 1
        for s in e.size:
            n *= s
        if total != n:
            problems.append(f"the chunks of {e.fqn!r} hold {total:,} elements, its shape {list(e.size)} has {n:,}")
    for o in meta.objects:
        if (o, None) not in meta.items:
            problems.append(f"object entry {o!r} has no stored item")
    if problems:
        raise CorruptCheckpointError(
            f"{where}: inconsistent DCP checkpoint: " + "; ".join(problems[:10])
            + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "") + ". Use another checkpoint."
        )


def is_hf_dcp_dir(names: list[str]) -> bool:
    """A folder of DCP's Hugging Face layout (``shard-00001-model-00001-of-00001.safetensors``)."""
    return any(_HF_SHARD.match(n) for n in names)


def _hf_metadata(loc: Location, names: list[str]) -> DcpMetadata:
    files = sorted(n for n in names if n.endswith(".safetensors"))
    tensors: dict[str, TensorEntry] = {}
    items: dict[tuple[str, tuple[int, ...] | None], Item] = {}
    for n in files:
        with loc.join(n).open_source() as src:
            header = safetensors.read_header(src)
        info: dict[str, Any] = {}
        raw = header.metadata.get(SHARDING_KEY)
        where = str(loc.join(n))
        if raw is not None:
            try:
                info = json.loads(raw)
            except (ValueError, RecursionError):
                raise CorruptCheckpointError(f"{where}: {SHARDING_KEY} metadata is not valid JSON; the shard is damaged.") from None
            if not isinstance(info, dict):
                raise CorruptCheckpointError(f"{where}: {SHARDING_KEY} metadata is not an object; the shard is damaged.")
        for name, e in header.entries.items():
            shape = tuple(e.shape)
            rec = info.get(name)
            off = _ints(rec.get(SAVED_OFFSETS) if isinstance(rec, dict) else None, where, f"saved_offsets of {name!r}") if rec is not None else (0,) * len(shape)
            if len(off) != len(shape):
                raise CorruptCheckpointError(f"{where}: saved_offsets of {name!r} has {len(off)} dims, the tensor {len(shape)}; damaged.")
            ent = tensors.get(name)
            if ent is None:
                ent = tensors[name] = TensorEntry(name, e.dtype, tuple(o + s for o, s in zip(off, shape)))
            elif ent.dtype != e.dtype:
                raise CorruptCheckpointError(f"{where}: chunk of {name!r} is {dtype_name(e.dtype)}, another is {dtype_name(ent.dtype)}; damaged.")
            else:
                ent.size = tuple(max(a, o + s) for a, o, s in zip(ent.size, off, shape))
            if (name, off) in items:
                raise CorruptCheckpointError(f"{where}: chunk at {list(off)} of {name!r} is stored twice (also in {items[(name, off)].file}).")
            ent.chunks.append(Chunk(off, shape))
            items[(name, off)] = Item(n)
    meta = DcpMetadata(str(loc), "hf-safetensors", tensors, [], items, {}, None)
    _check_items(meta, str(loc))
    return meta
