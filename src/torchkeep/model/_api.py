"""tk.save_model / tk.load_model: the whole model as one safetensors file, no pickle."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .._io import jsonio
from .._io.fs import Location, resolve
from ..errors import ArchitectureError, CorruptCheckpointError, TorchkeepError
from ..formats import safetensors as st
from ..formats._base import MapLocation
from ._build import apply_modes, check_spec, instantiate
from ._capture import FIX, capture_model
from ._spec import SPEC_KEY, Resolver

__all__ = ["save_model", "load_model", "read_spec", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    export: bool = False,
    example_inputs: Any = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Save the whole model: weights as safetensors, the architecture as JSON in its header.

    Every module's class and constructor call is captured (torch.nn layers automatically,
    your classes via ``@torchkeep.keep_args`` or attributes named like their constructor
    parameters); the capture is rebuilt on the meta device and checked key by key before
    anything is written, so a file that is written loads. ``export=True`` also writes a
    ``torch.export`` program traced in eval mode on ``example_inputs`` to ``path + ".pt2"``
    (see :func:`load_exported`). Wrappers (DataParallel, DDP, torch.compile) are unwrapped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_model saves an nn.Module, not {type(model).__name__}; use torchkeep.save for trees.")
    model = unwrap(model)
    loc = resolve(path)
    spec = capture_model(model)
    _verify(model, spec, str(loc))
    tensors, meta = st.encode_tree(model.state_dict(), metadata)
    meta[SPEC_KEY] = json.dumps(spec, separators=(",", ":"), allow_nan=False)
    if export:
        from ._export import EXPORT_KEY, export_bytes, sidecar, write_sidecar

        blob = export_bytes(model, example_inputs)
        side = sidecar(loc)
        meta[EXPORT_KEY] = json.dumps(write_sidecar(side, blob), separators=(",", ":"))
    elif example_inputs is not None:
        raise TypeError("example_inputs is only used with export=True")
    st.write(loc, tensors, meta)


def _verify(model: nn.Module, spec: dict[str, Any], where: str) -> None:
    """Rebuild the captured spec (meta device when possible) and compare keys, shapes, classes."""
    try:
        rebuilt, _ = instantiate(spec, Resolver(trust_all=True, where=where))
    except ArchitectureError as e:
        raise ArchitectureError(f"{e}\nThe captured architecture does not rebuild, so nothing was written. Fix: {FIX}.") from e
    again = capture_model(rebuilt)
    changed = _spec_diff(_strip(spec["root"]), _strip(again["root"]), "")
    if changed:
        raise ArchitectureError(
            f"{where}: the captured constructor arguments do not rebuild the model (nothing was written): "
            f"rebuilt from the captured arguments, {'; '.join(changed[:10])}. Attributes named like "
            f"constructor parameters probably hold changed values. Fix: {FIX}, so the call is recorded as made."
        )
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    want_cls = {n: type(m) for n, m in model.named_modules()}
    got_cls = {n: type(m) for n, m in rebuilt.named_modules()}
    problems = [f"missing {k!r} {want[k]}" for k in want if k not in got]
    problems += [f"unexpected {k!r} {got[k]}" for k in got if k not in want]
    problems += [f"{k!r}: saved {want[k]}, rebuilt {got[k]}" for k in want if k in got and want[k] != got[k]]
    problems += [f"module '{n}': {want_cls[n].__qualname__} rebuilt as {got_cls.get(n).__qualname__}" for n in want_cls if n in got_cls and got_cls[n] is not want_cls[n]]
    if problems:
        owners = sorted({_owner(model, p.split("'")[1]) for p in problems if "'" in p})
        raise ArchitectureError(
            f"{where}: the captured constructor arguments do not rebuild the model (nothing was written). "
            f"Differences: " + "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
            + f". Likely wrong capture in: {', '.join(owners)}. Fix: {FIX} so the call is recorded as made "
            "(attributes named like constructor parameters may hold changed values)."
        )


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "training"}
    return node


def _spec_diff(a: Any, b: Any, path: str) -> list[str]:
    """Where two spec trees differ: the module path and what its capture became."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [f"module '{path or '<root>'}' differs"]
    out = []
    if a.get("class") != b.get("class"):
        return [f"module '{path or '<root>'}' is {a.get('class')} but rebuilt as {b.get('class')}"]
    for key in ("args", "kwargs", "ref", "container", "by_parent"):
        if a.get(key) != b.get(key):
            out.append(f"module '{path or '<root>'}' ({a.get('class')}) has {key} {a.get(key)} but {b.get(key)} after rebuilding")
    ac, bc = a.get("children") or {}, b.get("children") or {}
    if list(ac) != list(bc):
        out.append(f"module '{path or '<root>'}' has children {list(ac)} but {list(bc)} after rebuilding")
    for name in ac:
        if name in bc:
            out += _spec_diff(ac[name], bc[name], f"{path}.{name}" if path else name)
    return out


def _owner(model: nn.Module, key: str) -> str:
    """The deepest module whose class is not torch's that owns ``key`` (the likely culprit)."""
    parts = key.split(".")
    best = type(model).__qualname__
    mod: Any = model
    for i, p in enumerate(parts):
        mod = getattr(mod, "_modules", {}).get(p)
        if mod is None:
            break
        if not type(mod).__module__.startswith("torch."):
            best = f"'{'.'.join(parts[: i + 1])}' ({type(mod).__qualname__})"
    return best


def read_spec(loc: Location, header: st.Header) -> dict[str, Any]:
    raw = header.metadata.get(SPEC_KEY)
    if raw is None:
        raise ArchitectureError(
            f"{loc}: this file has weights but no architecture (it was not written by "
            f"torchkeep.save_model). Build the model in code and load it with "
            f"torchkeep.load_into(model, path), or re-save with torchkeep.save_model."
        )
    spec = jsonio.loads(raw, what="the model spec", path=loc, expect=None, fix="the file is damaged; save the model again")
    return check_spec(spec, str(loc))


def load_model(
    path: str | os.PathLike[str],
    *,
    map_location: MapLocation = None,
    class_map: Mapping[str, str] | Callable[[str], str | None] | None = None,
    allow: Iterable[str] | str = (),
    eval: bool = True,  # noqa: A002 - the documented name
) -> nn.Module:
    """Rebuild a model written by :func:`save_model` and load its weights.

    Only classes (and enums, dataclasses, functions named in constructor arguments) from
    ``torch`` and from the module prefixes in ``allow`` are imported; anything else raises
    :class:`ForbiddenClassError` before any import. ``class_map`` maps saved class paths (or
    module prefixes) to new ones, ``{"old.mod.Net": "new.mod.Net"}``, or is a callable
    ``old -> new | None``; mapped targets obey ``allow`` too. ``map_location`` works as in
    ``torch.load`` (default: CPU). The model is returned in ``eval()`` mode; ``eval=False``
    restores each module's train/eval flag as it was saved. Parameters frozen when saved
    (``requires_grad=False``) stay frozen.
    """
    loc = resolve(path).require("model file")
    with loc.open_source() as src:
        header = st.read_header(src)
        spec = read_spec(loc, header)
        try:
            model, on_meta = instantiate(spec, Resolver(allow=allow, class_map=class_map, where=str(loc)))
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as e:
            if isinstance(e, TorchkeepError):
                raise
            # check_spec validates the outline; a malformed node deeper down ends here
            raise ArchitectureError(
                f"{loc}: rebuilding the model from its saved architecture failed ({type(e).__name__}: {str(e)[:200]}). "
                f"The file is damaged, or a class changed since it was saved: save the model again, or map the "
                f"old class to a compatible one with class_map."
            ) from None
        tensors = st.read_tensors(src, header, map_location=map_location if map_location is not None else "cpu")
        state = st.decode_tree(header, tensors)
    _load_weights(model, state, on_meta, str(loc))
    apply_modes(model, spec)
    if eval:
        model.eval()
    return model


def _check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """The rebuilt model's keys and shapes must be exactly the saved weights'."""
    sd = model.state_dict()
    missing = sorted(set(sd) - set(state))
    unexpected = sorted(set(state) - set(sd))
    shapes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}" for k, v in sd.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise ArchitectureError(
            f"{where}: the rebuilt model does not fit the saved weights (the class code changed since "
            f"saving, or the file is damaged?): missing {missing[:20]}, unexpected {unexpected[:20]}, shape mismatches "
            f"{shapes[:20]}. Fix: restore the class's old code, or map the old class to a compatible one with class_map."
        )


def _load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], on_meta: bool, where: str) -> None:
    if not isinstance(state, Mapping):
        raise CorruptCheckpointError(f"{where}: the weights are not a flat state dict; the file is damaged.")
    # checked while the model is still on meta: the architecture comes from the file, and a
    # damaged or hostile one must not get to allocate what the weights do not back
    _check_fits(model, state, where)
    devices = {t.device for t in state.values()}
    device = next(iter(devices)) if len(devices) == 1 else torch.device("cpu")
    if on_meta or device.type != "cpu":
        # moving off meta makes new Parameter objects per module: re-tie shared ones after
        shared: dict[int, list[tuple[nn.Module, str]]] = {}
        for mod in model.modules():
            for name, p in mod._parameters.items():
                if p is not None:
                    shared.setdefault(id(p), []).append((mod, name))
        if on_meta:
            model.to_empty(device=device)
        else:
            model.to(device)
        for (mod0, name0), *rest in shared.values():
            for mod, name in rest:
                mod._parameters[name] = mod0._parameters[name0]
    for prefix, mod in model.named_modules(remove_duplicate=False):
        pre = f"{prefix}." if prefix else ""
        for name, p in mod._parameters.items():
            saved = state.get(pre + name)
            if p is not None and saved is not None and saved.dtype != p.dtype:
                p.data = torch.empty_like(p.data, dtype=saved.dtype)
        for name, b in mod._buffers.items():
            saved = state.get(pre + name)
            if b is not None and saved is not None and saved.dtype != b.dtype:
                mod._buffers[name] = torch.empty_like(b, dtype=saved.dtype)
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
