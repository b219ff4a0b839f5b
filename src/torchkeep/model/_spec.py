"""The architecture as data: JSON spec of a module tree, constructor values, class paths.

A saved model's safetensors header holds ``__metadata__["torchkeep.model"]``::

    {"format": "torchkeep.model/1", "torch": "2.13.0", "root": NODE}

    NODE = {"class": "pkg.mod.Net",           # import path of the class
            "args": [V, ...], "kwargs": {"name": V, ...},   # constructor call
            "children": {"attr": NODE | null, ...},          # how children attach, in order
            "training": true}
         | {"class": "torch.nn.Sequential", "container": true, "children": {...}, "training": ..}
         | {"class": "pkg.mod.Block", "by_parent": true, "children": {...}, "training": ..}
              # made by its parent's constructor; only its class is checked on load
         | {"ref": "encoder.embed"}          # the same module object as at that path

Constructor values ``V`` are JSON with tagged objects (one key starting with ``$``)::

    {"$tu": [V, ...]}                 tuple            {"$dk": [[K, V], ...]}  dict, other keys
    {"$f": "nan"|"inf"|"-inf"}        float            {"$dtype": "float16"}   torch.dtype
    {"$dev": "cuda:0"}                torch.device     {"$module": "rel.path"} a submodule
    {"$enum": "pkg.Color", "name": "RED"}              enum member
    {"$dc": "pkg.Config", "fields": {"k": V}}          dataclass instance (init fields)
    {"$fn": "torch.nn.functional.gelu"}                an importable function
    {"$empty": {"shape": [3], "dtype": "float32"}}     a tensor argument that is also a saved
                                                       parameter/buffer (filled by the weights)

Every class, enum, dataclass and function path obeys the same rule on load: ``torch`` and the
``allow=`` prefixes only (see :class:`Resolver`).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import math
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import ArchitectureError, ForbiddenClassError
from ..formats._tree import NOT_SCALAR, decode_scalar_tag

__all__ = ["SPEC_KEY", "SPEC_FORMAT", "class_path", "Resolver", "encode_value", "decode_value", "Unencodable", "ClassMap"]

SPEC_KEY = "torchkeep.model"
SPEC_FORMAT = "torchkeep.model/1"

ClassMap = "Mapping[str, str] | Callable[[str], str | None] | None"

# functions a file may name from torch: only these modules (no torch.load, torch.hub, ...)
_TORCH_FN_MODULES = ("torch", "torch.nn.functional", "torch.special", "torch.nn.modules.activation", "torch._C._nn", "torch._C._VariableFunctions")


def class_path(obj: Any) -> str:
    """``module.qualname`` of a class or function; torch.nn classes by their public name."""
    mod = getattr(obj, "__module__", None) or ""
    qual = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "")
    if mod.startswith("torch.nn.modules.") and getattr(torch.nn, qual, None) is obj:
        return f"torch.nn.{qual}"
    if mod.startswith("torch") and getattr(torch.nn.functional, qual, None) is obj:
        return f"torch.nn.functional.{qual}"
    return f"{mod}.{qual}"


class EmptyLike:
    """A tensor argument that is also a saved parameter/buffer: rebuilt empty, then loaded."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.shape, self.dtype = shape, dtype


class Unencodable(Exception):
    """A constructor value that cannot be stored as data (internal; becomes ArchitectureError)."""


def encode_value(v: Any, module_ref: Callable[[torch.nn.Module], str], where: str = "") -> Any:
    """JSON for a constructor argument; modules become ``{"$module": path}`` via ``module_ref``."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, enum.Enum):  # before int: IntEnum is an int
        return {"$enum": class_path(type(v)), "name": v.name}
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        if math.isfinite(v):
            return float(v)
        return {"$f": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
    if isinstance(v, torch.nn.Module):
        return {"$module": module_ref(v)}
    if isinstance(v, EmptyLike):
        return {"$empty": {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}}
    if isinstance(v, torch.Tensor):
        raise Unencodable(f"{where} is a tensor; constructor arguments must be plain values (register it as a buffer instead)")
    if isinstance(v, torch.dtype):
        return {"$dtype": str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"$dev": str(v)}
    if isinstance(v, torch.Size):
        return {"$tu": [int(x) for x in v]}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        fields = {f.name: encode_value(getattr(v, f.name), module_ref, f"{where}.{f.name}") for f in dataclasses.fields(v) if f.init}
        return {"$dc": class_path(type(v)), "fields": fields}
    if isinstance(v, tuple) and not hasattr(v, "_fields"):
        return {"$tu": [encode_value(x, module_ref, f"{where}[{i}]") for i, x in enumerate(v)]}
    if isinstance(v, list):
        return [encode_value(x, module_ref, f"{where}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, dict):
        keys = list(v.keys())
        if all(isinstance(k, str) and not k.startswith("$") for k in keys):
            return {k: encode_value(v[k], module_ref, f"{where}[{k!r}]") for k in keys}
        return {"$dk": [[encode_value(k, module_ref, where), encode_value(v[k], module_ref, f"{where}[{k!r}]")] for k in keys]}
    if isinstance(v, (types.FunctionType, types.BuiltinFunctionType)):
        path = class_path(v)
        if "<locals>" in path or "<lambda>" in path:
            raise Unencodable(f"{where} is the local function or lambda {path}; use a module-level function")
        return {"$fn": path}
    raise Unencodable(
        f"{where} has type {type(v).__module__}.{type(v).__qualname__}, which cannot be stored as data "
        f"(JSON values, tuples, dtypes, devices, enums, dataclasses, submodules and module-level functions can)"
    )


class Resolver:
    """Imports the classes a file names: torch and ``allow`` prefixes only, after ``class_map``."""

    def __init__(self, *, allow: Any = (), class_map: Any = None, trust_all: bool = False, where: str = "") -> None:
        if isinstance(allow, str):
            allow = (allow,)
        self.allow = tuple(a.rstrip(".") for a in allow)
        if class_map is not None and not (isinstance(class_map, Mapping) or callable(class_map)):
            raise TypeError(f"class_map must be a dict {{'old.mod.Net': 'new.mod.Net'}} or a callable, not {type(class_map).__name__}")
        self.class_map = class_map
        self.trust_all = trust_all
        self.where = where
        self._cache: dict[tuple[str, str], Any] = {}

    def map(self, path: str) -> str:
        cm = self.class_map
        if cm is None:
            return path
        if isinstance(cm, Mapping):
            if path in cm:
                return str(cm[path])
            # a mapped module prefix moves every class under it: {"old.mod": "new.mod"}
            best = max((k for k in cm if path.startswith(str(k) + ".")), key=len, default=None)
            return path if best is None else str(cm[best]) + path[len(best):]
        new = cm(path)
        return path if new is None else str(new)

    def allowed(self, path: str) -> bool:
        if self.trust_all:
            return True
        return any(path == p or path.startswith(p + ".") for p in ("torch", *self.allow))

    def resolve(self, path: str, kind: str = "class") -> Any:
        key = (path, kind)
        if key not in self._cache:
            self._cache[key] = self._resolve(path, kind)
        return self._cache[key]

    def _resolve(self, path: str, kind: str) -> Any:
        if not isinstance(path, str) or not path:
            raise ArchitectureError(f"{self.where}: malformed class path {path!r} in the model spec; the file is damaged.")
        target = self.map(path)
        shown = path if target == path else f"{path} (mapped to {target})"
        if not self.allowed(target):
            top = target.rsplit(".", 1)[0]
            root = target.split(".", 1)[0]
            shorter = f" (or a shorter prefix such as {root!r})" if root != top else ""
            raise ForbiddenClassError(
                f"{self.where}: the model needs {kind} {shown}, which is outside torch and the allowed "
                f"prefixes {list(self.allow)}; nothing was imported. Fix: if you trust this file, "
                f"pass allow=[{top!r}]{shorter}."
            )
        obj = _import_path(target, shown, self.where)
        self._check_kind(obj, kind, shown, target)
        return obj

    def _check_kind(self, obj: Any, kind: str, shown: str, target: str) -> None:
        ok = {
            "class": lambda o: isinstance(o, type) and issubclass(o, torch.nn.Module),
            "enum": lambda o: isinstance(o, type) and issubclass(o, enum.Enum),
            "dataclass": lambda o: isinstance(o, type) and dataclasses.is_dataclass(o),
            "function": lambda o: callable(o) and not isinstance(o, type),
        }[kind](obj)
        if ok and kind == "function" and target.startswith("torch") and not self.trust_all:
            ok = getattr(obj, "__module__", None) in _TORCH_FN_MODULES or target.startswith("torch.nn.functional.")
        if not ok:
            raise ForbiddenClassError(
                f"{self.where}: {shown} is not a{'n' if kind[0] in 'ae' else ''} {kind if kind != 'class' else 'nn.Module class'}"
                f" that a model spec may name; refused."
            )


def _import_path(target: str, shown: str, where: str) -> Any:
    parts = target.split(".")
    mod = None
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                continue
            raise ArchitectureError(f"{where}: importing {name} for {shown} failed: {e}. Install what it needs.") from e
        except Exception as e:  # noqa: BLE001 - the user's module failed to import
            raise ArchitectureError(f"{where}: importing {name} for {shown} failed: {type(e).__name__}: {e}") from e
        obj: Any = mod
        for attr in parts[i:]:
            obj = getattr(obj, attr, _MISSING)
            if obj is _MISSING:
                raise ArchitectureError(
                    f"{where}: class {shown} not found: module {name} has no {'.'.join(parts[i:])}. If it was "
                    f"renamed or moved, pass class_map={{{target!r}: 'new.module.NewName'}}."
                )
        return obj
    raise ArchitectureError(
        f"{where}: class {shown} not found: no module of {target!r} can be imported. If it was moved, "
        f"pass class_map={{{target!r}: 'new.module.Name'}}; otherwise put its package on sys.path."
    )


_MISSING = object()


_MAX_DEPTH = 200  # as in the tree codec: a deeper spec is damaged or hostile
_MAX_EMPTY_BYTES = 1 << 30  # an ``$empty`` constructor tensor larger than this is refused


def decode_value(node: Any, resolver: Resolver, module_ref: Callable[[str], torch.nn.Module], where: str = "") -> Any:
    def bad(msg: str) -> ArchitectureError:
        return ArchitectureError(f"{resolver.where}: malformed constructor value at {where}: {msg}; the file is damaged.")

    def dec(n: Any, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise bad(f"nested deeper than {_MAX_DEPTH} levels")
        if n is None or isinstance(n, (bool, int, float, str)):
            return n
        if isinstance(n, list):
            return [dec(x, depth + 1) for x in n]
        if not isinstance(n, dict):
            raise bad(f"unexpected {type(n).__name__}")
        tag = next(iter(n), None)
        if not (isinstance(tag, str) and tag.startswith("$")):
            return {k: dec(v, depth + 1) for k, v in n.items()}
        val = n[tag]
        scalar = decode_scalar_tag(tag, val, bad)
        if scalar is not NOT_SCALAR:
            return scalar
        if tag in ("$tu", "$dk") and not isinstance(val, list):
            raise bad(f"{tag} node is not a list")
        if tag == "$tu":
            return tuple(dec(x, depth + 1) for x in val)
        if tag == "$dk":
            if not all(isinstance(p, list) and len(p) == 2 for p in val):
                raise bad("keyed dict node is not a list of pairs")
            return {_hashable(dec(k, depth + 1), bad): dec(v, depth + 1) for k, v in val}
        if tag == "$empty":
            return _empty(val, bad)
        if tag == "$module":
            return module_ref(str(val))
        if tag == "$enum":
            cls = resolver.resolve(val, "enum")
            try:
                return cls[n["name"]]
            except (KeyError, TypeError):
                raise ArchitectureError(f"{resolver.where}: enum {val} has no member {n.get('name')!r} (renamed?).") from None
        if tag == "$dc":
            cls = resolver.resolve(val, "dataclass")
            fields = n.get("fields", {})
            if not isinstance(fields, dict):
                raise bad("dataclass fields are not a mapping")
            try:
                return cls(**{str(k): dec(v, depth + 1) for k, v in fields.items()})
            except TypeError as e:
                raise ArchitectureError(f"{resolver.where}: dataclass {val} does not take the stored fields ({e}); was it changed?") from None
        if tag == "$fn":
            return resolver.resolve(val, "function")
        raise bad(f"unknown tag {tag!r}")

    return dec(node)


def _empty(val: Any, bad: Callable[[str], Exception]) -> torch.Tensor:
    """An uninitialised constructor tensor, bounded: its size comes from the file."""
    dt = getattr(torch, str(val.get("dtype")), None) if isinstance(val, dict) else None
    shape = val.get("shape") if isinstance(val, dict) else None
    if not isinstance(dt, torch.dtype) or not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
        raise bad(f"bad empty tensor {val!r}")
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes > _MAX_EMPTY_BYTES:
        raise bad(f"an empty constructor tensor of shape {shape} ({nbytes:,} bytes) is larger than any model argument should be")
    return torch.empty(shape, dtype=dt)


def _hashable(k: Any, bad: Callable[[str], Exception]) -> Any:
    try:
        hash(k)
    except TypeError:
        raise bad(f"dict key {k!r} is not hashable") from None
    return k
