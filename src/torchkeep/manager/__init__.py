"""Which checkpoints exist and survive: Checkpointer, retention policies, run-directory layout."""

from __future__ import annotations

from ._checkpointer import Checkpointer, list_checkpoints
from ._layout import CheckpointRecord
from ._retention import KeepAny, KeepBest, KeepEvery, KeepLast, retained
from ._verify import StepCheck, verify_step

__all__ = [
    "Checkpointer",
    "CheckpointRecord",
    "KeepLast",
    "KeepBest",
    "KeepEvery",
    "KeepAny",
    "retained",
    "list_checkpoints",
    "verify_step",
    "StepCheck",
]
