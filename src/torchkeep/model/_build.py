"""Rebuild a module tree from its spec: import allowed classes, repeat constructor calls,
attach children as saved.

Each module is constructed from its captured call; then its children are reconciled with the
spec: a child its constructor already made is kept when its class and call match (so
references the parent holds stay valid), otherwise it is built from the spec and attached
(a replaced head, an appended layer). Containers are built empty and filled in order.
Building runs on the meta device when it can, so nothing is allocated or initialised twice
and the global RNG is untouched; see :func:`instantiate`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ArchitectureError, ForbiddenClassError
from ._capture import NoCapture, capture_args
from ._spec import SPEC_FORMAT, Resolver, decode_value

__all__ = ["Builder", "instantiate", "check_spec", "apply_modes"]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def check_spec(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict) or not isinstance(spec.get("root"), dict):
        raise ArchitectureError(f"{where}: the model spec is malformed; the file is damaged.")
    fmt = spec.get("format")
    if fmt != SPEC_FORMAT:
        raise ArchitectureError(
            f"{where}: model spec format {fmt!r} is not {SPEC_FORMAT!r}; it was written by a newer "
            f"torchkeep. Upgrade torchkeep to load it."
        )
    return spec


class Builder:
    def __init__(self, spec: dict[str, Any], resolver: Resolver) -> None:
        self.resolver = resolver
        self.where = resolver.where
        self.nodes: dict[str, dict[str, Any]] = {}
        self.built: dict[str, nn.Module] = {}
        self._building: set[str] = set()  # modules being made now: a reference back to one is a cycle
        self._walk(spec["root"], "", 0)

    def _walk(self, node: Any, path: str, depth: int) -> None:
        if not isinstance(node, dict) or depth > 500:
            raise ArchitectureError(f"{self.where}: the model spec node at '{path or '<root>'}' is malformed; the file is damaged.")
        self.nodes[path] = node
        children = node.get("children", {})
        if not isinstance(children, dict):
            raise ArchitectureError(f"{self.where}: the children of '{path or '<root>'}' are malformed; the file is damaged.")
        for name, child in children.items():
            if child is not None:
                self._walk(child, _join(path, name), depth + 1)

    def build(self) -> nn.Module:
        return self.get("")

    def get(self, path: str) -> nn.Module:
        if path in self.built:
            return self.built[path]
        node = self.nodes.get(path)
        if node is None:
            raise ArchitectureError(f"{self.where}: the model spec refers to module '{path}', which it does not describe; the file is damaged.")
        if path in self._building:
            raise ArchitectureError(f"{self.where}: the model spec's module '{path}' refers back to itself; the file is damaged.")
        self._building.add(path)
        try:
            if "ref" in node:
                m = self.get(str(node["ref"]))
                self.built[path] = m
                return m
            m = self._construct(path, node)
            self.built[path] = m
        finally:
            self._building.discard(path)
        self._reconcile(path, m, node)
        return m

    def _construct(self, path: str, node: dict[str, Any]) -> nn.Module:
        shown = f"'{path or '<root>'}' ({node.get('class')})"
        cls = self.resolver.resolve(node.get("class"), "class")
        if node.get("by_parent"):
            raise ArchitectureError(
                f"{self.where}: module {shown} was made by its parent's constructor when saved, but the "
                f"parent's constructor no longer makes it (the parent class changed?). Fix: restore the "
                f"parent's code, or map it with class_map to a class that makes this child."
            )
        if node.get("container"):
            return cls()

        def module_ref(rel: str) -> nn.Module:
            return self.get(_join(path, rel))

        raw_args, raw_kwargs = node.get("args", []), node.get("kwargs", {})
        if not isinstance(raw_args, list) or not isinstance(raw_kwargs, dict):
            raise ArchitectureError(f"{self.where}: the constructor arguments of module {shown} are malformed; the file is damaged. Save the model again.")
        args = [decode_value(a, self.resolver, module_ref, f"{shown} argument {i}") for i, a in enumerate(raw_args)]
        kwargs = {k: decode_value(v, self.resolver, module_ref, f"{shown} argument {k!r}") for k, v in raw_kwargs.items()}
        try:
            return cls(*args, **kwargs)
        except ForbiddenClassError:
            raise
        except Exception as e:
            call = ", ".join([*(repr(a) for a in args), *(f"{k}={v!r}" for k, v in kwargs.items())])
            raise ArchitectureError(
                f"{self.where}: rebuilding module {shown} failed: {cls.__qualname__}({call[:300]}) raised "
                f"{type(e).__name__}: {e}. If the class's constructor changed since the file was saved, "
                f"map the old class to a compatible one with class_map."
            ) from e

    def _matches(self, existing: nn.Module, node: dict[str, Any]) -> bool:
        if "ref" in node:
            return False
        if type(existing) is not self.resolver.resolve(node.get("class"), "class"):
            return False
        if node.get("container") or node.get("by_parent"):
            return True
        try:
            args, kwargs = capture_args(existing)
        except NoCapture:
            return False
        return args == node.get("args", []) and kwargs == node.get("kwargs", {})

    def _reconcile(self, path: str, m: nn.Module, node: dict[str, Any]) -> None:
        new: dict[str, nn.Module | None] = {}
        for name, child in node.get("children", {}).items():
            cp = _join(path, name)
            if child is None:
                new[name] = None
            elif cp in self.built or "ref" in child:
                new[name] = self.get(cp)
            else:
                existing = m._modules.get(name)
                if existing is not None and self._matches(existing, child):
                    self.built[cp] = existing
                    self._reconcile(cp, existing, child)
                    new[name] = existing
                else:
                    new[name] = self.get(cp)
        m._modules.clear()
        m._modules.update(new)


def apply_modes(model: nn.Module, spec: dict[str, Any]) -> None:
    """Restore each module's saved train/eval flag and the saved frozen parameters."""
    names = dict(model.named_modules(remove_duplicate=False))

    def walk(node: dict[str, Any], path: str) -> None:
        if "ref" in node:
            return
        m = names.get(path)
        if m is not None and "training" in node:
            m.training = bool(node["training"])
        for name, child in node.get("children", {}).items():
            if child is not None:
                walk(child, _join(path, name))

    walk(spec["root"], "")
    for name in spec.get("frozen", []):
        try:
            model.get_parameter(name).requires_grad_(False)
        except AttributeError:
            pass


def _stray_meta(model: nn.Module) -> bool:
    """Tensors the state dict will not fill: non-persistent buffers, plain tensor attributes."""
    for mod in model.modules():
        for name, b in mod._buffers.items():
            if b is not None and name in mod._non_persistent_buffers_set:
                return True
        for v in mod.__dict__.values():
            if isinstance(v, torch.Tensor) and v.is_meta:
                return True
    return False


def instantiate(spec: dict[str, Any], resolver: Resolver) -> tuple[nn.Module, bool]:
    """Build the model; returns ``(model, on_meta)``.

    First on the meta device (no memory, no RNG use); if a constructor cannot run there or
    leaves tensors the state dict does not cover, again on CPU with the global RNG state
    restored afterwards.
    """
    try:
        with torch.device("meta"):
            model = Builder(spec, resolver).build()
        if not _stray_meta(model):
            return model, True
    except ForbiddenClassError:
        raise
    except Exception:  # noqa: BLE001 - meta-unfriendly constructor: build for real below
        pass
    with torch.random.fork_rng(devices=[]):
        return Builder(spec, resolver).build(), False
