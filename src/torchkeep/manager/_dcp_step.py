"""The layout of a step written through torch.distributed.checkpoint, in plain terms: how a
state tree is split into DCP tensors and a skeleton, and how a step is read back whole in
one process (no process group): ``torchkeep ls/verify/inspect``, ``tk.load`` of a step.
See :mod:`torchkeep.manager._distributed` for the save and restore protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .._io import jsonio
from .._io.fs import Location
from ..errors import CorruptCheckpointError, UnsupportedTypeError
from ..formats._base import ST_DTYPES, ST_NAMES, MapLocation, TensorInfo, dtype_name
from ._layout import Manifest
from ._verify import _hash_file, _size_problem

__all__ = ["DCP_DIR", "DCP_KEY", "dcp_table", "dcp_tensor_infos", "consolidate"]

DCP_DIR = "dcp"
DCP_KEY = "torchkeep.dcp"


# ---------------------------------------------------------------------------- tree split
def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def _split(tree: Any, *, per_rank: tuple[str, ...] = ()) -> tuple[Any, dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """``(skeleton, {name: tensor}, {name: {"path", "shape", "dtype"}})``: every tensor of the
    tree (outside the top-level keys ``per_rank``) replaced by None in the skeleton."""
    tensors: dict[str, torch.Tensor] = {}
    table: dict[str, dict[str, Any]] = {}
    bad_keys: list[str] = []

    def walk(node: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(node, torch.Tensor):
            name = ".".join(str(p) for p in path) or "<root>"
            if name in tensors:
                raise UnsupportedTypeError(
                    f"two tensors of the state are both named {name!r} once their paths are joined with dots; "
                    f"DCP needs distinct names. Fix: rename one of the keys."
                )
            if node.dtype not in ST_NAMES:
                raise UnsupportedTypeError(f"tensor {name!r} has dtype {dtype_name(node.dtype)}, which safetensors cannot store; convert it.")
            tensors[name] = node
            table[name] = {"path": list(path), "shape": list(node.shape), "dtype": ST_NAMES[node.dtype]}
            return None
        if isinstance(node, Mapping):
            out = {}
            for k, v in node.items():
                if not path and k in per_rank:
                    out[k] = v
                    continue
                if isinstance(v, (torch.Tensor, Mapping, list, tuple)) and not (isinstance(k, (str, int)) and not isinstance(k, bool)):
                    bad_keys.append(f"{'.'.join(map(str, path + (k,)))}")
                out[k] = walk(v, path + (k,))
            return out
        if isinstance(node, list):
            return [walk(v, path + (i,)) for i, v in enumerate(node)]
        if isinstance(node, tuple) and not hasattr(node, "_fields"):
            return tuple(walk(v, path + (i,)) for i, v in enumerate(node))
        return node

    skeleton = walk(tree, ())
    if bad_keys:
        raise UnsupportedTypeError(
            f"under a process group, containers of tensors must be keyed by str or int; cannot name {bad_keys[:10]}. "
            f"Fix: use str keys."
        )
    return skeleton, tensors, table


def _fill(skeleton: Any, table: Mapping[str, Mapping[str, Any]], tensors: Mapping[str, Any], where: str) -> Any:
    """The skeleton with each table entry's path set to ``tensors[name]``."""
    by_path = {}
    for name, rec in table.items():
        p = rec.get("path") if isinstance(rec, Mapping) else None
        if not isinstance(p, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in p):
            raise CorruptCheckpointError(f"{where}: DCP table entry {name!r} has no valid path; the step is damaged.")
        by_path[tuple(p)] = tensors[name]
    placed: set[tuple[Any, ...]] = set()

    def walk(node: Any, path: tuple[Any, ...]) -> Any:
        if path in by_path:
            placed.add(path)
            return by_path[path]
        if isinstance(node, Mapping):
            return {k: walk(v, path + (k,)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, path + (i,)) for i, v in enumerate(node)]
        if isinstance(node, tuple) and not hasattr(node, "_fields"):
            return tuple(walk(v, path + (i,)) for i, v in enumerate(node))
        return node

    out = walk(skeleton, ())
    lost = [".".join(map(str, p)) for p in by_path if p not in placed]
    if lost:
        raise CorruptCheckpointError(f"{where}: DCP tensors {lost[:10]} have no place in the saved structure; the step is damaged.")
    return out


# ---------------------------------------------------------------------------- read side
def dcp_table(header_meta: Mapping[str, str], where: str) -> dict[str, Any] | None:
    """The ``torchkeep.dcp`` record of a step's state file, validated; None for other steps."""
    raw = header_meta.get(DCP_KEY)
    if raw is None:
        return None
    rec = jsonio.loads(raw, what=f"{DCP_KEY} record", path=where, fix="the step is damaged; restore an older step")
    tensors = rec.get("tensors") if isinstance(rec, dict) else None
    if not isinstance(tensors, dict) or rec.get("dir") != DCP_DIR or not all(
        isinstance(v, dict) and isinstance(v.get("shape"), list) and v.get("dtype") in ST_DTYPES for v in tensors.values()
    ):
        raise CorruptCheckpointError(f"{where}: the {DCP_KEY} record is malformed; the step is damaged.")
    return rec


def dcp_tensor_infos(rec: Mapping[str, Any]) -> list[TensorInfo]:
    out = []
    for name, v in rec["tensors"].items():
        dt = ST_DTYPES[v["dtype"]]
        n = 1
        for s in v["shape"]:
            n *= int(s)
        out.append(TensorInfo(name, tuple(int(s) for s in v["shape"]), dtype_name(dt), n * dt.itemsize, file=DCP_DIR))
    return out


def consolidate(step_dir: Location, man: Manifest, rec: Mapping[str, Any], skeleton: Any, *, map_location: MapLocation, dtype: torch.dtype | None) -> Any:
    """The full tree of a DCP step in one process: shards checked against the manifest,
    every tensor assembled from its chunks (any world size wrote them)."""
    from ..formats import dcp as dcp_format

    problems = []
    for fname, entry in man.files.items():
        if fname == man.state_file:
            continue
        loc = step_dir.join(fname)
        prob = _size_problem(loc, entry) or _hash_file(loc, entry)
        if prob:
            problems.append(prob)
    if problems:
        raise CorruptCheckpointError("; ".join(problems) + ". The checkpoint is damaged; restore an older step.")
    table = rec["tensors"]
    meta = dcp_format.read_metadata(step_dir.join(DCP_DIR))
    _check_table(meta, table, str(step_dir))
    flat = dcp_format.read_flat(step_dir.join(DCP_DIR), map_location=map_location, dtype=dtype, names=list(table), meta=meta)
    return _fill(skeleton, table, flat, str(step_dir))


def _check_table(meta: Any, table: Mapping[str, Any], where: str) -> None:
    problems = []
    for name, v in table.items():
        e = meta.tensors.get(name)
        if e is None:
            problems.append(f"{name!r} is in no shard")
        elif list(e.size) != list(v["shape"]) or e.dtype != ST_DTYPES[v["dtype"]]:
            problems.append(f"{name!r} is {dtype_name(e.dtype)}{list(e.size)} in the shards, {v['dtype']}{v['shape']} in the table")
    if problems:
        raise CorruptCheckpointError(f"{where}: DCP shards do not match the step's table: {'; '.join(problems[:10])}. The step is damaged.")
