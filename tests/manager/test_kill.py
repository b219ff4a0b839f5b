"""SIGKILL at random moments during sync and async saves.

Each trial resumes the same run in a fresh child process, lets it save in a loop, and kills
it after a random delay. Then a restore must return a complete checkpoint whose content is
exactly that step's, with no warning (a kill never leaves a committed damaged step), and it
never goes backwards past a save that had returned: sync ``save(N)`` returned means N is
durable; async ``save(N)`` returned means N-1 is (one pending write at most).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from _reliability import record
from manager._toy import Toy

from torchkeep.manager import Checkpointer

CHILD = Path(__file__).with_name("_kill_child.py")
TRIALS = int(os.environ.get("TORCHKEEP_KILL_TRIALS", "12"))
BIG = 1 << 21  # 8 MB of float32 per checkpoint, so kills land inside writes too


def _trial(run: Path, mode: str, delay: float) -> tuple[int | None, int, bool]:
    p = subprocess.Popen([sys.executable, str(CHILD), str(run), mode, str(BIG)], stdout=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline().strip()
        assert first.startswith("ready "), f"child failed to start: {first!r}"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        out = p.stdout.read()
        p.wait(60)
    saved = [int(line.split()[1]) for line in out.splitlines() if line.startswith("saved ")]
    mid_write = any(n.startswith(".tmp-") for n in os.listdir(run))
    return (saved[-1] if saved else None), int(first.split()[1]), mid_write


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkill_during_saves(tmp_path: Path, mode: str) -> None:
    rng = random.Random(1234 if mode == "sync" else 4321)
    run = tmp_path / "run"
    floor = 0  # no restore may return less than this
    mid_writes = 0
    total_saved = 0
    for i in range(TRIALS):
        last, resumed, mid = _trial(run, mode, rng.uniform(0.0, 0.4))
        record("kill", f"Checkpointer.save ({mode})")
        assert resumed >= floor, f"trial {i}: child resumed at {resumed}, below {floor}"
        mid_writes += mid
        if last is not None:
            total_saved += last - resumed
            floor = max(floor, last if mode == "sync" else last - 1)
        toy = Toy(big=BIG)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a kill must never leave a damaged committed step
            with Checkpointer(run) as ck:
                got = ck.restore(toy)
        assert (got or 0) >= floor, f"trial {i}: restore went back to {got}, but save({floor}) had returned"
        if got:
            assert toy.matches(got), f"trial {i}: step {got} content is not step {got}'s"
            floor = max(floor, got)
    print(f"\n[kill trials] mode={mode} trials={TRIALS} saves_returned={total_saved} "
          f"killed_mid_write={mid_writes} final_step={floor}")
    assert total_saved > 0
