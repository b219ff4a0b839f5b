"""Child of the S3 kill test: save steps 1..N-1, then die by SIGKILL while saving step N,
after its state object is uploaded and before its commit marker (the manifest).

usage: python _kill_child.py RUN_URL N
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from torchkeep.manager import Checkpointer
from torchkeep.manager._layout import MANIFEST
from torchkeep.manager._storage import ObjectStorage


class DieBeforeMarker(ObjectStorage):
    def __init__(self, die_at: str) -> None:
        self.die_at = die_at

    def write_file(self, loc, data):  # noqa: ANN001, ANN201
        if loc.name == MANIFEST and self.die_at in loc.path:
            print("dying", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().write_file(loc, data)


def state(step: int) -> dict:  # the same as test_s3_checkpointer._state
    g = torch.Generator().manual_seed(step)
    return {"w": torch.randn(128, 32, generator=g), "b": torch.randn(32, generator=g), "step": step}


def main() -> None:
    run, n = sys.argv[1], int(sys.argv[2])
    ck = Checkpointer(run)
    ck._storage = DieBeforeMarker(f"step_{n:08d}")
    for s in range(1, n + 1):
        ck.save(state(s), s, {"loss": 1.0 / s})
        print(f"saved {s}", flush=True)
    raise SystemExit("the storage layer did not kill this process")


if __name__ == "__main__":
    main()
