"""Legacy whole-model pickles (``torch.save(model)``) -> the save_model format, safely.

The restricted unpickler (``formats.read_pickled_raw``) gives the pickle's object tree with
every non-allowlisted object as an inert placeholder (``.class_path``, ``.args``, ``.state``);
nothing in the file is imported or called. Here each module placeholder whose class is
allowed becomes an instance of that class *without running its constructor* (what pickle
itself does: ``cls.__new__`` + ``__setstate__``, but with classes we chose to import and
values we decoded), its tensors in place. ``save_model`` then captures the constructor
calls from the attributes and verifies them by rebuilding, so the new file never depends
on the pickle.
"""

from __future__ import annotations

import enum
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, is_dataclass
from typing import Any

import torch
from torch import nn

from .._io.fs import resolve
from ..errors import ArchitectureError
from ._spec import Resolver

__all__ = ["migrate", "MigrateReport", "is_placeholder", "modules_from_placeholders"]


def is_placeholder(x: Any) -> bool:
    return hasattr(x, "class_path") and hasattr(x, "state") and not isinstance(x, (nn.Module, type))


@dataclass
class MigrateReport:
    source: str
    target: str
    model_class: str = ""
    modules: int = 0
    tensors: int = 0
    dropped: list[str] = field(default_factory=list)  # attributes/hooks not carried over

    def lines(self) -> list[str]:
        out = [f"migrated {self.source} -> {self.target}: {self.model_class}, {self.modules} modules, {self.tensors} tensors"]
        out += [f"  not carried over: {d}" for d in self.dropped]
        return out


class _Converter:
    """Placeholder tree -> live objects, importing only what the resolver allows."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.memo: dict[int, Any] = {}
        self.unresolved: list[str] = []  # "path: class" of placeholders that stayed inert
        self.dropped: list[str] = []
        self.modules = 0

    def value(self, x: Any, path: str, module: bool = False) -> Any:
        if id(x) in self.memo:
            return self.memo[id(x)]
        if is_placeholder(x):
            return self.placeholder(x, path, module)
        if isinstance(x, nn.Parameter) or isinstance(x, torch.Tensor):
            return x
        if isinstance(x, OrderedDict):
            return OrderedDict((k, self.value(v, f"{path}.{k}")) for k, v in x.items())
        if isinstance(x, dict):
            return {k: self.value(v, f"{path}.{k}") for k, v in x.items()}
        if isinstance(x, list):
            return [self.value(v, f"{path}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, tuple):
            return tuple(self.value(v, f"{path}[{i}]") for i, v in enumerate(x))
        return x

    def placeholder(self, ph: Any, path: str, module: bool) -> Any:
        cp = str(ph.class_path)
        obj: Any = None
        if getattr(ph, "kind", "object") == "global":  # a bare reference to a function or class
            for kind in ("function", "class", "enum", "dataclass"):
                try:
                    return self.resolver.resolve(cp, kind)
                except ArchitectureError:
                    continue
            self.unresolved.append(f"{path or '<root>'}: {cp}")
            return ph
        if module:  # a submodule must be importable and allowed: errors name the fix
            obj = self.resolver.resolve(cp, "class")
        else:  # any other object: converted when allowed, else left inert and reported
            for kind in ("class", "enum", "dataclass", "function"):
                try:
                    obj = self.resolver.resolve(cp, kind)
                    break
                except ArchitectureError:
                    continue
        if obj is None:
            self.unresolved.append(f"{path or '<root>'}: {cp}")
            return ph
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            return self.module(obj, ph, path)
        if isinstance(obj, type) and issubclass(obj, enum.Enum):
            args = tuple(getattr(ph, "args", None) or ())
            return obj(*args[:1]) if args else ph
        if isinstance(obj, type) and is_dataclass(obj):
            inst = obj.__new__(obj)
            state = self.value(ph.state, path)
            if isinstance(state, dict):
                inst.__dict__.update(state)
            self.memo[id(ph)] = inst
            return inst
        return obj  # a function referenced by the pickle

    def module(self, cls: type, ph: Any, path: str) -> nn.Module:
        m = cls.__new__(cls)
        self.memo[id(ph)] = m
        self.modules += 1
        state = ph.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (dict, slotstate)
        if not isinstance(state, dict):
            raise ArchitectureError(f"'{path or '<root>'}' ({ph.class_path}): pickled module state is not a dict; cannot migrate it.")
        st: dict[str, Any] = {}
        for k, v in state.items():
            if k == "_modules":
                st[k] = OrderedDict((n, None if c is None else self.value(c, f"{path}.{n}" if path else n, True)) for n, c in v.items())
            elif k == "_parameters":
                st[k] = OrderedDict((n, None if t is None else (t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=t.is_floating_point() or t.is_complex()))) for n, t in v.items())
            elif k.endswith("_hooks") or k.endswith("_pre_hooks") or k in ("_state_dict_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"):
                if v:
                    self.dropped.append(f"'{path or '<root>'}'.{k} ({len(v)} hook(s))")
                st[k] = OrderedDict()
            else:
                st[k] = self.value(v, f"{path}.{k}" if path else k)
        nn.Module.__setstate__(m, st)  # fills attributes newer torch versions expect
        return m


def modules_from_placeholders(tree: Any, resolver: Resolver) -> tuple[nn.Module, list[str], list[str]]:
    """The model in a raw pickled tree: ``(model, unresolved placeholders, dropped things)``."""
    conv = _Converter(resolver)
    root = tree
    if isinstance(tree, dict) and not is_placeholder(tree):
        found = [v for v in tree.values() if is_placeholder(v)]
        if len(found) == 1:
            root = found[0]
    if not is_placeholder(root):
        raise ArchitectureError(
            f"{resolver.where}: this file holds {type(tree).__name__}, not a pickled model "
            f"(torch.save(model)). For a state dict, build the model and use torchkeep.load_into."
        )
    model = conv.value(root, "", True)
    if not isinstance(model, nn.Module):
        raise ArchitectureError(f"{resolver.where}: the pickled object {root.class_path} is not an nn.Module.")
    return model, conv.unresolved, conv.dropped


def migrate(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    allow: Iterable[str] = (),
    class_map: Any = None,
) -> MigrateReport:
    """Turn ``torch.save(model)`` output into a :func:`save_model` file; no code from it runs."""
    from .. import formats
    from ._api import save_model
    from ._capture import capture_model

    read_raw = getattr(formats, "read_pickled_raw", None)
    if read_raw is None:  # pragma: no cover - until the restricted unpickler lands
        raise ArchitectureError("migrate needs torchkeep.formats.read_pickled_raw, which this build lacks.")
    src = resolve(source).require("legacy model file")
    resolver = Resolver(allow=allow, class_map=class_map, where=str(src))
    tree = read_raw(src, map_location="cpu")
    model, unresolved, dropped = modules_from_placeholders(tree, resolver)
    try:
        capture_model(model)
    except ArchitectureError as e:
        extra = f"\nObjects left as inert placeholders (not importable or not allowed): {unresolved}" if unresolved else ""
        raise ArchitectureError(f"{src}: cannot migrate: {e}{extra}") from None
    save_model(model, target)
    rep = MigrateReport(str(src), str(resolve(target)), f"{type(model).__module__}.{type(model).__qualname__}")
    rep.modules = sum(1 for _ in model.modules())
    rep.tensors = len(model.state_dict())
    rep.dropped = dropped + [f"attribute {u} (stayed an inert placeholder; not needed by the constructor)" for u in unresolved]
    return rep
