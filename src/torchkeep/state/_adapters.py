"""How each kind of object in a TrainState is saved, checked and restored.

Every adapter has the same three steps so that a restore can check every entry before it
changes any: ``save() -> tree``, ``check(tree) -> [problems]``, ``load(tree)``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, MutableMapping
from typing import Any, Callable

import numpy as np
import torch

from ..errors import UnsupportedTypeError
from . import _optim
from ._rng import capture_rng, check_rng, restore_rng
from ._stateful import Stateful

__all__ = ["Adapter", "adapter_for", "unwrap_module", "storable", "copy_structure"]

_LEAVES = (type(None), bool, int, float, str, bytes, torch.Tensor, np.ndarray, np.generic, torch.dtype, torch.device)
_DROPPED = object()


def storable(obj: Any, path: str, dropped: list[str]) -> Any:
    """``obj`` with every value :func:`torchkeep.save` cannot store removed (dict entries) or
    replaced by None (list items); their paths are appended to ``dropped``."""
    if isinstance(obj, _LEAVES):
        return obj
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool, type(None), tuple)):
                dropped.append(f"{path}[{k!r}]")
                continue
            v2 = storable(v, f"{path}.{k}", dropped)
            if v2 is _DROPPED:
                dropped.append(f"{path}.{k}")
            else:
                out[k] = v2
        return out
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        items = []
        for i, v in enumerate(obj):
            v2 = storable(v, f"{path}[{i}]", dropped)
            if v2 is _DROPPED:
                dropped.append(f"{path}[{i}]")
                v2 = None
            items.append(v2)
        return type(obj)(items) if isinstance(obj, tuple) else items
    return _DROPPED


def copy_structure(tree: Any) -> Any:
    """Copy dicts, lists and tuples; share tensors and leaves (loaders may pop keys)."""
    if isinstance(tree, Mapping):
        return {k: copy_structure(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [copy_structure(v) for v in tree]
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return tuple(copy_structure(v) for v in tree)
    return tree


def unwrap_module(module: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DataParallel / DistributedDataParallel / torch.compile wrappers,
    so the checkpoint's names do not depend on how the run was launched."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if isinstance(inner, torch.nn.Module):
            module = inner
            continue
        if isinstance(module, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            module = module.module
            continue
        return module


class Adapter:
    """One named entry of a TrainState."""

    kind = "stateful"

    def __init__(self, name: str, obj: Any) -> None:
        self.name = name
        self.obj = obj

    def save(self, ctx: Any) -> Any:
        return self.obj.state_dict()

    def check(self, tree: Any, ctx: Any) -> list[str]:
        check = getattr(self.obj, "_check_state_dict", None)
        return list(check(tree, self.name)) if callable(check) else []

    def load(self, tree: Any, ctx: Any) -> None:
        self.obj.load_state_dict(tree)


class ModuleAdapter(Adapter):
    kind = "module"

    def __init__(self, name: str, obj: Any) -> None:
        super().__init__(name, obj)
        self.module = unwrap_module(obj)

    def save(self, ctx: Any) -> Any:
        return dict(self.module.state_dict())

    def check(self, tree: Any, ctx: Any) -> list[str]:
        w = self.name
        if not isinstance(tree, Mapping):
            return [f"{w}: expected a state dict (name -> tensor), got {type(tree).__name__}"]
        mine = self.module.state_dict()
        problems = []
        missing = [k for k in mine if k not in tree]
        extra = [k for k in tree if k not in mine]
        if missing:
            problems.append(f"{w}: keys in the model but not in the checkpoint: {_optim._list(missing)}")
        if extra:
            problems.append(f"{w}: keys in the checkpoint but not in the model: {_optim._list(extra)}")
        for k, t in mine.items():
            s = tree.get(k)
            if isinstance(t, torch.Tensor) and isinstance(s, torch.Tensor):
                if t.shape != s.shape:
                    problems.append(f"{w}: {k!r} has shape {list(t.shape)} in the model, {list(s.shape)} in the checkpoint")
                elif t.dtype != s.dtype:
                    problems.append(
                        f"{w}: {k!r} is {t.dtype} in the model, {s.dtype} in the checkpoint "
                        f"(convert the model with .to({s.dtype}) before restoring to resume exactly)"
                    )
            elif isinstance(t, torch.Tensor) and k in tree:
                problems.append(f"{w}: {k!r} is a tensor in the model, a {type(s).__name__} in the checkpoint")
        return problems

    def load(self, tree: Any, ctx: Any) -> None:
        # copies into the existing parameters and buffers, on their devices
        self.module.load_state_dict(dict(tree), strict=True)


class OptimizerAdapter(Adapter):
    kind = "optimizer"

    def save(self, ctx: Any) -> Any:
        return _optim.save_optimizer(self.obj, ctx.param_names(), self.name)

    def check(self, tree: Any, ctx: Any) -> list[str]:
        return _optim.check_optimizer(self.obj, tree, ctx.param_names(), self.name)

    def load(self, tree: Any, ctx: Any) -> None:
        _optim.load_optimizer(self.obj, tree, ctx.param_names(), self.name)


class _TypedAdapter(Adapter):
    """Objects whose own state_dict is stored as ``{"type", "state"}`` (schedulers, scalers)."""

    check_type = True

    def save(self, ctx: Any) -> Any:
        dropped: list[str] = []
        state = storable(self.obj.state_dict(), self.name, dropped)
        out: dict[str, Any] = {"type": _optim.type_name(self.obj), "state": state}
        if dropped:  # e.g. a user scheduler holding a function: it stays as the code defines it
            out["dropped"] = dropped
        return out

    def check(self, tree: Any, ctx: Any) -> list[str]:
        if not (isinstance(tree, Mapping) and "state" in tree and isinstance(tree["state"], Mapping)):
            return [f"{self.name}: expected {{'type', 'state'}} as saved by a TrainState {self.kind}"]
        if self.check_type and tree.get("type") != _optim.type_name(self.obj):
            return [f"{self.name}: saved from a {tree.get('type')}, restoring into a {_optim.type_name(self.obj)}"]
        return []

    def load(self, tree: Any, ctx: Any) -> None:
        self.obj.load_state_dict(copy_structure(tree["state"]))


class SchedulerAdapter(_TypedAdapter):
    kind = "scheduler"


class ScalerAdapter(_TypedAdapter):
    kind = "scaler"
    check_type = False  # torch.cuda.amp.GradScaler and torch.amp.GradScaler hold the same state

    def check(self, tree: Any, ctx: Any) -> list[str]:
        problems = super().check(tree, ctx)
        if not problems and self.obj.is_enabled() and not tree["state"]:
            problems.append(
                f"{self.name}: the checkpoint's GradScaler was disabled (empty state), this one is enabled; "
                f"construct it with enabled=False to match, or drop it from the TrainState"
            )
        return problems


class DictAdapter(Adapter):
    """A plain dict of JSON values (epoch, best metric, ...): restored into the same dict."""

    kind = "dict"

    def save(self, ctx: Any) -> Any:
        dropped: list[str] = []
        out = storable(self.obj, self.name, dropped)
        if dropped:
            raise UnsupportedTypeError(
                f"TrainState entry {self.name!r} holds values that cannot be stored without pickle: "
                f"{', '.join(dropped)}. Keep ints, floats, strings, bools, None, tensors and "
                f"lists/dicts of them in it."
            )
        return copy.deepcopy(copy_structure(out))

    def check(self, tree: Any, ctx: Any) -> list[str]:
        return [] if isinstance(tree, Mapping) else [f"{self.name}: expected a dict, got {type(tree).__name__}"]

    def load(self, tree: Any, ctx: Any) -> None:
        self.obj.update(copy_structure(tree))


class RNGAdapter(Adapter):
    kind = "rng"

    def save(self, ctx: Any) -> Any:
        return capture_rng()

    def check(self, tree: Any, ctx: Any) -> list[str]:
        return check_rng(tree, self.name)

    def load(self, tree: Any, ctx: Any) -> None:
        restore_rng(tree, self.name)


def _is_scheduler(obj: Any) -> bool:
    from torch.optim import lr_scheduler

    return isinstance(obj, (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau))


def _is_scaler(obj: Any) -> bool:
    return isinstance(obj, torch.amp.GradScaler)


# Which adapter an object gets: the first predicate that holds. Data, not nested ifs.
KINDS: list[tuple[Callable[[Any], bool], type[Adapter]]] = [
    (lambda o: isinstance(o, torch.nn.Module), ModuleAdapter),
    (lambda o: isinstance(o, torch.optim.Optimizer), OptimizerAdapter),
    (_is_scheduler, SchedulerAdapter),
    (_is_scaler, ScalerAdapter),
    (lambda o: isinstance(o, Stateful), Adapter),
    (lambda o: isinstance(o, MutableMapping), DictAdapter),
]


def adapter_for(name: str, obj: Any) -> Adapter:
    for pred, cls in KINDS:
        if pred(obj):
            return cls(name, obj)
    hint = (
        f" Plain values are restored in place only inside a dict: TrainState(..., {name}={{'value': {obj!r}}})"
        if isinstance(obj, (int, float, str, bool, type(None)))
        else ""
    )
    raise UnsupportedTypeError(
        f"TrainState entry {name!r} is a {type(obj).__module__}.{type(obj).__qualname__}, which has no "
        f"state_dict()/load_state_dict(). Pass modules, optimizers, LR schedulers, GradScalers, "
        f"ResumableLoaders, dicts, or objects with those two methods.{hint}"
    )
