"""The ``Stateful`` protocol: anything with ``state_dict()`` and ``load_state_dict()``."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Stateful"]


@runtime_checkable
class Stateful(Protocol):
    """An object whose state can be captured and put back.

    ``state_dict()`` returns a tree that :func:`torchkeep.save` can store: dicts, lists and
    tuples of tensors and int/float/str/bool/None leaves. ``load_state_dict(tree)`` receives
    that tree as :func:`torchkeep.load` returns it (tuples stay tuples, int dict keys stay
    ints, tensors on the CPU) and restores the object in place.

    Modules, optimizers, LR schedulers, ``GradScaler``, :class:`torchkeep.ResumableLoader` and
    :class:`torchkeep.TrainState` all satisfy it; so does any user class with the two methods.
    """

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any, /) -> Any: ...
