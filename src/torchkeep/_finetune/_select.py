"""Which parameters (and BatchNorm layers) a freeze/unfreeze call is about.

Three selectors, combinable (the selection is their union):

- patterns: globs on parameter names (``"layer1.*"``, ``"*.bias"``) or module paths
  (``"layer1"`` means every parameter under ``layer1``);
- ``first=k``: the first k top-level children, in the order ``print(model)`` lists them;
- ``up_to="layer3"``: every module listed before ``layer3`` (depth first, as ``print(model)``
  shows them) and ``layer3`` itself; dotted paths (``"encoder.layers.1"``) work.

With no selector the whole model is selected. Parameters registered directly on the root
model (a ``cls_token``, say) belong to no child: ``first``/``up_to`` never select them, a
pattern or the whole-model form does.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import SelectionError

__all__ = ["Selection", "select", "matches", "children_line", "unmatched_error"]

_MAX_CHILDREN_LISTED = 30


@dataclass(frozen=True)
class Selection:
    params: list[str]  # selected parameter names, in model.named_parameters() order
    batchnorms: list[str]  # BatchNorm modules entirely inside the selection
    describe: str  # how the user selected, for reports


def matches(name: str, pattern: str) -> bool:
    """A glob on a dotted name; a plain module path also matches everything below it."""
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")


def children_line(model: nn.Module) -> str:
    kids = [f"{n} ({type(m).__name__})" for n, m in model.named_children()]
    if not kids:
        return f"{type(model).__name__} has no child modules."
    more = len(kids) - _MAX_CHILDREN_LISTED
    shown = ", ".join(kids[:_MAX_CHILDREN_LISTED]) + (f", ... and {more} more" if more > 0 else "")
    return f"Top-level children of {type(model).__name__}: {shown}."


def unmatched_error(action: str, model: nn.Module, bad: Sequence[str], what: str) -> SelectionError:
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_modules() if n]
    hints = []
    for p in bad:
        if any(c in p for c in "*?["):
            continue  # a glob: a "close" name would mislead
        close = difflib.get_close_matches(p, names, n=1)
        if close:
            hints.append(f"{p!r} -> did you mean {close[0]!r}?")
    quoted = ", ".join(repr(p) for p in bad)
    plural = "s match" if len(bad) > 1 else " matches"
    msg = (
        f"{action}: {len(bad)} pattern{plural} no {what} of {type(model).__name__}: {quoted}.\n"
        f"{children_line(model)}\n"
        + ("".join(f"Hint: {h}\n" for h in hints))
        + "Fix: use globs on parameter names ('layer1.*', '*.bias') or module paths ('layer1'); "
        "list them with model.named_parameters()."
    )
    return SelectionError(msg)


def _region(model: nn.Module, action: str, first: int | None, up_to: str | None) -> tuple[set[str], str]:
    """Module names covered by first=/up_to= (the root itself excluded) and a description."""
    children = [n for n, _ in model.named_children()]
    if first is not None:
        if isinstance(first, bool) or not isinstance(first, int) or first < 0:
            raise SelectionError(
                f"{action}: first must be a non-negative int (the number of top-level children), "
                f"got {first!r}. Fix: first=2, or up_to='<child name>'."
            )
        if first > len(children):
            raise SelectionError(
                f"{action}: first={first}, but {type(model).__name__} has only {len(children)} "
                f"top-level children.\n{children_line(model)}"
            )
        if first == 0:
            return set(), "first=0 (nothing)"
        up_to = children[first - 1]
        describe = f"first={first} ({', '.join(children[:first])})"
    else:
        assert up_to is not None  # callers pass one of the two
        describe = f"up_to={up_to!r}"
    order = [n for n, _ in model.named_modules()]
    if up_to not in order or up_to == "":
        close = difflib.get_close_matches(str(up_to), [n for n in order if n], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise SelectionError(
            f"{action}: up_to={up_to!r} is not a module of {type(model).__name__}.{hint}\n"
            f"{children_line(model)}\n"
            "Fix: name a child ('layer3') or a dotted path ('encoder.layers.1'); "
            "list them with model.named_modules()."
        )
    i = order.index(up_to)
    end = i
    while end + 1 < len(order) and order[end + 1].startswith(up_to + "."):
        end += 1
    return {n for n in order[: end + 1] if n}, describe


def select(
    model: nn.Module,
    patterns: Sequence[str],
    *,
    first: int | None,
    up_to: str | None,
    action: str,
) -> Selection:
    if not isinstance(model, nn.Module):
        raise SelectionError(f"{action}: expected an nn.Module, got {type(model).__name__}.")
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise SelectionError(
                f"{action}: patterns must be non-empty strings (globs or module paths), got {p!r}."
            )
    if first is not None and up_to is not None:
        raise SelectionError(
            f"{action}: pass first= or up_to=, not both (first={first!r}, up_to={up_to!r})."
        )
    named = list(model.named_parameters())
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]

    if not patterns and first is None and up_to is None:
        return Selection([n for n, _ in named], [n for n, _ in bns], "whole model")

    chosen: set[str] = set()
    chosen_bn: set[str] = set()
    parts: list[str] = []
    if patterns:
        bad = [p for p in patterns if not any(matches(n, p) for n, _ in named)]
        if bad:
            raise unmatched_error(action, model, bad, "parameter")
        chosen |= {n for n, _ in named if any(matches(n, p) for p in patterns)}
        for bn_name, bn in bns:
            own = [f"{bn_name}.{k}" for k, _ in bn.named_parameters(recurse=False)]
            own = own or [f"{bn_name}.{k}" for k, _ in bn.named_buffers(recurse=False)]
            if own and all(any(matches(x, p) for p in patterns) for x in own):
                chosen_bn.add(bn_name)
        parts.append(", ".join(repr(p) for p in patterns))
    if first is not None or up_to is not None:
        region, describe = _region(model, action, first, up_to)
        chosen |= {n for n, _ in named if n.rpartition(".")[0] in region}
        chosen_bn |= {n for n, _ in bns if n in region}
        parts.append(describe)
    return Selection(
        [n for n, _ in named if n in chosen],
        [n for n, _ in bns if n in chosen_bn],
        " + ".join(parts),
    )
