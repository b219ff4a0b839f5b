"""Exact resume, proven by killing training processes with SIGKILL at arbitrary steps.

Each trial runs ``_train_child.py`` in a fresh directory, lets it kill itself (or kills it
from here) at a step that is not a checkpoint step, resumes from the last checkpoint, and
compares with an uninterrupted run: every logged loss (as float.hex, including the steps
redone after a resume) and the final TrainState (parameters, BatchNorm buffers, optimizer
and scheduler state, loader position, RNG states) must be bitwise equal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import assert_tree_equal

import torchkeep as tk

pytestmark = pytest.mark.slow

CHILD = Path(__file__).with_name("_train_child.py")
STEPS, EVERY = 18, 4  # classifier: 6 batches per epoch, 3 epochs; GAN: 5 per epoch


def run_child(d: Path, *, scenario: str, workers: int, plan: str, saver: str = "file") -> subprocess.CompletedProcess:
    """Run the attempts of ``plan`` one after another, each in its own (forked) process."""
    cmd = [
        sys.executable, str(CHILD), "--dir", str(d), "--scenario", scenario, "--workers", str(workers),
        "--steps", str(STEPS), "--every", str(EVERY), "--plan", plan, "--saver", saver,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


def read_losses(path: Path) -> dict[int, str]:
    out = {}
    for line in path.read_text().splitlines():
        step, rest = line.split(" ", 1)
        out[int(step)] = rest
    return out


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uninterrupted runs without workers. Runs with num_workers=2 must match them too:
    augmentation is seeded per batch, so the number of workers does not change a run."""
    refs = {}
    for scenario in ("classifier", "gan"):
        d = tmp_path_factory.mktemp(f"ref_{scenario}")
        r = run_child(d, scenario=scenario, workers=0, plan="end")
        assert r.returncode == 0 and "attempt 0 exit 0" in r.stdout, r.stdout + r.stderr
        refs[scenario] = d
    return refs


def check_against(ref: Path, run: Path, attempts: int) -> None:
    expected = read_losses(ref / "losses.0.txt")
    assert sorted(expected) == list(range(1, STEPS + 1))
    seen: set[int] = set()
    for a in range(attempts):
        got = read_losses(run / f"losses.{a}.txt")
        for step, value in got.items():
            assert value == expected[step], f"attempt {a}, step {step}: loss {value} != uninterrupted {expected[step]}"
        seen |= set(got)
    assert seen == set(expected)
    assert_tree_equal(tk.load(ref / "final.safetensors"), tk.load(run / "final.safetensors"))


def killed_run(d: Path, *, scenario: str, workers: int, kills: list[tuple[int, str]], saver: str = "file") -> None:
    plan = ",".join(f"{k}:{point}" for k, point in kills) + ",end"
    r = run_child(d, scenario=scenario, workers=workers, plan=plan, saver=saver)
    assert r.returncode == 0, r.stdout + r.stderr
    expected = [f"attempt {i} signal {int(signal.SIGKILL)}" for i in range(len(kills))] + [f"attempt {len(kills)} exit 0"]
    assert [line for line in r.stdout.splitlines() if line.startswith("attempt")] == expected, r.stdout + r.stderr
    assert r.stdout.count("resumed at step") == len(kills)
    for attempt in range(1, len(kills) + 1):  # each resume went back to the last checkpoint and redid steps
        prev, prev_point = kills[attempt - 1]
        last_done = prev - (1 if prev_point == "mid_step" else 0)
        resumed_from = min(read_losses(d / f"losses.{attempt}.txt")) - 1
        if saver == "checkpointer-async":  # the newest checkpoint may still have been in flight
            assert resumed_from % EVERY == 0 and resumed_from <= last_done
        else:
            assert resumed_from == last_done // EVERY * EVERY


# (step, where): "after_step" dies after the step's loss is logged, before its checkpoint
# would be written; "mid_step" dies after backward(), before optimizer.step().
# The classifier has 6 batches per epoch, the GAN 5; checkpoints every 4 steps.
@pytest.mark.parametrize(
    ("scenario", "workers", "kills"),
    [
        # mid-epoch 1 three steps after a checkpoint; then mid-step in epoch 1 again
        ("classifier", 0, [(7, "after_step"), (11, "mid_step")]),
        # with 2 workers: at the end of epoch 0; then mid-step right after the epoch-1/2 boundary,
        # resuming from a checkpoint taken after an epoch's last batch
        ("classifier", 2, [(6, "after_step"), (14, "mid_step")]),
        # two models, two optimizers, a scheduler on one of them
        ("gan", 0, [(9, "mid_step")]),
    ],
    ids=["workers0-two-kills", "workers2-two-kills", "gan"],
)
def test_kill_and_resume_is_bitwise_exact(references, tmp_path: Path, scenario: str, workers: int, kills: list[tuple[int, str]]) -> None:  # noqa: ANN001
    killed_run(tmp_path, scenario=scenario, workers=workers, kills=kills)
    check_against(references[scenario], tmp_path, attempts=len(kills) + 1)


def test_kill_from_outside_at_a_random_moment(references, tmp_path: Path) -> None:  # noqa: ANN001
    """SIGKILL from another process at whatever instruction the child is executing
    (possibly inside a checkpoint write or with DataLoader workers mid-batch)."""
    import random

    cmd = [
        sys.executable, str(CHILD), "--dir", str(tmp_path), "--workers", "2",
        "--steps", str(STEPS), "--every", str(EVERY), "--attempt", "0",
    ]  # fmt: skip
    target = random.Random(os.getpid()).randint(5, 14)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / "losses.0.txt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= target:
            break
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    if p.returncode == 0:  # pragma: no cover - the child outran us; nothing was interrupted
        pytest.skip("the child finished before it could be killed")
    assert p.returncode == -signal.SIGKILL
    (tmp_path / "losses.0.txt").rename(tmp_path / "losses.killed.txt")
    r = run_child(tmp_path, scenario="classifier", workers=2, plan="end")
    assert r.returncode == 0 and "attempt 0 exit 0" in r.stdout, r.stdout + r.stderr
    (tmp_path / "losses.0.txt").rename(tmp_path / "losses.1.txt")
    (tmp_path / "losses.killed.txt").rename(tmp_path / "losses.0.txt")
    check_against(references["classifier"], tmp_path, attempts=2)


@pytest.mark.parametrize("saver", ["checkpointer", "checkpointer-async"])
def test_kill_and_resume_through_the_checkpointer(references, tmp_path: Path, saver: str) -> None:  # noqa: ANN001
    """The same exactness when checkpoints go through Checkpointer.save / .restore."""
    pytest.importorskip("torchkeep.manager")
    killed_run(tmp_path, scenario="classifier", workers=0, kills=[(10, "after_step")], saver=saver)
    check_against(references["classifier"], tmp_path, attempts=2)
