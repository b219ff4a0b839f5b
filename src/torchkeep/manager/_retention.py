"""Which checkpoints survive: pure, composable policies over records (orbax style).

A policy is a callable ``policy(records) -> set[int]`` returning the steps it wants kept;
records are anything with ``.step`` and ``.metrics`` (e.g. :class:`CheckpointRecord`).
Policies combine by union (:class:`KeepAny`). :func:`retained` adds the two checkpoints that
are never deleted: the newest and the best. Nothing here touches a filesystem.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Policy", "KeepLast", "KeepBest", "KeepEvery", "KeepAny", "best_step", "retained", "metric_value"]


class _Rec(Protocol):
    step: int
    metrics: dict[str, Any]


Policy = Callable[[Sequence[Any]], "set[int]"]


def _check_positive(name: str, n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")


def _check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")


def metric_value(rec: _Rec, monitor: str) -> float | None:
    """The monitored metric as a float, or None when absent/NaN/not a number."""
    v = (rec.metrics or {}).get(monitor)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _ranked(records: Sequence[_Rec], monitor: str, mode: str) -> list[_Rec]:
    """Records carrying the metric, best first; ties go to the newer step."""
    scored = [(v, r) for r in records if (v := metric_value(r, monitor)) is not None]
    sign = 1.0 if mode == "min" else -1.0
    scored.sort(key=lambda vr: (sign * vr[0], -vr[1].step))
    return [r for _, r in scored]


@dataclass(frozen=True)
class KeepLast:
    """The ``n`` newest steps."""

    n: int

    def __post_init__(self) -> None:
        _check_positive("keep_last", self.n)

    def __call__(self, records: Sequence[_Rec]) -> set[int]:
        return {r.step for r in sorted(records, key=lambda r: r.step)[-self.n :]}


@dataclass(frozen=True)
class KeepBest:
    """The ``n`` best steps by ``metrics[monitor]`` (``mode`` "min" or "max").

    Records without the metric (or with NaN) never count as best.
    """

    n: int
    monitor: str
    mode: str = "min"

    def __post_init__(self) -> None:
        _check_positive("keep_best", self.n)
        _check_mode(self.mode)
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ValueError(f"monitor must name a metric, got {self.monitor!r}")

    def __call__(self, records: Sequence[_Rec]) -> set[int]:
        return {r.step for r in _ranked(records, self.monitor, self.mode)[: self.n]}


@dataclass(frozen=True)
class KeepEvery:
    """Every step that is a multiple of ``n`` (permanent milestones)."""

    n: int

    def __post_init__(self) -> None:
        _check_positive("keep_every", self.n)

    def __call__(self, records: Sequence[_Rec]) -> set[int]:
        return {r.step for r in records if r.step % self.n == 0}


@dataclass(frozen=True)
class KeepAny:
    """Union: a step is kept when any policy keeps it."""

    policies: tuple[Policy, ...]

    def __init__(self, *policies: Policy) -> None:
        object.__setattr__(self, "policies", tuple(policies))

    def __call__(self, records: Sequence[_Rec]) -> set[int]:
        out: set[int] = set()
        for p in self.policies:
            out |= p(records)
        return out


def best_step(records: Sequence[_Rec], monitor: str | None, mode: str = "min") -> int | None:
    if not monitor:
        return None
    ranked = _ranked(records, monitor, mode)
    return ranked[0].step if ranked else None


def retained(
    records: Sequence[_Rec],
    policies: Sequence[Policy],
    *,
    monitor: str | None = None,
    mode: str = "min",
) -> set[int]:
    """Steps to keep: the union of ``policies`` plus the newest and the best.

    No policies means keep everything.
    """
    if not records:
        return set()
    if not policies:
        return {r.step for r in records}
    keep = KeepAny(*policies)(records)
    keep.add(max(r.step for r in records))
    best = best_step(records, monitor, mode)
    if best is not None:
        keep.add(best)
    return keep
