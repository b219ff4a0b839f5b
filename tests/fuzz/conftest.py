"""Fuzzing settings: bounded in `make test`, long under `make fuzz` (--fuzz-long).
TORCHKEEP_FUZZ_SHORT / TORCHKEEP_FUZZ_EXAMPLES set the examples per fuzz test."""

from __future__ import annotations

import os

import pytest
from fuzz._guards import Auditor
from hypothesis import HealthCheck, settings

SHORT = int(os.environ.get("TORCHKEEP_FUZZ_SHORT", "60"))
LONG = int(os.environ.get("TORCHKEEP_FUZZ_EXAMPLES", "5000"))
settings.register_profile("fuzz-short", max_examples=SHORT, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
settings.register_profile("fuzz-long", max_examples=LONG, deadline=None, suppress_health_check=list(HealthCheck))


def pytest_configure(config: pytest.Config) -> None:
    settings.load_profile("fuzz-long" if config.getoption("--fuzz-long", default=False) else "fuzz-short")


_AUDITOR: Auditor | None = None


@pytest.fixture(scope="session")
def auditor() -> Auditor:
    global _AUDITOR
    if _AUDITOR is None:
        _AUDITOR = Auditor()
    return _AUDITOR
