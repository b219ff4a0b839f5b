"""TrainState: the named things a training run needs to continue exactly, saved and restored
together."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import StateMismatchError, UnsupportedTypeError
from ._adapters import Adapter, ModuleAdapter, RNGAdapter, adapter_for
from ._optim import param_names

__all__ = ["TrainState"]

RNG_KEY = "_rng"
META_KEY = "_torchkeep"
FORMAT = 1

# restore order: parameters before the optimizers that name them; RNG last so that nothing
# a restore does (a user object drawing a random number) shifts the generators.
_ORDER = {"module": 0, "optimizer": 1, "scheduler": 2, "scaler": 3, "stateful": 4, "dict": 5, "rng": 9}


class TrainState:
    """Named training objects checkpointed together; itself a :class:`~torchkeep.Stateful`.

    ``TrainState(model=model, opt=optimizer, sched=scheduler, scaler=scaler, loader=loader,
    extra={"epoch": 0, "best": None})`` accepts ``nn.Module`` s, optimizers, LR schedulers,
    ``torch.amp.GradScaler``, :class:`~torchkeep.ResumableLoader`, any object with
    ``state_dict()``/``load_state_dict()``, and plain dicts of JSON values (restored into the
    same dict object). Several models and optimizers are fine (``gen=G, disc=D, opt_g=...,
    opt_d=...``). ``rng=True`` (default) also saves Python's, NumPy's, torch's CPU and every
    initialised CUDA device's generator.

    ``state_dict()`` returns a tree :func:`torchkeep.save` stores without pickle: module
    tensors under ``<name>.<key>``, optimizer state keyed by parameter name
    (``<module entry>.<parameter name>``), scheduler and scaler state as JSON, RNG states as
    uint8 tensors. ``load_state_dict(tree)`` checks every entry first and raises
    :class:`~torchkeep.errors.StateMismatchError` listing every difference before changing
    anything; then it puts every value back in place (parameters copied into the existing
    tensors on their devices, optimizer state moved to its parameters' devices).

    Single file: ``tk.save(state, "ckpt.safetensors")`` and
    ``state.load_state_dict(tk.load("ckpt.safetensors"))``.
    """

    def __init__(self, *, rng: bool = True, **objects: Any) -> None:
        bad = [n for n in objects if not n.isidentifier() or n.startswith("_")]
        if bad:
            raise UnsupportedTypeError(f"TrainState names must be identifiers not starting with '_': {bad}")
        if not objects:
            raise UnsupportedTypeError("TrainState needs at least one named object, e.g. TrainState(model=model, opt=opt)")
        self._adapters: dict[str, Adapter] = {n: adapter_for(n, o) for n, o in objects.items()}
        self._rng = RNGAdapter(RNG_KEY, None) if rng else None

    # -- access --------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        return self._adapters[name].obj

    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    def __iter__(self) -> Iterator[str]:
        return iter(self._adapters)

    def __len__(self) -> int:
        return len(self._adapters)

    def keys(self) -> list[str]:
        return list(self._adapters)

    def kinds(self) -> dict[str, str]:
        """``name -> kind`` (module, optimizer, scheduler, scaler, stateful, dict)."""
        return {n: a.kind for n, a in self._adapters.items()}

    def __repr__(self) -> str:
        items = ", ".join(f"{n}=<{a.kind} {type(a.obj).__name__}>" for n, a in self._adapters.items())
        return f"TrainState({items}, rng={self._rng is not None})"

    # -- context for adapters ------------------------------------------------------------
    def param_names(self) -> dict[int, str]:
        return param_names({n: a.module for n, a in self._adapters.items() if isinstance(a, ModuleAdapter)})

    # -- Stateful ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything, as a tree :func:`torchkeep.save` stores without pickle."""
        tree: dict[str, Any] = {n: a.save(self) for n, a in self._adapters.items()}
        if self._rng is not None:
            tree[RNG_KEY] = self._rng.save(self)
        tree[META_KEY] = {"format": FORMAT, "kinds": self.kinds()}
        return tree

    def _check_state_dict(self, tree: Any, where: str = "") -> list[str]:
        """Every reason ``tree`` does not fit this state (empty list: it fits)."""
        prefix = f"{where}." if where else ""
        if not isinstance(tree, Mapping):
            return [f"{where or 'state'}: expected the dict TrainState.state_dict() returns, got {type(tree).__name__}"]
        problems: list[str] = []
        saved_names = [k for k in tree if not (isinstance(k, str) and k.startswith("_"))]
        missing = [n for n in self._adapters if n not in tree]
        extra = [n for n in saved_names if n not in self._adapters]
        if missing:
            problems.append(f"{prefix}entries in this TrainState but not in the checkpoint: {missing}")
        if extra:
            problems.append(f"{prefix}entries in the checkpoint but not in this TrainState: {extra}")
        meta = tree.get(META_KEY)
        saved_kinds = meta.get("kinds", {}) if isinstance(meta, Mapping) else {}
        for n, a in self._adapters.items():
            if n not in tree:
                continue
            k = saved_kinds.get(n, a.kind)
            if k != a.kind:
                problems.append(f"{prefix}{n}: saved as a {k}, restoring into a {a.kind} ({type(a.obj).__name__})")
                continue
            problems.extend(prefix + p for p in a.check(tree[n], self))
        if self._rng is not None:
            if RNG_KEY not in tree:
                problems.append(
                    f"{prefix}the checkpoint has no RNG state (saved with rng=False); "
                    f"construct this TrainState with rng=False to restore it"
                )
            else:
                problems.extend(prefix + p for p in self._rng.check(tree[RNG_KEY], self))
        return problems

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore everything in place; refuses, changing nothing, if anything does not fit."""
        problems = self._check_state_dict(state_dict)
        if problems:
            raise StateMismatchError(
                f"the checkpoint does not fit this TrainState ({len(problems)} difference(s)); nothing was restored:\n  "
                + "\n  ".join(problems)
            )
        adapters = sorted(self._adapters.values(), key=lambda a: _ORDER.get(a.kind, 5))
        for a in adapters:
            a.load(state_dict[a.name], self)
        if self._rng is not None:
            self._rng.load(state_dict[RNG_KEY], self)
