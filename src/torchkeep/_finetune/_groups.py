"""param_groups: optimizer groups for fine-tuning (head vs backbone lr, no decay on norms/biases)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..errors import SelectionError
from ._head import find_head
from ._select import matches, unmatched_error

__all__ = ["NORM_TYPES", "param_groups"]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    _NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def _default_no_decay(model: nn.Module) -> set[str]:
    out: set[str] = set()
    for mname, m in model.named_modules():
        is_norm = isinstance(m, NORM_TYPES)
        for pname, _ in m.named_parameters(recurse=False):
            if is_norm or pname.endswith("bias"):  # also MultiheadAttention.in_proj_bias
                out.add(f"{mname}.{pname}" if mname else pname)
    return out


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    backbone_lr_mult: float = 1.0,
    weight_decay: float = 0.0,
    no_decay: Sequence[str] | None = None,
    head: str | Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups for any ``torch.optim`` optimizer: ``opt = AdamW(param_groups(m, lr=1e-3))``.

    Only trainable parameters, each exactly once. The head (``head``: module paths or globs
    on parameter names; ``None`` finds it like :func:`replace_head`) trains at ``lr``, the
    rest (the backbone) at ``lr * backbone_lr_mult``. With ``backbone_lr_mult == 1`` and no
    ``head`` there is no split. ``weight_decay`` applies to every parameter except
    ``no_decay``: by default biases and the weights of normalisation layers (BatchNorm,
    LayerNorm, GroupNorm, ...); or a sequence of globs/module paths (``()`` decays all).
    Each group carries a ``"name"`` (``"head"``, ``"backbone.no_decay"``, ...) for logs.
    """
    named = list(model.named_parameters())
    if head is None and backbone_lr_mult == 1.0:
        head_names: set[str] | None = None
    else:
        patterns = [head] if isinstance(head, str) else list(head) if head is not None else [find_head(model, action="param_groups")]
        bad = [p for p in patterns if not any(matches(n, p) for n, _ in named)]
        if bad:
            raise unmatched_error("param_groups(head=...)", model, bad, "parameter")
        head_names = {n for n, _ in named if any(matches(n, p) for p in patterns)}
    if no_decay is None:
        skip_decay = _default_no_decay(model)
    else:
        skip_decay = {n for n, _ in named if any(matches(n, p) for p in no_decay)}

    groups: dict[str, dict[str, Any]] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        if head_names is None:
            part, group_lr = "", lr
        elif name in head_names:
            part, group_lr = "head", lr
        else:
            part, group_lr = "backbone", lr * backbone_lr_mult
        decays = name not in skip_decay
        key = ".".join(x for x in (part, "decay" if decays else "no_decay") if x)
        g = groups.setdefault(
            key, {"params": [], "lr": group_lr, "weight_decay": weight_decay if decays else 0.0, "name": key}
        )
        g["params"].append(p)
    if not groups:
        raise SelectionError(
            f"param_groups: {type(model).__name__} has no trainable parameters (all "
            f"{len(named)} have requires_grad=False). Fix: tk.unfreeze(model, ...) the part to train, "
            "or replace the head with tk.replace_head."
        )
    order = ["backbone.decay", "backbone.no_decay", "head.decay", "head.no_decay", "decay", "no_decay"]
    return [groups[k] for k in order if k in groups]
