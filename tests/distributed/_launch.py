"""Start N ranks of ``dist_worker.py`` as subprocesses (gloo, a free port on 127.0.0.1) and
wait for them with a deadline, so a hung rank fails the test instead of hanging the suite."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

WORKER = Path(__file__).with_name("dist_worker.py")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Rank:
    rank: int
    returncode: int | None
    output: str


def launch(scenario: str, args: dict, *, world: int = 2, timeout: float = 90.0) -> list[Rank]:
    port = free_port()
    src = str(Path(__file__).resolve().parents[2] / "src")
    procs = []
    for r in range(world):
        env = dict(
            os.environ,
            RANK=str(r),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(r),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
            PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), scenario, json.dumps(args)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.monotonic() + timeout
    out: list[Rank] = []
    for r, p in enumerate(procs):
        try:
            text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:  # our own children, by handle
                if q.poll() is None:
                    q.kill()
            text, _ = p.communicate()
            text = f"[rank {r} killed after {timeout:.0f} s: hung]\n" + (text or "")
        out.append(Rank(r, p.returncode, text or ""))
    return out


def describe(ranks: list[Rank]) -> str:
    return "\n".join(f"--- rank {r.rank} exit {r.returncode}\n{r.output[-3000:]}" for r in ranks)
