"""tk.load_into: discover -> align -> validate -> apply.

1. discover: open the source (lazily for files: names, shapes and dtypes from the header,
   no tensor data) and find the state dict inside it (:mod:`._containers`);
2. align: a pure plan from names and shapes (:mod:`._align`);
3. validate: the whole plan, before anything changes; a strict failure raises with every key;
4. apply: each tensor is read straight into the model's parameter or buffer (or, with
   ``assign=True``, replaces it), so the model is never held twice in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from .._io.fs import resolve
from .._io.gcpause import gc_paused
from ..errors import KeyMismatchError, TorchkeepError
from ..formats import LazyTensor, open_lazy, read_many_into
from ..formats._base import MapLocation
from ._align import Plan, align
from ._containers import alternatives, find_state_dict
from ._rename import RenameRule
from ._report import LoadReport

__all__ = ["load_into"]

_ON_MISMATCH = ("error", "skip", "partial")


@gc_paused
def load_into(
    model: nn.Module,
    source: "str | os.PathLike[str] | Mapping[str, Any] | nn.Module",
    *,
    strict: bool = True,
    rename: RenameRule = None,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    on_mismatch: str = "error",
    map_location: MapLocation = None,
    dtype: torch.dtype | None = None,
    key: str | None = None,
    assign: bool = False,
    dry_run: bool = False,
) -> LoadReport:
    """Load the weights in ``source`` into ``model``, matching names; return what happened.

    ``source`` is a path in any format :func:`torchkeep.load` reads, a mapping (a state dict
    or a whole checkpoint) or a module. The state dict is found inside common layouts
    (``state_dict``, ``model_state_dict``, ``model`` ...; ``key=`` picks one explicitly).
    Names are aligned by user ``rename=`` rules, then wrapper prefixes (``module.``,
    ``_orig_mod.``, ``model.`` ...) chosen by what makes names match, then unique
    dot-bounded suffixes with equal shapes. ``include``/``exclude`` are globs on model names.

    ``on_mismatch``: a shape mismatch raises (``"error"``), is left as it is (``"skip"``) or
    gets the overlapping slice copied (``"partial"``). ``strict=True`` raises when anything is
    missing or unexpected, listing every key; ``strict=False`` loads what fits. The whole plan
    is validated before the model changes: when this raises, the model is untouched.

    Tensors are copied into the existing parameters and buffers (keeping their device and
    dtype). ``assign=True`` (for meta-device models) replaces them with the loaded tensors,
    moved by ``map_location`` and cast by ``dtype`` (floating tensors), keeping each
    parameter's ``requires_grad``. ``dry_run=True`` returns the report and changes nothing.
    """
    if not isinstance(model, nn.Module):
        raise TorchkeepError(f"load_into: model must be an nn.Module, not {type(model).__name__}.")
    if on_mismatch not in _ON_MISMATCH:
        raise TorchkeepError(f"load_into: on_mismatch must be one of {', '.join(map(repr, _ON_MISMATCH))}, not {on_mismatch!r}.")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TorchkeepError(f"load_into: dtype must be a torch.dtype such as torch.float16, not {dtype!r}.")
    if assign and on_mismatch == "partial":
        raise TorchkeepError('load_into: on_mismatch="partial" copies into existing tensors; it cannot be combined with assign=True.')

    if isinstance(source, nn.Module):
        source = source.state_dict()
    if isinstance(source, Mapping):
        where, ctx = "<mapping>", nullcontext(source)
    else:
        loc = resolve(source).require()
        where, ctx = str(source), open_lazy(loc)

    with ctx as tree:
        # 1. discover
        container, sd = find_state_dict(tree, key=key, where=where)
        targets = {k: v for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)}
        # 2. align
        plan = align({k: v.shape for k, v in sd.items()}, {k: v.shape for k, v in targets.items()},
                     rename=rename, include=include, exclude=exclude)
        report = _report(plan, sd, targets, where, container, alternatives(tree, container) if key is None else [], dry_run)
        partial = [(s, t) for s, t, a, b in plan.mismatched if on_mismatch == "partial" and len(a) == len(b)]
        report.partial = [t for _, t in partial]
        # 3. validate, before anything changes
        if (strict and (report.missing or report.unexpected)) or (report.mismatched and on_mismatch == "error"):
            raise KeyMismatchError(report.error_message(strict=strict, on_mismatch=on_mismatch))
        if assign:
            owners = _owners(model, [t for _, t in plan.pairs])
        else:
            meta = [t for _, t in plan.pairs + partial if targets[t].device.type == "meta"]
            if meta:
                raise TorchkeepError(
                    f"load_into: the model holds meta tensors ({', '.join(meta[:5])}{' ...' if len(meta) > 5 else ''}), "
                    "which have no memory to copy into. Fix: pass assign=True. Nothing was changed."
                )
        if dry_run:
            return report
        # 4. apply
        if assign:
            _assign(model, plan, sd, targets, owners, map_location, dtype, where)
        else:
            _copy(plan, sd, targets, partial)
    return report


def _report(plan: Plan, sd: Mapping[str, Any], targets: Mapping[str, torch.Tensor], where: str, container: str,
            alts: list[str], dry_run: bool) -> LoadReport:
    loaded = [t for _, t in plan.pairs]
    storage = {id(targets[t]) for t in loaded}
    tied = [t for t in plan.missing if id(targets[t]) in storage]  # shares a loaded tensor (tied weights)
    missing = [t for t in plan.missing if t not in set(tied)]
    reason = {s: "rule" for s in plan.by_rule}
    reason.update({s: "suffix" for s in plan.by_suffix})
    return LoadReport(
        loaded=loaded + tied,
        missing=missing,
        unexpected=list(plan.unexpected),
        mismatched=[(t, tuple(a), tuple(b)) for _, t, a, b in plan.mismatched],
        renamed=dict(plan.renamed),
        skipped=list(plan.skipped),
        ambiguous={k: list(v) for k, v in plan.ambiguous.items()},
        source=where,
        container=container,
        prefix=plan.prefix.describe(),
        alternatives=alts,
        dry_run=dry_run,
        rename_reason=reason,
        shapes={k: tuple(v.shape) for k, v in targets.items()},
        source_shapes={k: tuple(v.shape) for k, v in sd.items()},
    )


def _copy(plan: Plan, sd: Mapping[str, Any], targets: Mapping[str, torch.Tensor], partial: list[tuple[str, str]]) -> None:
    lazy: list[tuple[LazyTensor, torch.Tensor]] = []
    with torch.no_grad():
        for s, t in plan.pairs:
            src, dest = sd[s], targets[t]
            if isinstance(src, LazyTensor):
                lazy.append((src, dest))
            elif hasattr(src, "read") and not isinstance(src, torch.Tensor):
                src.read_into(dest)
            else:
                dest.copy_(src)
        read_many_into(lazy)
        for s, t in partial:
            src, dest = sd[s], targets[t]
            if not isinstance(src, torch.Tensor):
                src = src.read()
            idx = tuple(slice(0, min(a, b)) for a, b in zip(src.shape, dest.shape))
            dest[idx].copy_(src[idx])


def _owners(model: nn.Module, keys: list[str]) -> dict[str, tuple[nn.Module, str, bool]]:
    """(module, attribute, is_parameter) for each key; every key must resolve (checked first)."""
    out: dict[str, tuple[nn.Module, str, bool]] = {}
    bad = []
    for k in keys:
        mod_path, _, name = k.rpartition(".")
        try:
            mod = model.get_submodule(mod_path) if mod_path else model
        except AttributeError:
            bad.append(k)
            continue
        if name in mod._parameters and mod._parameters[name] is not None:
            out[k] = (mod, name, True)
        elif name in mod._buffers and mod._buffers[name] is not None:
            out[k] = (mod, name, False)
        else:
            bad.append(k)
    if bad:
        raise TorchkeepError(
            f"load_into(assign=True): these state-dict keys are not plain parameters or buffers of the model, so "
            f"they cannot be replaced: {', '.join(bad)}. Fix: materialize the model (to_empty) and load without assign. "
            "Nothing was changed."
        )
    return out


def _device(map_location: MapLocation, old: torch.Tensor) -> torch.device | None:
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    if map_location is None:
        return torch.device("cpu") if old.device.type == "meta" else None
    raise TorchkeepError("load_into(assign=True): map_location must be a device (e.g. 'cpu', 'cuda:0') or None.")


def _assign(model: nn.Module, plan: Plan, sd: Mapping[str, Any], targets: Mapping[str, torch.Tensor],
            owners: Mapping[str, tuple[nn.Module, str, bool]], map_location: MapLocation, dtype: torch.dtype | None,
            where: str) -> None:
    aliases: dict[int, list[str]] = {}
    for k, v in targets.items():
        aliases.setdefault(id(v), []).append(k)
    all_owners = dict(owners)
    for s, t in plan.pairs:
        for k in aliases[id(targets[t])]:
            if k not in all_owners:
                try:
                    all_owners.update(_owners(model, [k]))
                except TorchkeepError:
                    pass
    done: set[int] = set()
    for s, t in plan.pairs:
        old = targets[t]
        if id(old) in done:
            continue
        done.add(id(old))
        src = sd[s]
        dev = _device(map_location, old)
        cast = dtype if dtype is not None and src.dtype.is_floating_point else None
        if isinstance(src, torch.Tensor):
            new = src.detach().to(device=dev, dtype=cast) if (dev is not None or cast is not None) else src.detach()
        else:
            new = src.read(device=dev, dtype=cast)
        for k in aliases[id(old)]:
            if k not in all_owners:
                continue
            mod, name, is_param = all_owners[k]
            if is_param:
                mod._parameters[name] = nn.Parameter(new, requires_grad=old.requires_grad)
            else:
                mod._buffers[name] = new
