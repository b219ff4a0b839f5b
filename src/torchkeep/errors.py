"""The one exception family torchkeep raises.

Every error is a :class:`TorchkeepError`. Subclasses also inherit the built-in exception they
refine, so ``except FileNotFoundError`` or ``except ValueError`` keep working in user code.
A message says what failed, where (path, key), why, and how to fix it, and lists every
offending key at once.
"""

from __future__ import annotations

__all__ = [
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


class TorchkeepError(Exception):
    """Base of every error torchkeep raises."""


class NotFoundError(TorchkeepError, FileNotFoundError):
    """A path that should exist does not."""

    def __str__(self) -> str:  # FileNotFoundError formats (errno, strerror) otherwise
        return str(self.args[0]) if self.args else ""


class FormatError(TorchkeepError, ValueError):
    """The bytes are not a checkpoint format torchkeep can read, or are malformed."""


class CorruptCheckpointError(FormatError):
    """A checkpoint is truncated, damaged, or its checksums do not verify."""


class UnsafePickleError(FormatError):
    """A pickle references a code-execution primitive (os.system, eval, ...); refused."""


class UnsupportedTypeError(TorchkeepError, TypeError):
    """A value in the tree cannot be stored (e.g. an arbitrary object, an unsupported dtype)."""


class KeyMismatchError(TorchkeepError, RuntimeError):
    """A state dict does not fit a model: missing, unexpected or shape-mismatched keys."""


class StateMismatchError(TorchkeepError, ValueError):
    """Saved training state does not fit the objects it is restored into."""


class CheckpointNotFoundError(TorchkeepError, FileNotFoundError):
    """No complete checkpoint matches the request (e.g. ``restore(step=N)``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LockError(TorchkeepError, RuntimeError):
    """Another process holds the run directory."""


class ArchitectureError(TorchkeepError, ValueError):
    """A model's architecture cannot be captured or rebuilt."""


class ForbiddenClassError(ArchitectureError):
    """A file asks to import a class outside torch and the ``allow=`` prefixes."""


class SelectionError(ArchitectureError):
    """A selector (parameter glob, layer name, head) matched nothing or is ambiguous."""


class RemoteIOError(TorchkeepError, OSError):
    """A transfer to or from an object store failed (after retries); names the URL."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
