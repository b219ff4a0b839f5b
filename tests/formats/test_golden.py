"""Golden files pin the bytes torchkeep writes: a change here is a format change."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import safetensors.torch as st
from _helpers import assert_tree_equal

import torchkeep as tk

GOLDEN = Path(__file__).parent.parent / "golden" / "safetensors"
_spec = importlib.util.spec_from_file_location("golden_make", GOLDEN / "make.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["flat", "tree"])
def test_golden_file_loads_to_the_canonical_tree(name):
    expected = make.canonical()[name]
    back = tk.load(GOLDEN / f"v1_{name}.safetensors")
    assert_tree_equal(expected, back)


@pytest.mark.parametrize("name", ["flat", "tree"])
def test_writer_reproduces_golden_bytes(tmp_path, name):
    p = tmp_path / "x.safetensors"
    tk.save(make.canonical()[name], p, metadata={"golden": name})
    assert p.read_bytes() == (GOLDEN / f"v1_{name}.safetensors").read_bytes()


def test_golden_files_are_plain_safetensors():
    flat = st.load_file(GOLDEN / "v1_flat.safetensors")
    assert "head.weight" not in flat and "emb.weight" in flat  # tie stored once
    tree = st.load_file(GOLDEN / "v1_tree.safetensors")
    assert set(tree) == {"model.emb.weight", "model.fc.bias", "model.fc.scale", "model.mask", "model.ids",
                         "optimizer.state.0.step", "optimizer.state.0.exp_avg", "rng"}


def test_tied_golden_comes_back_tied():
    back = tk.load(GOLDEN / "v1_flat.safetensors")
    assert back["head.weight"] is back["emb.weight"]
