"""Fuzzing settings: bounded in `make test`, long under `make fuzz` (--fuzz-long)."""

from __future__ import annotations

import sys

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("fuzz-short", max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
settings.register_profile("fuzz-long", max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))

# audit events of primitives that run code or reach outside; none may fire while reading a file
_DANGEROUS = ("os.system", "os.exec", "os.spawn", "os.posix_spawn", "subprocess.Popen", "exec", "compile", "ctypes.", "socket.connect", "webbrowser")


def pytest_configure(config: pytest.Config) -> None:
    settings.load_profile("fuzz-long" if config.getoption("--fuzz-long", default=False) else "fuzz-short")


class Auditor:
    """``with auditor:`` fails if a code-running primitive fires inside the block."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.active = False
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if self.active and event.startswith(_DANGEROUS):
            self.events.append(event)

    def __enter__(self) -> "Auditor":
        self.events.clear()
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False
        if self.events:
            raise AssertionError(f"code-running primitives fired while reading: {sorted(set(self.events))}")


_AUDITOR: Auditor | None = None


@pytest.fixture(scope="session")
def auditor() -> Auditor:
    global _AUDITOR
    if _AUDITOR is None:
        _AUDITOR = Auditor()
    return _AUDITOR
