"""Golden torch zip files written by torchkeep, and Hypothesis round trips of the writer."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import hypothesis.strategies as hs
import pytest
import torch
from _helpers import assert_tree_equal
from hypothesis import HealthCheck, given, settings

import torchkeep as tk

GOLDEN = Path(__file__).parent.parent / "golden" / "torchzip"
_spec = importlib.util.spec_from_file_location("golden_torchzip_make", GOLDEN / "make.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)  # type: ignore[union-attr]


def _records(p: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(p) as z:
        return {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}


@pytest.mark.parametrize("name", ["flat", "tree"])
def test_golden_file_reads_back_exactly(name):
    expected = make.canonical()[name]
    p = GOLDEN / f"v1_{name}.pt"
    assert_tree_equal(expected, tk.load(p))
    assert_tree_equal(expected, torch.load(p, weights_only=True))
    info = tk.inspect(p)
    assert info.format == "torch-zip" and info.metadata == {"golden": name}


def test_golden_ties_and_views_survive():
    flat = tk.load(GOLDEN / "v1_flat.pt")
    assert flat["head.weight"].data_ptr() == flat["emb.weight"].data_ptr()
    tree = tk.load(GOLDEN / "v1_tree.pt")
    assert tree["view"].untyped_storage().data_ptr() == tree["model"]["emb.weight"].untyped_storage().data_ptr()


@pytest.mark.parametrize("name", ["flat", "tree"])
def test_rewriting_gives_the_same_records(tmp_path, name):
    p = tmp_path / "x.pt"
    tk.save(make.canonical()[name], p, metadata={"golden": name})
    ours, golden = _records(p), _records(GOLDEN / f"v1_{name}.pt")
    assert set(ours) == set(golden)
    stable = [n for n in golden if n.startswith("data/") or n in ("torchkeep/metadata.json", "byteorder", ".format_version")]
    assert stable and all(ours[n] == golden[n] for n in stable)
    assert_tree_equal(tk.load(GOLDEN / f"v1_{name}.pt"), tk.load(p))


# ------------------------------------------------------------------ Hypothesis round trips
_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
           torch.uint8, torch.bool, torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2]


@hs.composite
def tensors(draw):  # noqa: ANN001, ANN201
    dt = draw(hs.sampled_from(_DTYPES))
    shape = tuple(draw(hs.lists(hs.integers(0, 4), max_size=3)))
    n = 1
    for s in shape:
        n *= s
    raw = draw(hs.binary(min_size=n * dt.itemsize, max_size=n * dt.itemsize))
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dt).reshape(shape) if raw else torch.empty(shape, dtype=dt)
    if draw(hs.booleans()) and t.dim() == 2 and t.shape[0] > 1:
        t = t.t()  # non-contiguous
    return t


_leaves = hs.one_of(hs.none(), hs.booleans(), hs.integers(-(2**63), 2**63 - 1), hs.floats(allow_nan=True), hs.text(max_size=8), tensors())
trees = hs.recursive(
    _leaves,
    lambda c: hs.one_of(
        hs.lists(c, max_size=3),
        hs.tuples(c, c),
        hs.dictionaries(hs.text(max_size=6), c, max_size=3),
        hs.dictionaries(hs.integers(0, 9), c, max_size=2),
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(tree=hs.dictionaries(hs.text(min_size=1, max_size=6), trees, max_size=4), tie=hs.booleans())
def test_torch_zip_round_trip_any_tree(tmp_path_factory, tree, tie):
    if tie:
        shared = torch.arange(6.0)
        tree = {**tree, "tie_a": shared, "tie_b": shared[2:]}
    p = tmp_path_factory.mktemp("rt") / "t.pt"
    tk.save(tree, p)
    back = tk.load(p)
    assert_tree_equal(tree, back)
    assert_tree_equal(tree, torch.load(p, weights_only=True))
    if tie:
        assert back["tie_b"].untyped_storage().data_ptr() == back["tie_a"].untyped_storage().data_ptr()
    info = tk.inspect(p)
    assert info.total_bytes == sum(t.nbytes for t in info.tensors)
