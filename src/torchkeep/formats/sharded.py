"""Hugging Face sharded folders: ``*.safetensors`` / ``pytorch_model-*.bin`` + an index JSON.

Read: the index's ``weight_map`` says which shard holds each tensor; shards of any format
torchkeep reads are accepted. A folder with one ``model.safetensors`` and no index is read as
that file. Write: shards of at most ``max_shard_size`` bytes (a tensor larger than that gets
a shard of its own, as in transformers) plus ``model.safetensors.index.json``, written
last. A new folder is built under a temporary name and renamed into place; an existing
folder keeps its other files (config.json, tokenizer) and gets its shards replaced: a new
folder is built beside it with hard links to those files and swapped in with one
``renameat2(RENAME_EXCHANGE)`` (where the filesystem cannot swap, a rename transaction that
rolls back on errors, though not on a kill). On
object stores (``s3://``) the index, uploaded last, is the commit marker.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from typing import Any

import torch

from .._io import jsonio
from .._io.fs import Location, atomic_write, fsync_dir, write_error
from .._units import parse_size
from ..errors import CorruptCheckpointError, FormatError
from . import _tree, safetensors
from ._base import CheckpointInfo, MapLocation, check_dtype_for_safetensors
from ._detect import INDEX_NAMES, SINGLE_NAMES

__all__ = ["read", "inspect", "write", "find_index"]

INDEX_NAME = "model.safetensors.index.json"
_MAX_INDEX = 64 << 20


def find_index(loc: Location) -> tuple[Location, Location | None]:
    """(folder, index file or None when the folder holds a single weights file)."""
    if not loc.isdir():
        return loc.parent, loc
    names = loc.listdir()
    for n in INDEX_NAMES:
        if n in names:
            return loc, loc.join(n)
    idx = [n for n in names if n.endswith(".index.json")]
    if len(idx) == 1:
        return loc, loc.join(idx[0])
    if len(idx) > 1:
        raise FormatError(f"{loc}: several index files ({', '.join(idx)}); pass the one to use.")
    return loc, None


def _single_file(folder: Location) -> Location:
    names = folder.listdir()
    for n in SINGLE_NAMES:
        if n in names:
            return folder.join(n)
    st = [n for n in names if n.endswith(".safetensors")]
    if len(st) == 1:
        return folder.join(st[0])
    raise FormatError(f"{folder}: {len(st)} *.safetensors files and no index JSON; pass the file to load.")


def read_index(index: Location) -> tuple[dict[str, str], dict[str, Any]]:
    if index.size() > _MAX_INDEX:
        raise CorruptCheckpointError(f"{index}: index file is {index.size():,} bytes; not a Hugging Face index.")
    data = jsonio.loads(index.read_bytes(), what="index", path=index, fix="the folder is damaged; download or save it again")
    wm = data.get("weight_map")
    if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise CorruptCheckpointError(f"{index}: index has no valid 'weight_map' (name -> shard file).")
    for shard in set(wm.values()):
        if "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            raise CorruptCheckpointError(f"{index}: shard name {shard!r} points outside the folder; refused.")
    meta = data.get("metadata") or {}
    return wm, meta if isinstance(meta, dict) else {}


def _shards(folder: Location, wm: dict[str, str], index: Location) -> dict[str, list[str]]:
    by_shard: dict[str, list[str]] = {}
    for name, shard in wm.items():
        by_shard.setdefault(shard, []).append(name)
    missing = [s for s in by_shard if not folder.join(s).exists()]
    if missing:
        raise CorruptCheckpointError(
            f"{index}: shard file(s) missing from {folder}: {', '.join(sorted(missing))}. Download the complete folder."
        )
    return by_shard


def read(loc: Location, *, map_location: MapLocation = "cpu", dtype: torch.dtype | None = None, unsafe_pickle: bool = False) -> Any:
    from . import read_any  # shards may be of any format

    folder, index = find_index(loc)
    if index is None:
        return read_any(_single_file(folder), map_location=map_location, dtype=dtype, unsafe_pickle=unsafe_pickle)
    wm, meta = read_index(index)
    tensors: dict[str, Any] = {}
    for shard, names in _shards(folder, wm, index).items():
        part = read_any(folder.join(shard), map_location=map_location, dtype=dtype, unsafe_pickle=unsafe_pickle)
        if not isinstance(part, Mapping):
            raise CorruptCheckpointError(f"{folder.join(shard)}: shard does not hold a flat state dict.")
        absent = [n for n in names if n not in part]
        if absent:
            raise CorruptCheckpointError(
                f"{folder.join(shard)}: index lists tensors this shard lacks: {', '.join(absent[:10])}"
                + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
            )
        for n in names:
            tensors[n] = part[n]
    if safetensors.TREE_KEY in meta:
        return _tree.unflatten(meta[safetensors.TREE_KEY], tensors, where=str(index))
    return {n: tensors[n] for n in wm}


def inspect(loc: Location) -> CheckpointInfo:
    from . import inspect_any

    folder, index = find_index(loc)
    if index is None:
        info = inspect_any(_single_file(folder))
        info.path = str(loc)
        return info
    wm, meta = read_index(index)
    info = CheckpointInfo(str(folder), "hf-sharded", metadata={k: v for k, v in meta.items() if not k.startswith("torchkeep")})
    for shard in _shards(folder, wm, index):
        part = inspect_any(folder.join(shard))
        info.tensors.extend(
            type(t)(t.name, t.shape, t.dtype, t.nbytes, shard) for t in part.tensors if wm.get(t.name) == shard
        )
        info.file_size += part.file_size
        info.placeholders.extend(part.placeholders)
    if safetensors.TREE_KEY in meta:
        info.values = safetensors.tree_values(meta[safetensors.TREE_KEY])
    return info


def plan_shards(tensors: Mapping[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Greedy, in key order: start a new shard when the next tensor would overflow this one."""
    shards: list[list[str]] = [[]]
    size = 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += n
    return shards


def write(loc: Location, tree: Any, *, max_shard_size: int | str, metadata: Mapping[str, Any] | None = None, fsync: bool = True) -> None:
    max_bytes = parse_size(max_shard_size)
    flat = _tree.is_flat_state_dict(tree)
    structure, tensors = _tree.flatten(dict(tree) if flat else tree, validate_dtype=check_dtype_for_safetensors)
    plan = plan_shards(tensors, max_bytes)
    n = len(plan)
    final = os.path.abspath(loc.path)
    if os.path.exists(final) and not os.path.isdir(final):
        raise FormatError(f"{final} exists and is a file; a sharded checkpoint is a folder. Pick another path.")
    index_meta: dict[str, Any] = {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}
    if not flat or any(v["$t"] != k for k, v in structure.items()):
        index_meta[safetensors.TREE_KEY] = structure  # nested tree, or tied keys to restore
    if metadata:
        index_meta.update({k: v for k, v in metadata.items() if k not in index_meta})
    shard_names = [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    weight_map = {k: shard for shard, names in zip(shard_names, plan) for k in names}
    index_bytes = json.dumps({"metadata": index_meta, "weight_map": weight_map}, indent=2, allow_nan=False).encode()
    if not loc.is_local:
        _write_object_store(loc, plan, shard_names, tensors, index_bytes)
        return
    try:
        if os.path.isdir(final) and _can_exchange(os.path.dirname(final)):
            _write_exchanged(final, plan, shard_names, tensors, index_bytes, fsync)
        elif os.path.isdir(final):
            _write_into_existing(final, plan, shard_names, tensors, index_bytes, fsync)
        else:
            _write_new(final, plan, shard_names, tensors, index_bytes, fsync)
    except OSError as e:
        if type(e).__module__ != "builtins":  # torchkeep's own errors already say what and where
            raise
        orig = e.__cause__ if isinstance(e.__cause__, OSError) else e  # atomic_write named its temp file
        raise write_error(orig, final) from orig


def _write_new(
    final: str, plan: list[list[str]], shard_names: list[str], tensors: Mapping[str, torch.Tensor], index_bytes: bytes, fsync: bool
) -> None:
    """A new folder: written complete under a temporary name, then renamed into place."""
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        _write_files(tmp, plan, shard_names, tensors, index_bytes, fsync)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if fsync:
        fsync_dir(parent)


def _write_files(folder: str, plan: list[list[str]], shard_names: list[str], tensors: Mapping[str, torch.Tensor], index_bytes: bytes, fsync: bool) -> None:
    for shard, names in zip(shard_names, plan):
        safetensors.write(Location(os.path.join(folder, shard)), {k: tensors[k] for k in names}, {"format": "pt"}, fsync=fsync, atomic=False)
    _write_small(os.path.join(folder, INDEX_NAME), index_bytes, fsync)


# -- swapping whole folders (Linux renameat2 RENAME_EXCHANGE) --------------------------
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2: Any = None
_exchange_ok: dict[int, bool] = {}  # st_dev -> whether that filesystem swaps folders


def _renameat2_exchange(a: str, b: str) -> None:
    """Swap two paths in one step: at every moment each name is one complete folder."""
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            _renameat2 = (fn, ctypes)
        except (OSError, AttributeError):
            _renameat2 = False
    if not _renameat2:
        raise OSError(errno.ENOSYS, "renameat2 is not available", b)
    fn, ctypes = _renameat2
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), b)


_exchange = _renameat2_exchange  # the commit's call site (fault-injection tests patch it)


def _can_exchange(parent: str) -> bool:
    """Whether folders in ``parent`` can be swapped atomically (probed once per filesystem)."""
    try:
        dev = os.stat(parent).st_dev
    except OSError:
        return False
    if dev not in _exchange_ok:
        tag = uuid.uuid4().hex[:8]
        a, b = (os.path.join(parent, f".torchkeep-probe-{tag}-{x}") for x in "ab")
        try:
            os.mkdir(a)
            os.mkdir(b)
            _renameat2_exchange(a, b)
            _exchange_ok[dev] = True
        except OSError:
            _exchange_ok[dev] = False
        finally:
            for d in (a, b):
                _quiet(os.rmdir, d)
    return _exchange_ok[dev]


def _link_tree(src: str, dst: str, skip: set[str]) -> None:
    """Recreate ``src``'s entries (but ``skip``, top level only) in ``dst`` as hard links
    (copies where a link is refused); symlinks stay symlinks, folders are recreated."""
    with os.scandir(src) as it:
        for e in it:
            if e.name in skip:
                continue
            to = os.path.join(dst, e.name)
            if e.is_symlink():
                os.symlink(os.readlink(e.path), to)
            elif e.is_dir():
                os.mkdir(to)
                _link_tree(e.path, to, set())
                shutil.copystat(e.path, to)
            else:
                try:
                    os.link(e.path, to)
                except OSError:
                    shutil.copy2(e.path, to)


def _write_exchanged(
    final: str, plan: list[list[str]], shard_names: list[str], tensors: Mapping[str, torch.Tensor], index_bytes: bytes, fsync: bool
) -> None:
    """Update a folder that holds other files too (config.json, tokenizer), crash-safe.

    The new folder is built complete beside the old one: the new shards and index, and
    hard links to every other file. Then the two folders are swapped in one step
    (``renameat2(RENAME_EXCHANGE)``) and the old one, now under the temporary name, is
    deleted. A failure or a kill at any moment leaves ``final`` the old complete folder or
    the new complete one; the only leftover is a ``.NAME.tmp-XXXXXXXX`` folder.
    """
    parent = os.path.dirname(final)
    tmp = os.path.join(parent, f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    old = {INDEX_NAME, *shard_names}
    index_path = os.path.join(final, INDEX_NAME)
    if os.path.exists(index_path):
        try:
            old |= {n for n in read_index(Location(index_path))[0].values() if "/" not in n}
        except CorruptCheckpointError:
            pass
    os.mkdir(tmp)
    try:
        _link_tree(final, tmp, old)
        shutil.copystat(final, tmp)
        _write_files(tmp, plan, shard_names, tensors, index_bytes, fsync)
        if fsync:
            fsync_dir(tmp)
        _exchange(tmp, final)  # the commit
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if fsync:
        fsync_dir(parent)
    shutil.rmtree(tmp, ignore_errors=True)  # the old folder


def _write_small(path: str, data: bytes, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _write_into_existing(
    final: str, plan: list[list[str]], shard_names: list[str], tensors: Mapping[str, torch.Tensor], index_bytes: bytes, fsync: bool
) -> None:
    """Update a folder that holds other files too, where folders cannot be swapped, as one transaction.

    Every new file is written (and fsynced) under a temporary name first. Then the old index
    and the old shards the new ones replace are renamed aside, the new shards renamed into
    place and the new index last (the commit). A failure at any step before the commit puts
    the set-aside files back: the folder holds the old checkpoint, unchanged, and no
    temporary file. After the commit the set-aside files and stale shards are deleted.
    """
    tag = uuid.uuid4().hex[:8]
    index_path = os.path.join(final, INDEX_NAME)
    staged = [(os.path.join(final, f".{s}.tmp-{tag}"), os.path.join(final, s)) for s in shard_names]
    staged_index = os.path.join(final, f".{INDEX_NAME}.tmp-{tag}")
    aside: list[tuple[str, str]] = []  # (original name, set-aside name)
    placed: list[tuple[str, str]] = []  # (temporary name, final name) renamed into place
    stale: set[str] = set()
    try:
        for (tmp, _), names in zip(staged, plan):
            safetensors.write(Location(tmp), {k: tensors[k] for k in names}, {"format": "pt"}, fsync=fsync, atomic=False)
        _write_small(staged_index, index_bytes, fsync)
        if os.path.exists(index_path):
            try:
                stale = set(read_index(Location(index_path))[0].values())
            except CorruptCheckpointError:
                stale = set()
        for path in [index_path] + [dst for _, dst in staged]:
            if os.path.lexists(path):
                side = os.path.join(final, f".{os.path.basename(path)}.old-{tag}")
                os.replace(path, side)
                aside.append((path, side))
        for tmp, dst in staged:
            os.replace(tmp, dst)
            placed.append((tmp, dst))
        os.replace(staged_index, index_path)  # the commit
    except BaseException:
        for tmp, dst in reversed(placed):
            _quiet(os.replace, dst, tmp)
        for path, side in reversed(aside):
            _quiet(os.replace, side, path)
        for tmp, _ in staged:
            _quiet(os.unlink, tmp)
        _quiet(os.unlink, staged_index)
        raise
    if fsync:
        fsync_dir(final)
    for _, side in aside:
        _quiet(os.unlink, side)
    for old in stale - set(shard_names):
        if "/" not in old and os.path.exists(os.path.join(final, old)):
            _quiet(os.unlink, os.path.join(final, old))


def _quiet(fn: Any, *args: str) -> None:
    """Best-effort clean-up or roll-back step: its own failure must not hide the first error."""
    try:
        fn(*args)
    except OSError:
        pass


def _write_object_store(
    loc: Location, plan: list[list[str]], shard_names: list[str], tensors: Mapping[str, torch.Tensor], index_bytes: bytes
) -> None:
    """Object stores (no rename): the index is the commit marker. An old index is deleted
    first (from then on the folder holds no checkpoint rather than a mixed one), each shard
    is one upload that appears whole or not at all, stale shards of the old index are
    deleted, and the new index is uploaded last. Other files (config.json) are kept."""
    fs = loc.fs
    if loc.exists() and not loc.isdir():
        raise FormatError(f"{loc} exists and is an object; a sharded checkpoint is a folder (prefix). Pick another URL.")
    index = loc.join(INDEX_NAME)
    stale: set[str] = set()
    if index.exists():
        try:
            stale = set(read_index(index)[0].values())
        except CorruptCheckpointError:
            stale = set()
        fs.rm(index.path)
    written: list[Location] = []
    try:
        for shard, names in zip(shard_names, plan):
            target = loc.join(shard)
            safetensors.write(target, {k: tensors[k] for k in names}, {"format": "pt"})
            written.append(target)
    except BaseException:
        for w in written:
            try:
                fs.rm(w.path)
            except OSError:
                pass
        raise
    for old in stale - set(shard_names):
        if loc.join(old).exists():
            fs.rm(loc.join(old).path)
    with atomic_write(index) as f:
        f.write(index_bytes)
