"""The classifier head: find it, replace it, or drop it for a feature extractor.

Where the head is, in order:

1. a top-level child named ``fc``, ``classifier`` or ``head`` (:data:`HEAD_NAMES`) that is an
   ``nn.Linear`` or holds one at its end (``classifier[-1]`` of a ``Sequential``);
2. otherwise the model's final ``nn.Linear``: the last module with parameters, in the order
   ``print(model)`` lists them, must be an ``nn.Linear`` (so an encoder that ends in a
   ``LayerNorm`` has no head).

Parallel heads (two ``nn.Linear`` at the end of one non-``Sequential`` parent, reading the
same features), or several named heads, are ambiguous: the error lists them all and the fix is
``path=``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from ..errors import SelectionError
from ._select import children_line

__all__ = ["HEAD_NAMES", "HeadReplacement", "find_head", "replace_head", "feature_extractor"]

HEAD_NAMES: tuple[str, ...] = ("fc", "classifier", "head")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _terminal_linears(module: nn.Module, prefix: str = "") -> list[str]:
    """Paths of the nn.Linear layer(s) that end ``module``; several when they are parallel."""
    with_params = [(n, m) for n, m in module.named_modules() if next(m.parameters(recurse=False), None) is not None]
    trailing: list[tuple[str, nn.Linear]] = []
    for name, m in reversed(with_params):
        if not isinstance(m, nn.Linear):
            break
        trailing.insert(0, (name, m))
    if not trailing:
        return []
    last_name, last = trailing[-1]
    parent_name = last_name.rpartition(".")[0]
    if isinstance(module.get_submodule(parent_name), nn.Sequential):
        found = [last_name]  # chained layers, not parallel heads
    else:
        found = [n for n, m in trailing if n.rpartition(".")[0] == parent_name and m.in_features == last.in_features]
    return [_join(prefix, n) for n in found]


def _describe(model: nn.Module, path: str) -> str:
    m = model.get_submodule(path)
    if isinstance(m, nn.Linear):
        return f"{path!r} (Linear {m.in_features}->{m.out_features})"
    return f"{path!r} ({type(m).__name__})"


def _ambiguous(model: nn.Module, candidates: list[str], action: str) -> SelectionError:
    listed = ", ".join(_describe(model, c) for c in candidates)
    return SelectionError(
        f"{action}: cannot decide which module of {type(model).__name__} is the classifier head; "
        f"{len(candidates)} candidates: {listed}.\n"
        f"Fix: name it, e.g. path={candidates[0]!r} (head={candidates[0]!r} for param_groups)."
    )


def find_head(model: nn.Module, *, action: str = "find_head") -> str:
    """The module path of ``model``'s final classifier ``nn.Linear`` (see the module docs).

    Raises :class:`~torchkeep.SelectionError` listing the candidates when it is
    ambiguous, or explaining what was looked for when there is none.
    """
    named: list[str] = []
    for attr in HEAD_NAMES:
        m = model._modules.get(attr)
        if m is None:
            continue
        named += [attr] if isinstance(m, nn.Linear) else _terminal_linears(m, attr)
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise _ambiguous(model, named, action)
    found = _terminal_linears(model)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise _ambiguous(model, found, action)
    last = [(n, m) for n, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]
    ends = f"its last module with parameters is {last[-1][0]!r} ({type(last[-1][1]).__name__})" if last else "it has no parameters"
    raise SelectionError(
        f"{action}: found no classifier head in {type(model).__name__}: no top-level "
        f"{' / '.join(HEAD_NAMES)} holding an nn.Linear, and {ends}, not an nn.Linear.\n"
        f"{children_line(model)}\n"
        "Fix: name the nn.Linear, e.g. path='<module path>' (head='<module path>' for param_groups)."
    )


def _resolve(model: nn.Module, path: str | None, action: str) -> str:
    if path is None:
        return find_head(model, action=action)
    try:
        m = model.get_submodule(path)
    except AttributeError:
        raise SelectionError(
            f"{action}: path={path!r} is not a module of {type(model).__name__}.\n{children_line(model)}"
        ) from None
    if isinstance(m, nn.Linear):
        return path
    inner = _terminal_linears(m, path)
    if len(inner) == 1:
        return inner[0]
    if len(inner) > 1:
        raise _ambiguous(model, inner, action)
    raise SelectionError(
        f"{action}: path={path!r} is a {type(m).__name__}, not an nn.Linear, and does not end in one. "
        "Fix: name the nn.Linear itself (e.g. 'classifier.6')."
    )


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent_path), leaf, new)  # Sequential/ModuleList keys are "6"


@dataclass
class HeadReplacement:
    """What :func:`replace_head` did: ``path`` now holds ``new`` instead of ``old``."""

    path: str
    old: nn.Module
    new: nn.Linear

    @property
    def in_features(self) -> int:
        return self.new.in_features

    @property
    def num_outputs(self) -> int:
        return self.new.out_features

    def __str__(self) -> str:
        old = self.old
        was = f"Linear({old.in_features} -> {old.out_features})" if isinstance(old, nn.Linear) else type(old).__name__
        w = self.new.weight
        return (
            f"replaced {self.path}: {was} with Linear({self.new.in_features} -> "
            f"{self.new.out_features}), {str(w.dtype).removeprefix('torch.')} on {w.device}"
        )

    def __repr__(self) -> str:
        return f"HeadReplacement({self})"


def replace_head(model: nn.Module, num_outputs: int, *, path: str | None = None) -> HeadReplacement:
    """Replace the final classifier with a fresh ``nn.Linear(in_features, num_outputs)``.

    The new layer has the old one's input size, bias or not, device and dtype, and is
    trainable (even when the rest of the model is frozen). ``path`` names the layer when
    auto-detection (see :func:`find_head`) cannot decide. Returns a :class:`HeadReplacement`.
    """
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise SelectionError(f"replace_head: num_outputs must be a positive int, got {num_outputs!r}.")
    where = _resolve(model, path, "replace_head")
    old = model.get_submodule(where)
    assert isinstance(old, nn.Linear)  # _resolve only returns Linear paths
    w = old.weight
    new = nn.Linear(old.in_features, num_outputs, bias=old.bias is not None, device=w.device, dtype=w.dtype)
    _set(model, where, new)
    return HeadReplacement(where, old, new)


def feature_extractor(
    model: nn.Module,
    *,
    path: str | None = None,
    frozen: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """``model`` without its classifier head: calling it returns the features the head read.

    The head (found as in :func:`find_head`, or ``path``) becomes ``nn.Identity``. By default
    this works on a deep copy (``inplace=True`` edits ``model`` itself and saves the memory)
    and the result is a fixed extractor: every parameter frozen, in eval mode, BatchNorm
    locked in eval mode even if ``.train()`` is called. ``frozen=False`` keeps it trainable.
    """
    from ._freeze import freeze

    where = _resolve(model, path, "feature_extractor")
    out = model if inplace else copy.deepcopy(model)
    _set(out, where, nn.Identity())
    if frozen:
        freeze(out, bn_eval=True)
        out.eval()
    return out

