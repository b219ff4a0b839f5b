"""Fine-tuning helpers; the public names are re-exported by ``torchkeep.finetune``."""

from __future__ import annotations

from ._freeze import FreezeReport, freeze, unfreeze
from ._groups import param_groups
from ._head import HeadReplacement, feature_extractor, find_head, replace_head
from ._summary import ModelSummary, SummaryRow, summary

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
