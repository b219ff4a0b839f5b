"""Nested trees <-> (flat tensor names, JSON structure). No pickle.

A tree is dicts / lists / tuples of tensors and JSON-able leaves. ``flatten`` gives every
tensor a readable name (its path joined with dots: ``optimizer.state.0.exp_avg``) and
describes the rest as tagged JSON, so any safetensors reader sees the tensors and torchkeep
brings back the exact tree: key types, tuples, non-finite floats, tied tensors.

Structure nodes (JSON):
    null / true / 1 / 1.5 / "s"            the leaf itself
    [n, ...]                               list
    {"k": n, ...}                          dict whose keys are str and none starts with "$"
    {"$t": "name"}                         tensor (two leaves naming one tensor are tied)
    {"$nd": "name"}                        numpy array stored as a tensor
    {"$tu": [n, ...]}                      tuple
    {"$dk": [[key, n], ...]}               dict with other keys (int keys of optimizer state)
    {"$f": "nan" | "inf" | "-inf"}         non-finite float
    {"$dtype": "float32"}                  torch.dtype
    {"$dev": "cuda:0"}                     torch.device
    {"$b": "base64"}                       bytes
    {"$c": [re, im]}                       complex
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import torch

from .._io.gcpause import gc_paused
from ..errors import FormatError, UnsupportedTypeError

__all__ = ["flatten", "unflatten", "is_flat_state_dict", "path_str", "TreeTensors"]

TreeTensors = dict[str, torch.Tensor]

_MAX_DEPTH = 200


def path_str(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path) if path else "<root>"


def is_flat_state_dict(tree: Any) -> bool:
    """A mapping of str -> tensor: stored with its own names and no structure."""
    return (
        isinstance(tree, Mapping)
        and len(tree) > 0
        and all(isinstance(k, str) for k in tree)
        and all(isinstance(v, torch.Tensor) for v in tree.values())
    )


def _alias_key(t: torch.Tensor) -> tuple[Any, ...] | None:
    """Identity of a tensor's exact view: equal keys mean the same bytes, shape and stride."""
    if t.device.type == "meta" or t.is_sparse or t.is_quantized or t.is_nested:
        return None
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    if t.numel() == 0:
        return None
    return (t.device.type, t.device.index, ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def check_tensor(t: torch.Tensor, where: str) -> None:
    if t.is_sparse or t.layout != torch.strided:
        raise UnsupportedTypeError(
            f"tensor {where!r} has layout {t.layout}; only dense (strided) tensors can be "
            f"stored. Fix: convert it with .to_dense() before saving."
        )
    if t.is_quantized:
        raise UnsupportedTypeError(
            f"tensor {where!r} is quantized ({t.dtype}); store its int representation and "
            f"scale/zero_point separately (t.int_repr(), t.q_scale()), or save as .pt."
        )
    if t.device.type == "meta":
        raise UnsupportedTypeError(
            f"tensor {where!r} is on the meta device and has no data. Fix: materialize the "
            f"model (e.g. model.to_empty(device='cpu') then load weights) before saving."
        )
    if getattr(t, "is_nested", False):
        raise UnsupportedTypeError(f"tensor {where!r} is a nested tensor; unbind it before saving.")


@gc_paused
def flatten(
    tree: Any, *, validate_dtype: Callable[[torch.Tensor, str], None] | None = None
) -> tuple[Any, TreeTensors]:
    """Return ``(structure, tensors)``. Tied tensors (same storage and view) appear once."""
    tensors: TreeTensors = {}
    seen: dict[tuple[Any, ...], str] = {}

    def name_for(path: tuple[Any, ...]) -> str:
        base = ".".join(str(p) for p in path) or "tensor"
        name, i = base, 1
        while name in tensors:
            name = f"{base}#{i}"
            i += 1
        return name

    def add_tensor(t: torch.Tensor, path: tuple[Any, ...]) -> str:
        where = path_str(path)
        check_tensor(t, where)
        if validate_dtype is not None:
            validate_dtype(t, where)
        key = _alias_key(t)
        if key is not None and key in seen:
            return seen[key]
        name = name_for(path)
        tensors[name] = t
        if key is not None:
            seen[key] = name
        return name

    def enc(obj: Any, path: tuple[Any, ...], depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise UnsupportedTypeError(f"tree is nested deeper than {_MAX_DEPTH} levels at {path_str(path)!r}")
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            if math.isfinite(obj):
                return float(obj)
            return {"$f": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
        if isinstance(obj, torch.Tensor):
            return {"$t": add_tensor(obj.detach(), path)}
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                raise UnsupportedTypeError(f"numpy array {path_str(path)!r} has dtype=object; cannot be stored without pickle.")
            return {"$nd": add_tensor(torch.from_numpy(np.ascontiguousarray(obj)), path)}
        if isinstance(obj, np.generic):
            return enc(obj.item(), path, depth + 1)
        if isinstance(obj, Mapping):
            keys = list(obj.keys())
            if all(isinstance(k, str) and not k.startswith("$") for k in keys):
                return {k: enc(obj[k], path + (k,), depth + 1) for k in keys}
            return {"$dk": [[_enc_key(k, path), enc(obj[k], path + (k,), depth + 1)] for k in keys]}
        if isinstance(obj, torch.Size):
            return {"$tu": [int(x) for x in obj]}
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return {"$tu": [enc(v, path + (i,), depth + 1) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [enc(v, path + (i,), depth + 1) for i, v in enumerate(obj)]
        if isinstance(obj, torch.dtype):
            return {"$dtype": str(obj).removeprefix("torch.")}
        if isinstance(obj, torch.device):
            return {"$dev": str(obj)}
        if isinstance(obj, (bytes, bytearray)):
            return {"$b": base64.b64encode(bytes(obj)).decode("ascii")}
        if isinstance(obj, complex):
            return {"$c": [enc(obj.real, path, depth + 1), enc(obj.imag, path, depth + 1)]}
        raise UnsupportedTypeError(
            f"value at {path_str(path)!r} has type {type(obj).__module__}.{type(obj).__qualname__}, "
            f"which cannot be stored without pickle. Store tensors, dicts, lists, tuples and "
            f"int/float/str/bool/None leaves (convert objects with their state_dict() or vars()), "
            f"or save to a .pt file with torch.save if you accept pickle."
        )

    structure = enc(tree, (), 0)
    return structure, tensors


def _enc_key(k: Any, path: tuple[Any, ...]) -> Any:
    if k is None or isinstance(k, (bool, int, str)):
        return k
    if isinstance(k, float):
        return k if math.isfinite(k) else {"$f": "nan" if math.isnan(k) else ("inf" if k > 0 else "-inf")}
    if isinstance(k, tuple):
        return {"$tu": [_enc_key(x, path) for x in k]}
    raise UnsupportedTypeError(
        f"dict at {path_str(path)!r} has a key of type {type(k).__name__} ({k!r}); keys must be "
        f"str, int, float, bool, None or tuples of those."
    )


_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
NOT_SCALAR = object()


def decode_scalar_tag(tag: str, val: Any, bad: Callable[[str], Exception]) -> Any:
    """Decode the tags whose value is one JSON scalar (non-finite floats, dtypes, devices,
    bytes); :data:`NOT_SCALAR` for any other tag. Shared with the model-spec codec."""
    if tag == "$f":
        if not isinstance(val, str) or val not in _FLOATS:
            raise bad(f"unknown float {val!r}")
        return _FLOATS[val]
    if tag == "$dtype":
        dt = getattr(torch, str(val), None)
        if not isinstance(dt, torch.dtype):
            raise bad(f"unknown dtype {val!r}")
        return dt
    if tag == "$dev":
        try:
            return torch.device(str(val))
        except (RuntimeError, TypeError, ValueError) as e:
            raise bad(f"bad device {val!r}: {e}") from None
    if tag == "$b":
        try:
            return base64.b64decode(str(val), validate=True)
        except ValueError:
            raise bad("bad base64 bytes") from None
    return NOT_SCALAR


@gc_paused
def unflatten(structure: Any, tensors: Mapping[str, Any], *, where: str = "") -> Any:
    """Rebuild the tree. Raises FormatError naming the node when the structure is malformed."""

    def bad(msg: str) -> FormatError:
        return FormatError(f"{where}: malformed torchkeep tree metadata: {msg}. The file header is damaged; re-save it.")

    def tensor(name: Any) -> Any:
        if not isinstance(name, str) or name not in tensors:
            raise bad(f"it refers to tensor {name!r}, which is not in the file")
        return tensors[name]

    def dec(node: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise bad(f"nested deeper than {_MAX_DEPTH} levels")
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [dec(v, depth + 1) for v in node]
        if not isinstance(node, dict):
            raise bad(f"unexpected node {type(node).__name__}")
        if len(node) == 1:
            (tag, val), = node.items()
            if isinstance(tag, str) and tag.startswith("$"):
                return dec_tag(tag, val, depth)
        return {k: dec(v, depth + 1) for k, v in node.items()}

    def dec_tag(tag: str, val: Any, depth: int) -> Any:
        if tag == "$t":
            return tensor(val)
        if tag == "$nd":
            t = tensor(val)
            return t.cpu().numpy() if isinstance(t, torch.Tensor) else t
        if tag == "$tu":
            if not isinstance(val, list):
                raise bad("tuple node is not a list")
            return tuple(dec(v, depth + 1) for v in val)
        if tag == "$dk":
            if not isinstance(val, list) or not all(isinstance(p, list) and len(p) == 2 for p in val):
                raise bad("keyed dict node is not a list of pairs")
            out = {}
            for k, v in val:
                key = dec(k, depth + 1)
                try:
                    hash(key)
                except TypeError:
                    raise bad(f"dict key {k!r} is not hashable") from None
                out[key] = dec(v, depth + 1)
            return out
        scalar = decode_scalar_tag(tag, val, bad)
        if scalar is not NOT_SCALAR:
            return scalar
        if tag == "$c":
            if not isinstance(val, list) or len(val) != 2:
                raise bad("complex node is not [re, im]")
            re_, im_ = (dec(v, depth + 1) for v in val)
            if not all(isinstance(x, (int, float)) for x in (re_, im_)):
                raise bad("complex parts are not numbers")
            return complex(re_, im_)
        raise bad(f"unknown tag {tag!r}")

    return dec(structure, 0)
