"""Retention policies are pure functions: (step, metric) records -> kept steps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from torchkeep.manager import KeepAny, KeepBest, KeepEvery, KeepLast, retained


@dataclass
class R:
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)


def recs(*pairs: tuple[int, float | None]) -> list[R]:
    return [R(s, {} if m is None else {"loss": m}) for s, m in pairs]


RUN = recs((10, 0.9), (20, 0.5), (30, 0.7), (40, 0.3), (50, 0.6), (60, 0.8))


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        (KeepLast(1), {60}),
        (KeepLast(2), {50, 60}),
        (KeepLast(10), {10, 20, 30, 40, 50, 60}),
        (KeepBest(1, "loss"), {40}),
        (KeepBest(2, "loss"), {40, 20}),
        (KeepBest(1, "loss", "max"), {10}),
        (KeepBest(2, "loss", "max"), {10, 60}),
        (KeepBest(1, "acc"), set()),  # nobody has the metric
        (KeepEvery(20), {20, 40, 60}),
        (KeepEvery(30), {30, 60}),
        (KeepEvery(7), set()),
        (KeepAny(KeepLast(1), KeepBest(1, "loss")), {40, 60}),
        (KeepAny(KeepLast(2), KeepEvery(30)), {30, 50, 60}),
        (KeepAny(), set()),
    ],
)
def test_policy_table(policy, kept) -> None:  # noqa: ANN001
    assert policy(RUN) == kept


@pytest.mark.parametrize(
    ("records", "policies", "monitor", "mode", "kept"),
    [
        # no policy: keep everything
        (RUN, [], None, "min", {10, 20, 30, 40, 50, 60}),
        # newest always kept, even by a policy that would not keep it
        (RUN, [KeepEvery(20)], None, "min", {20, 40, 60}),
        (RUN, [KeepEvery(25)], None, "min", {50, 60}),
        # best always kept when a monitor is known
        (RUN, [KeepLast(1)], "loss", "min", {40, 60}),
        (RUN, [KeepLast(1)], "loss", "max", {10, 60}),
        # union of all three
        (RUN, [KeepLast(2), KeepBest(2, "loss"), KeepEvery(30)], "loss", "min", {20, 30, 40, 50, 60}),
        # records without the metric or with NaN never count as best
        (recs((1, None), (2, math.nan), (3, 2.0), (4, None)), [KeepLast(1)], "loss", "min", {3, 4}),
        (recs((1, None), (2, None)), [KeepLast(1)], "loss", "min", {2}),
        # ties go to the newer step
        (recs((1, 1.0), (2, 1.0), (3, 5.0)), [KeepBest(1, "loss")], "loss", "min", {2, 3}),
        # a single checkpoint survives any policy
        (recs((7, 1.0)), [KeepLast(1), KeepEvery(1000)], "loss", "min", {7}),
        ([], [KeepLast(1)], "loss", "min", set()),
        # order of records does not matter
        (list(reversed(RUN)), [KeepLast(2)], None, "min", {50, 60}),
    ],
)
def test_retained_table(records, policies, monitor, mode, kept) -> None:  # noqa: ANN001
    assert retained(records, policies, monitor=monitor, mode=mode) == kept


def test_retained_is_pure() -> None:
    before = [R(r.step, dict(r.metrics)) for r in RUN]
    retained(RUN, [KeepLast(1), KeepBest(1, "loss")], monitor="loss")
    assert RUN == before


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: KeepLast(0), "keep_last must be a positive int"),
        (lambda: KeepLast(True), "keep_last must be a positive int"),
        (lambda: KeepEvery(-5), "keep_every must be a positive int"),
        (lambda: KeepBest(1, "loss", "lowest"), "mode must be 'min' or 'max'"),
        (lambda: KeepBest(1, ""), "monitor must name a metric"),
    ],
)
def test_options_validated_early(make, message) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=message):
        make()
