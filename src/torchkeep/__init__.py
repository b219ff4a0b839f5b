"""torchkeep: save, load, resume, convert, inspect and transfer PyTorch models and training state.

Safe (no code inside a file runs unless you ask), exact (a resumed run is bitwise the run
that never stopped), durable (a checkpoint is complete and verified or absent) and fast.
"""

from __future__ import annotations

from ._api import inspect, load, save
from .errors import (
    ArchitectureError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ForbiddenClassError,
    SelectionError,
    FormatError,
    KeyMismatchError,
    LockError,
    NotFoundError,
    RemoteIOError,
    StateMismatchError,
    TorchkeepError,
    UnsafePickleError,
    UnsupportedTypeError,
)
from .finetune import (
    FreezeReport,
    HeadReplacement,
    ModelSummary,
    feature_extractor,
    find_head,
    freeze,
    param_groups,
    replace_head,
    summary,
    unfreeze,
)
from .formats._base import CheckpointInfo, TensorInfo
from .formats._unpickler import Placeholder
from .keys import LoadReport, load_into
from .manager import CheckpointRecord, Checkpointer, KeepAny, KeepBest, KeepEvery, KeepLast
from .state import ResumableLoader, Stateful, TrainState
from .model import keep_args, load_exported, load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # files
    "save",
    "load",
    "inspect",
    "CheckpointInfo",
    "TensorInfo",
    "Placeholder",
    # keys
    "load_into",
    "LoadReport",
    # training state
    "TrainState",
    "ResumableLoader",
    "Stateful",
    # run directories
    "Checkpointer",
    "CheckpointRecord",
    "KeepLast",
    "KeepBest",
    "KeepEvery",
    "KeepAny",
    # whole models
    "save_model",
    "load_model",
    "load_exported",
    "keep_args",
    # fine-tuning
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
    # errors
    "TorchkeepError",
    "NotFoundError",
    "FormatError",
    "CorruptCheckpointError",
    "UnsafePickleError",
    "UnsupportedTypeError",
    "KeyMismatchError",
    "StateMismatchError",
    "CheckpointNotFoundError",
    "LockError",
    "ArchitectureError",
    "ForbiddenClassError",
    "SelectionError",
    "RemoteIOError",
]
