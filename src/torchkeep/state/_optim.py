"""Optimizer state keyed by parameter name, so a restore maps by name, not by position.

torch stores optimizer state under integer positions (the order of ``param_groups``).
Positions silently shift when parameters are reordered, added or frozen; names do not.
The stored layout keeps torch's and replaces positions with names::

    {"type": "torch.optim.adamw.AdamW",
     "state": {"model.fc.weight": {"step": tensor, "exp_avg": tensor, ...}, ...},
     "param_groups": [{"lr": 0.001, ..., "params": ["model.fc.weight", ...]}],
     "param_shapes": {"model.fc.weight": [10, 4], ...}}

Names come from the modules of the same TrainState (``<entry>.<parameter name>``). A
parameter no module owns is named by its position, ``"#<index>"``, and a warning says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import StateMismatchError

__all__ = ["type_name", "param_names", "save_optimizer", "check_optimizer", "load_optimizer"]


def type_name(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def param_names(modules: Mapping[str, torch.nn.Module]) -> dict[int, str]:
    """``id(parameter) -> "<entry>.<name>"`` over the given modules; the first owner wins."""
    names: dict[int, str] = {}
    for entry, module in modules.items():
        for pname, p in module.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), f"{entry}.{pname}")
    return names


def _flat(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def _names(opt: torch.optim.Optimizer, names: Mapping[int, str]) -> list[str]:
    return [names.get(id(p), f"#{i}") for i, p in enumerate(_flat(opt))]


def _group_names(opt: torch.optim.Optimizer, flat_names: list[str]) -> list[list[str]]:
    out, i = [], 0
    for g in opt.param_groups:
        out.append(flat_names[i : i + len(g["params"])])
        i += len(g["params"])
    return out


def save_optimizer(opt: torch.optim.Optimizer, names: Mapping[int, str], where: str) -> dict[str, Any]:
    flat_names = _names(opt, names)
    unnamed = [n for n in flat_names if n.startswith("#")]
    if unnamed:
        warnings.warn(
            f"{where}: {len(unnamed)} parameter(s) of this optimizer belong to no module of the TrainState; "
            f"their state is stored by position ({', '.join(unnamed[:5])}{', ...' if len(unnamed) > 5 else ''}) "
            f"and will be wrong if the parameter order changes. Fix: add the module that owns them to the TrainState.",
            stacklevel=4,
        )
    sd = opt.state_dict()
    groups = []
    for g in sd["param_groups"]:
        out = {k: v for k, v in g.items() if k != "params"}
        out["params"] = [flat_names[i] for i in g["params"]]
        groups.append(out)
    flat = _flat(opt)
    return {
        "type": type_name(opt),
        "state": {flat_names[i]: v for i, v in sd["state"].items()},
        "param_groups": groups,
        "param_shapes": {n: list(p.shape) for n, p in zip(flat_names, flat)},
    }


def _list(names: Any) -> str:
    names = sorted(names, key=str)
    return ", ".join(map(repr, names[:20])) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


def check_optimizer(opt: torch.optim.Optimizer, tree: Any, names: Mapping[int, str], where: str) -> list[str]:
    """Every way ``tree`` does not fit ``opt`` (empty list: it fits)."""
    if not (isinstance(tree, Mapping) and {"type", "state", "param_groups"} <= set(tree)):
        return [f"{where}: not a torchkeep optimizer state (expected keys 'type', 'state', 'param_groups')"]
    problems = []
    if tree["type"] != type_name(opt):
        problems.append(f"{where}: saved from a {tree['type']}, restoring into a {type_name(opt)}")
    flat_names = _names(opt, names)
    current = _group_names(opt, flat_names)
    saved = tree["param_groups"]
    if not isinstance(saved, (list, tuple)) or not all(isinstance(g, Mapping) and "params" in g for g in saved):
        return problems + [f"{where}.param_groups: malformed (expected a list of dicts with 'params')"]
    if len(saved) != len(current):
        problems.append(f"{where}: saved with {len(saved)} param group(s), this optimizer has {len(current)}")
    for gi, (s, c) in enumerate(zip(saved, current)):
        s_names, c_names = list(s["params"]), c
        missing = set(c_names) - set(s_names)
        extra = set(s_names) - set(c_names)
        if missing:
            problems.append(f"{where}.param_groups[{gi}]: parameters not in the checkpoint: {_list(missing)}")
        if extra:
            problems.append(f"{where}.param_groups[{gi}]: checkpoint parameters not in this optimizer: {_list(extra)}")
        if len(s_names) != len(set(s_names)):
            problems.append(f"{where}.param_groups[{gi}]: a parameter name appears twice")
    all_saved = {n for g in saved for n in g["params"]}
    stray = set(tree["state"]) - all_saved if isinstance(tree["state"], Mapping) else set()
    if stray:
        problems.append(f"{where}.state: entries for parameters in no param group: {_list(stray)}")
    shapes = tree.get("param_shapes")
    if isinstance(shapes, Mapping):
        by_name = dict(zip(flat_names, _flat(opt)))
        for n, shape in shapes.items():
            p = by_name.get(n)
            if p is not None and list(p.shape) != list(shape):
                problems.append(f"{where}: parameter {n!r} has shape {list(p.shape)} here, {list(shape)} in the checkpoint")
    return problems


def load_optimizer(opt: torch.optim.Optimizer, tree: Mapping[str, Any], names: Mapping[int, str], where: str) -> None:
    problems = check_optimizer(opt, tree, names, where)
    if problems:
        raise StateMismatchError("optimizer state does not fit:\n  " + "\n  ".join(problems))
    flat_names = _names(opt, names)
    index = {n: i for i, n in enumerate(flat_names)}
    groups = []
    for s, c, cur in zip(tree["param_groups"], _group_names(opt, flat_names), opt.param_groups):
        g = dict(s)
        g["params"] = [index[n] for n in c]  # saved position i <-> current position i, by name
        if "param_names" in cur:  # optimizers built from named_parameters() check these
            g["param_names"] = list(cur["param_names"])
        groups.append(g)
    state = {index[n]: dict(v) if isinstance(v, Mapping) else v for n, v in tree["state"].items()}
    # torch moves every state tensor onto its parameter's device (and float dtype), keeping
    # "step" where the optimizer wants it.
    opt.load_state_dict({"state": state, "param_groups": groups})
