"""Fine-tuning a pretrained model in one line per step (DESIGN.md recipe 6).

The four transfer-learning situations of the seeds:

- small data, similar domain: a fixed feature extractor (:func:`feature_extractor`), or
  :func:`freeze` the whole model and :func:`replace_head`;
- small data, different domain: :func:`replace_head`, ``freeze(model, first=k)`` (or
  ``up_to="layer3"``), train the rest;
- large data, different domain: keep the architecture, train everything (re-initialise if
  the pretrained weights do not help);
- large data, similar domain: train everything from the pretrained weights, the backbone at
  a smaller learning rate (:func:`param_groups` with ``backbone_lr_mult``).

:func:`summary` shows what is trainable. The implementation lives in ``torchkeep._finetune``.
"""

from __future__ import annotations

from ._finetune import (
    FreezeReport,
    HeadReplacement,
    ModelSummary,
    SummaryRow,
    feature_extractor,
    find_head,
    freeze,
    param_groups,
    replace_head,
    summary,
    unfreeze,
)

__all__ = [
    "freeze",
    "unfreeze",
    "FreezeReport",
    "find_head",
    "replace_head",
    "HeadReplacement",
    "feature_extractor",
    "param_groups",
    "summary",
    "ModelSummary",
    "SummaryRow",
]
