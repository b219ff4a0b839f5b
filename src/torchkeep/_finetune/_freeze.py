"""freeze / unfreeze: requires_grad by selection, optionally BatchNorm locked in eval mode.

How ``bn_eval=True`` survives ``model.train()``: each selected BatchNorm layer is put in
eval mode now and gets a forward pre-hook (:func:`_keep_bn_eval`) that puts it back in eval
mode before every forward. ``model.train()`` may flip ``bn.training`` to True, but no forward
ever runs in training mode, so the running statistics never change and the layer normalises
with them. The hook is a module-level function (the model still pickles and deep-copies;
copies keep the lock) and is found again by identity, so ``unfreeze`` removes it without
keeping handles. This works whichever module ``.train()`` is called on, unlike overriding
``model.train``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ._select import select

__all__ = ["FreezeReport", "freeze", "unfreeze", "is_bn_locked"]

_MAX_LINES = 20


def _keep_bn_eval(module: nn.Module, args: Any) -> None:
    if module.training:
        module.training = False


def is_bn_locked(module: nn.Module) -> bool:
    """Whether ``freeze(..., bn_eval=True)`` locked this BatchNorm layer in eval mode."""
    return any(h is _keep_bn_eval for h in module._forward_pre_hooks.values())


def _lock(module: nn.Module) -> bool:
    module.training = False
    if is_bn_locked(module):
        return False
    module.register_forward_pre_hook(_keep_bn_eval)
    return True


def _unlock(module: nn.Module, training: bool) -> bool:
    hooks = module._forward_pre_hooks
    keys = [k for k, h in hooks.items() if h is _keep_bn_eval]
    for k in keys:
        del hooks[k]
    if keys:
        module.training = training
    return bool(keys)


@dataclass
class FreezeReport:
    """What one ``freeze``/``unfreeze`` call changed.

    ``changed``: parameter names whose ``requires_grad`` flipped; ``unchanged``: selected but
    already in the requested state; ``numel``: elements in ``changed``; ``batchnorms``: BatchNorm
    layers locked in eval mode (freeze) or released (unfreeze); ``trainable``/``frozen``:
    elements of the whole model after the call.
    """

    action: str
    selector: str
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    numel: int = 0
    batchnorms: list[str] = field(default_factory=list)
    trainable: int = 0
    frozen: int = 0

    @property
    def count(self) -> int:
        return len(self.changed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __len__(self) -> int:
        return len(self.changed)

    def __str__(self) -> str:
        verb = "froze" if self.action == "freeze" else "unfroze"
        lines = [
            f"{verb} {self.count} parameter tensor{'s' if self.count != 1 else ''} "
            f"({self.numel:,} elements), selected by {self.selector}"
        ]
        by_owner: dict[str, list[str]] = {}
        for n in self.changed:
            owner, _, leaf = n.rpartition(".")
            by_owner.setdefault(owner or "(root)", []).append(leaf)
        for i, (owner, leaves) in enumerate(by_owner.items()):
            if i == _MAX_LINES:
                lines.append(f"  ... and {len(by_owner) - _MAX_LINES} more modules (see .changed)")
                break
            lines.append(f"  {owner}: {', '.join(leaves)}")
        if self.unchanged:
            state = "frozen" if self.action == "freeze" else "trainable"
            lines.append(f"  already {state}: {len(self.unchanged)} tensors")
        if self.batchnorms:
            what = "kept in eval mode (frozen statistics)" if self.action == "freeze" else "released from eval mode"
            shown = ", ".join(self.batchnorms[:8]) + (", ..." if len(self.batchnorms) > 8 else "")
            lines.append(f"  BatchNorm {what}: {len(self.batchnorms)} ({shown})")
        lines.append(f"  model now: {self.trainable:,} trainable, {self.frozen:,} frozen elements")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"FreezeReport({self})"


def _apply(
    model: nn.Module,
    patterns: Sequence[str],
    *,
    first: int | None,
    up_to: str | None,
    requires_grad: bool,
    bn_eval: bool,
) -> FreezeReport:
    action = "unfreeze" if requires_grad else "freeze"
    sel = select(model, patterns, first=first, up_to=up_to, action=action)
    params = dict(model.named_parameters())
    report = FreezeReport(action, sel.describe)
    for name in sel.params:
        p = params[name]
        if p.requires_grad == requires_grad:
            report.unchanged.append(name)
            continue
        p.requires_grad_(requires_grad)
        if not requires_grad:
            p.grad = None  # an optimizer that already holds p skips it (no decay, no momentum)
        report.changed.append(name)
        report.numel += p.numel()
    modules = dict(model.named_modules())
    for name in sel.batchnorms:
        bn = modules[name]
        if requires_grad:
            if _unlock(bn, model.training):
                report.batchnorms.append(name)
        elif bn_eval and _lock(bn):
            report.batchnorms.append(name)
    for p in params.values():
        if p.requires_grad:
            report.trainable += p.numel()
        else:
            report.frozen += p.numel()
    return report


def freeze(
    model: nn.Module,
    *names_or_globs: str,
    up_to: str | None = None,
    first: int | None = None,
    bn_eval: bool = False,
) -> FreezeReport:
    """Stop gradients for the selected parameters; return what changed.

    Select with globs on parameter names or module paths (``"layer1.*"``, ``"*.bias"``,
    ``"layer1"``), ``first=k`` top-level children, or everything ``up_to="layer3"``
    (inclusive); no selector freezes the whole model. Selectors combine as a union.
    ``bn_eval=True`` also keeps the selected BatchNorm layers in eval mode (running
    statistics frozen), even after a later ``model.train()``; ``unfreeze`` releases them. A
    BatchNorm layer counts as selected when all of its parameters are (or, for
    ``affine=False``, its buffers match); the lock is not part of the state dict. Frozen parameters' ``.grad`` is cleared so an optimizer that already holds them skips
    them. A pattern that matches nothing raises :class:`~torchkeep.SelectionError`.
    """
    return _apply(model, names_or_globs, first=first, up_to=up_to, requires_grad=False, bn_eval=bn_eval)


def unfreeze(
    model: nn.Module,
    *names_or_globs: str,
    up_to: str | None = None,
    first: int | None = None,
) -> FreezeReport:
    """Make the selected parameters trainable again (same selectors as :func:`freeze`).

    BatchNorm layers in the selection that ``freeze(..., bn_eval=True)`` locked are released
    and follow the model's mode (``model.training``) again.
    """
    return _apply(model, names_or_globs, first=first, up_to=up_to, requires_grad=True, bn_eval=False)
