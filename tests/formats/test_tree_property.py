"""Hypothesis: save -> load is the identity for any storable tree, in every writable format."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import hypothesis.strategies as hs
import torch
from _helpers import assert_tree_equal
from hypothesis import HealthCheck, given, settings

import torchkeep as tk
from torchkeep.formats import _tree

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool]


@hs.composite
def tensors(draw):  # noqa: ANN001, ANN201
    dtype = draw(hs.sampled_from(DTYPES))
    shape = tuple(draw(hs.lists(hs.integers(0, 4), max_size=3)))
    seed = draw(hs.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 100).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=g).to(dtype)


scalars = hs.one_of(
    hs.none(),
    hs.booleans(),
    hs.integers(-(2**63), 2**63 - 1),
    hs.floats(allow_nan=True, allow_infinity=True),
    hs.text(max_size=8),
)
keys = hs.one_of(hs.text(max_size=6), hs.integers(-5, 50))
trees = hs.recursive(
    hs.one_of(scalars, tensors()),
    lambda children: hs.one_of(
        hs.lists(children, max_size=4),
        hs.lists(children, max_size=3).map(tuple),
        hs.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=12,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@SETTINGS
@given(tree=trees)
def test_safetensors_round_trip_is_identity(tree):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.safetensors"
        tk.save(tree, p)
        assert_tree_equal(tree, tk.load(p))


@SETTINGS
@given(tree=hs.dictionaries(hs.text(min_size=1, max_size=6), trees, min_size=1, max_size=4))
def test_sharded_round_trip_is_identity(tree):
    with tempfile.TemporaryDirectory() as d:
        tk.save(tree, Path(d) / "sharded", max_shard_size=64)
        assert_tree_equal(tree, tk.load(Path(d) / "sharded"))


@SETTINGS
@given(tree=trees)
def test_flatten_names_every_tensor_once(tree):
    structure, tensors = _tree.flatten(tree)
    back = _tree.unflatten(structure, tensors)
    assert_tree_equal(tree, back)
    n_leaves = _count_tensors(tree)
    assert len(tensors) <= n_leaves


def _count_tensors(t) -> int:  # noqa: ANN001
    if isinstance(t, torch.Tensor):
        return 1
    if isinstance(t, dict):
        return sum(_count_tensors(v) for v in t.values())
    if isinstance(t, (list, tuple)):
        return sum(_count_tensors(v) for v in t)
    return 0


def test_nan_keys_and_floats_are_exact(tmp_path):
    tree = {1.5: -0.0, 2: [math.inf, -math.inf], (1, "a"): 5e-324}
    tk.save(tree, tmp_path / "a.safetensors")
    back = tk.load(tmp_path / "a.safetensors")
    assert_tree_equal(tree, back)
    assert math.copysign(1, back[1.5]) == -1
