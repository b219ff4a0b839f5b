"""torch zip checkpoints (``torch.save`` since 1.6) and TorchScript archives: read, inspect, write.

Reading never calls ``torch.load``: the zip's central directory is parsed by ``zipfile``
(names and sizes only), ``data.pkl`` goes through torchkeep's restricted unpickler, and each
storage's bytes are read straight from its offset in the archive (records are stored
uncompressed; torch aligns them to 64 bytes) into the tensor's memory, after its size has
been checked against the record and the file.

Writing uses ``torch.save`` on a tree checked by ``_tree.flatten`` (tensors, containers and
plain leaves only), so ``torch.load(weights_only=True)`` reads the file. ``metadata`` goes
into an extra record ``<archive>/torchkeep/metadata.json``, which torch ignores.

``unsafe_pickle=True`` is the explicit opt-in to ``torch.load(weights_only=False)`` (and
``torch.jit.load`` for TorchScript): it runs whatever code the file holds; only for files
you trust.
"""

from __future__ import annotations

import collections
import io
import json
import re
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._io import jsonio
from .._io.fastio import read_jobs
from .._io.fs import ByteSource, Location, atomic_write
from ..errors import CorruptCheckpointError, FormatError, UnsupportedTypeError
from . import _tree
from ._base import CheckpointInfo, MapLocation
from ._pickled import Context, Storage
from ._pickled_tree import convert_modules, summarize
from ._unpickler import Placeholder, unpickle

__all__ = ["read", "read_raw", "inspect", "write", "read_torchscript", "inspect_torchscript", "Archive", "METADATA_RECORD"]

METADATA_RECORD = "torchkeep/metadata.json"
_MAX_PICKLE = 1 << 30
_MAX_CODE = 64 << 20


@dataclass
class Record:
    name: str
    header_offset: int
    size: int  # stored (compressed) size
    limit: int  # where the next record (or the central directory) starts
    compressed: bool = False
    file_size: int = 0


class Archive:
    """The records of a torch zip file, with their data offsets checked against the file."""

    def __init__(self, src: ByteSource) -> None:
        self.src = src
        self.path = str(src.loc)
        try:
            with src.fileobj() as f, zipfile.ZipFile(f) as z:
                infos = z.infolist()
                start_dir = int(getattr(z, "start_dir", src.size))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error, NotImplementedError, UnicodeDecodeError) as e:
            raise CorruptCheckpointError(
                f"{self.path}: torch zip archive cannot be opened ({e}); it is truncated or damaged. Re-download or re-save it."
            ) from None
        problems: list[str] = []
        spans = sorted(infos, key=lambda i: i.header_offset)
        self.records: dict[str, Record] = {}
        for i, info in enumerate(spans):
            limit = spans[i + 1].header_offset if i + 1 < len(spans) else min(start_dir, src.size)
            if info.header_offset < 0 or info.compress_size < 0:
                problems.append(f"{info.filename!r} has a negative offset or size")
            elif info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                problems.append(f"{info.filename!r} uses an unsupported compression")
            elif info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                problems.append(f"{info.filename!r} has inconsistent sizes")
            elif info.header_offset + 30 + len(info.orig_filename.encode()) + info.compress_size > limit:
                problems.append(f"{info.filename!r} ({info.compress_size:,} bytes) overlaps the next record or runs past the end of the file")
            else:
                self.records[info.filename] = Record(
                    info.filename, info.header_offset, info.compress_size, limit,
                    info.compress_type != zipfile.ZIP_STORED, info.file_size,
                )
        if problems:
            raise CorruptCheckpointError(
                f"{self.path}: damaged torch zip archive: " + "; ".join(problems[:10])
                + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "") + ". Re-download or re-save it."
            )
        pkls = sorted((n for n in self.records if n == "data.pkl" or n.endswith("/data.pkl")), key=lambda n: (n.count("/"), n))
        if not pkls:
            raise FormatError(f"{self.path}: zip archive has no data.pkl; it is not a torch checkpoint.")
        self.prefix = pkls[0][: -len("data.pkl")]

    def has(self, name: str) -> bool:
        return self.prefix + name in self.records

    def record(self, name: str) -> Record:
        rec = self.records.get(self.prefix + name)
        if rec is None:
            raise CorruptCheckpointError(
                f"{self.path}: record {self.prefix + name!r} is missing from the archive; the file is "
                f"incomplete or damaged. Re-download or re-save it."
            )
        if rec.compressed and not name.startswith("code/"):
            raise CorruptCheckpointError(f"{self.path}: record {rec.name!r} is compressed; torch stores data uncompressed, so the file is damaged.")
        return rec

    def data_offset(self, rec: Record) -> int:
        head = self.src.pread(rec.header_offset, 30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise CorruptCheckpointError(f"{self.path}: local header of {rec.name!r} is damaged; re-download or re-save the file.")
        n, e = struct.unpack("<HH", head[26:30])
        off = rec.header_offset + 30 + n + e
        if off + rec.size > rec.limit:
            raise CorruptCheckpointError(f"{self.path}: record {rec.name!r} runs past the next record or the end of the file; the file is damaged.")
        return off

    def read_record(self, name: str, limit: int = _MAX_PICKLE) -> bytes:
        rec = self.record(name)
        if rec.size > limit:
            raise CorruptCheckpointError(f"{self.path}: record {rec.name!r} claims {rec.size:,} bytes; too large, the file is damaged.")
        data = self.src.pread(self.data_offset(rec), rec.size)
        if len(data) != rec.size:
            raise CorruptCheckpointError(f"{self.path}: record {rec.name!r} is truncated; re-download or re-save the file.")
        if rec.compressed:
            try:
                d = zlib.decompressobj(-15)
                data = d.decompress(data, limit)
            except zlib.error as e:
                raise CorruptCheckpointError(f"{self.path}: record {rec.name!r} does not decompress ({e}); the file is damaged.") from None
        return data

    def check_byteorder(self) -> None:
        if self.has("byteorder") and self.read_record("byteorder", 16).strip() not in (b"little", b""):
            raise FormatError(
                f"{self.path}: this checkpoint was saved on a big-endian machine, which torchkeep does "
                f"not convert. Load it with tk.load(path, unsafe_pickle=True) if you trust it."
            )


def _persistent_loader(archive: Archive, pending: list[tuple[int, torch.Tensor]] | None = None) -> Any:
    """Storages by key. ``pending``: collect ``(offset, buffer)`` instead of reading each
    storage as the pickle names it, so the caller reads them all in one coalesced (and, on
    object stores, parallel) pass once the pickle is done. Only for CPU loads without a
    dtype cast, where nothing looks at a storage's bytes before the pass."""
    storages: dict[str, Storage] = {}

    def load(ctx: Context, pid: Any) -> Storage:
        p = ctx.parse_pid(pid)
        st = storages.get(p.key)
        if st is not None:
            return st
        rec = archive.record(f"data/{p.key}")
        nbytes = p.numel * p.dtype.itemsize
        if nbytes > rec.size:
            raise CorruptCheckpointError(
                f"{archive.path}: storage {p.key!r} claims {nbytes:,} bytes but its record holds "
                f"{rec.size:,}; the file is damaged. Re-download or re-save it."
            )
        buf = None
        if ctx.materialize:
            off = archive.data_offset(rec)
            buf = torch.empty(nbytes, dtype=torch.uint8)
            if nbytes and pending is not None:
                pending.append((off, buf))
            elif nbytes:
                read_jobs(archive.src, [(off, buf)])
            buf = ctx.place(buf, p.location)
        st = storages[p.key] = Storage(p.key, p.dtype, nbytes, p.location, buf)
        return st

    return load


def _is_cpu(map_location: MapLocation) -> bool:
    if map_location is None:
        return True
    if isinstance(map_location, (str, torch.device)):
        try:
            return torch.device(map_location).type == "cpu"
        except (RuntimeError, TypeError, ValueError):
            return False
    return False


def _unpickle_archive(src: ByteSource, *, materialize: bool, map_location: MapLocation, dtype: torch.dtype | None) -> tuple[Archive, Any]:
    archive = Archive(src)
    archive.check_byteorder()
    from . import legacy  # storages pickled through plain pickle inside data.pkl

    pending: list[tuple[int, torch.Tensor]] | None = [] if materialize and dtype is None and _is_cpu(map_location) else None
    ctx = Context(
        archive.path,
        persistent_load=_persistent_loader(archive, pending),
        load_from_bytes=legacy.load_from_bytes,
        materialize=materialize,
        map_location=map_location,
        dtype=dtype,
    )
    data = archive.read_record("data.pkl")
    value = unpickle(data, path=archive.path, ctx=ctx, what="data.pkl").value
    if pending:
        read_jobs(archive.src, sorted(pending, key=lambda j: j[0]))
    return archive, value


def _unsafe(src: ByteSource, map_location: MapLocation, dtype: torch.dtype | None, *, script: bool = False) -> Any:
    with src.fileobj() as f:
        if script:
            m = torch.jit.load(f, map_location=map_location)
            tree: Any = dict(m.state_dict())
        else:
            tree = torch.load(f, map_location=map_location, weights_only=False)
    return cast_tree(tree, dtype)


def cast_tree(tree: Any, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return tree
    if isinstance(tree, torch.Tensor):
        return tree.to(dtype) if tree.is_floating_point() else tree
    if isinstance(tree, dict):
        out = collections.OrderedDict() if isinstance(tree, collections.OrderedDict) else {}
        for k, v in tree.items():
            out[k] = cast_tree(v, dtype)
        return out
    if isinstance(tree, list):
        return [cast_tree(v, dtype) for v in tree]
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return tuple(cast_tree(v, dtype) for v in tree)
    return tree


def read(src: ByteSource, *, map_location: MapLocation = "cpu", dtype: torch.dtype | None = None, unsafe_pickle: bool = False) -> Any:
    """The tree saved; pickled ``nn.Module`` s become their state dicts."""
    if unsafe_pickle:
        return _unsafe(src, map_location, dtype)
    _, tree = _unpickle_archive(src, materialize=True, map_location=map_location, dtype=dtype)
    return convert_modules(tree, path=str(src.loc))


def read_raw(src: ByteSource, *, map_location: MapLocation = "cpu") -> Any:
    """The tree with module placeholders kept as they are (tensors decoded)."""
    return _unpickle_archive(src, materialize=True, map_location=map_location, dtype=None)[1]


def _metadata(archive: Archive) -> dict[str, Any]:
    if not archive.has(METADATA_RECORD):
        return {}
    try:
        return jsonio.loads(archive.read_record(METADATA_RECORD, 16 << 20), what="torchkeep metadata record", path=archive.path)
    except CorruptCheckpointError:
        return {}  # metadata is informational; the tensors still load


def inspect(src: ByteSource) -> CheckpointInfo:
    archive, tree = _unpickle_archive(src, materialize=False, map_location="cpu", dtype=None)
    tensors, values, placeholders = summarize(convert_modules(tree, path=str(src.loc)))
    return CheckpointInfo(archive.path, "torch-zip", tensors, _metadata(archive), values, placeholders, src.size)


# ----------------------------------------------------------------------------- TorchScript
_CLASS = re.compile(r"^class (\w+)\((\w+)\):\s*$")
_LIST = re.compile(r"^  (__parameters__|__buffers__) = (\[.*\])\s*$")
_NAME_LIST = re.compile(r"\[\s*(?:\"[\w.]*\"\s*,\s*)*(?:\"[\w.]*\"\s*,?\s*)?\]")
_NAME = re.compile(r"\"([\w.]*)\"")


def _name_list(text: str) -> list[str]:
    """The names of a ``["weight", "bias", ]`` list as TorchScript writes it; anything else
    (a damaged or hostile line) gives no names. Matched, not parsed: no compiler involved."""
    if not _NAME_LIST.fullmatch(text):
        return []
    return _NAME.findall(text)


def script_classes(archive: Archive) -> dict[str, tuple[list[str], list[str]]]:
    """Module classes of the archive's code: class path -> (parameter names, buffer names).

    The code is read as text and never run: only the ``__parameters__`` / ``__buffers__``
    lists TorchScript writes in each class body are parsed (as literals).
    """
    out: dict[str, tuple[list[str], list[str]]] = {}
    code = archive.prefix + "code/"
    total = 0
    for name, rec in archive.records.items():
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        total += rec.size
        if total > _MAX_CODE:
            break
        module = name[len(code) : -3].replace("/", ".")
        current: str | None = None
        for line in archive.read_record(name[len(archive.prefix) :], _MAX_CODE).decode("utf-8", "replace").splitlines():
            m = _CLASS.match(line)
            if m:
                current = f"{module}.{m.group(1)}" if m.group(2) == "Module" else None
                if current:
                    out[current] = ([], [])
                continue
            m = _LIST.match(line)
            if m and current:
                out[current][0 if m.group(1) == "__parameters__" else 1].extend(_name_list(m.group(2)))
    return out


def script_state_dict(p: Placeholder, classes: Mapping[str, tuple[list[str], list[str]]]) -> dict[str, Any] | None:
    """``scripted.state_dict()`` from a ``__torch__`` placeholder: parameters, buffers, submodules."""
    if p.class_path not in classes or not isinstance(p.state, dict):
        return None
    out: dict[str, Any] = {}
    seen: set[int] = set()

    def visit(m: Placeholder, prefix: str) -> None:
        if id(m) in seen:  # a cycle; shared submodules appear under every name, like state_dict()
            return
        seen.add(id(m))
        params, buffers = classes[m.class_path]
        st = m.state
        for n in params + buffers:
            v = st.get(n)
            if isinstance(v, torch.Tensor) or hasattr(v, "storage_key"):
                out[prefix + n] = v.detach() if isinstance(v, torch.Tensor) else v
        for k, v in st.items():
            if isinstance(v, Placeholder) and v.class_path in classes and isinstance(v.state, dict):
                visit(v, f"{prefix}{k}.")
        seen.discard(id(m))

    visit(p, "")
    return out


def _script_tree(src: ByteSource, *, materialize: bool, map_location: MapLocation, dtype: torch.dtype | None) -> tuple[Archive, dict[str, Any]]:
    archive, tree = _unpickle_archive(src, materialize=materialize, map_location=map_location, dtype=dtype)
    classes = script_classes(archive)
    try:
        sd = script_state_dict(tree, classes) if isinstance(tree, Placeholder) else None
    except RecursionError:
        raise FormatError(f"{archive.path}: TorchScript modules are nested too deeply to be read safely.") from None
    if sd is None:
        raise FormatError(
            f"{archive.path}: TorchScript archive whose top object ({tree!r:.80}) is not a scripted "
            f"module; nothing to load as weights."
        )
    return archive, sd


def read_torchscript(src: ByteSource, *, map_location: MapLocation = "cpu", dtype: torch.dtype | None = None, unsafe_pickle: bool = False) -> dict[str, Any]:
    """The parameters and buffers of a TorchScript module, keyed like ``scripted.state_dict()``."""
    if unsafe_pickle:
        return _unsafe(src, map_location, dtype, script=True)
    return _script_tree(src, materialize=True, map_location=map_location, dtype=dtype)[1]


def inspect_torchscript(src: ByteSource) -> CheckpointInfo:
    archive, sd = _script_tree(src, materialize=False, map_location="cpu", dtype=None)
    tensors, values, placeholders = summarize(sd)
    return CheckpointInfo(archive.path, "torchscript", tensors, _metadata(archive), values, placeholders, src.size)


# ---------------------------------------------------------------------------------- write
def _torch_tree(x: Any) -> Any:
    """What torch.save gets: numpy arrays become tensors and numpy scalars Python numbers
    (``torch.load(weights_only=True)`` refuses numpy objects)."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Mapping):
        return {k: _torch_tree(v) for k, v in x.items()} if any(isinstance(v, (np.ndarray, np.generic, Mapping, list, tuple)) for v in x.values()) else x
    if isinstance(x, list):
        return [_torch_tree(v) for v in x]
    if isinstance(x, tuple) and not isinstance(x, torch.Size):
        return tuple(_torch_tree(v) for v in x)
    if isinstance(x, torch.Tensor):
        return x.detach()
    return x


def write(loc: Location, tree: Any, *, metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``tree`` as a torch zip file readable by ``torch.load(weights_only=True)``; atomic."""
    _tree.flatten(tree)  # UnsupportedTypeError naming the key for anything but plain data
    obj = _torch_tree(tree)
    meta = b""
    if metadata:
        try:
            meta = json.dumps(dict(metadata), separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as e:
            raise UnsupportedTypeError(f"metadata for {loc} is not JSON-serializable ({e}); pass str/int/float/bool/list/dict values.") from None
    local_tmp: str | None = None
    with atomic_write(loc) as f:
        if meta and not (loc.is_local and isinstance(getattr(f, "name", None), str)):
            buf = io.BytesIO()
            torch.save(obj, buf)
            _append_record(buf, meta)
            f.write(buf.getvalue())
        else:
            _torch_save(obj, f)
            if meta:
                local_tmp = f.name
                with open(local_tmp, "r+b") as g:  # noqa: PTH123 - the temporary file of atomic_write
                    _append_record(g, meta)


def _torch_save(obj: Any, f: Any) -> None:
    """``torch.save`` to a file; a write error (ENOSPC, EIO) comes out as that OSError. (torch's
    zip writer masks it: closing the archive after the failed write raises RuntimeError.)"""
    try:
        torch.save(obj, f)
    except RuntimeError as e:
        cause = e.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        raise cause from None


def _append_record(f: Any, meta: bytes) -> None:
    f.seek(0)
    with zipfile.ZipFile(f, "a") as z:
        prefix = z.namelist()[0].split("/", 1)[0] + "/" if "/" in z.namelist()[0] else ""
        z.writestr(zipfile.ZipInfo(prefix + METADATA_RECORD, date_time=(1980, 1, 1, 0, 0, 0)), meta, compress_type=zipfile.ZIP_STORED)
