"""Child of the kill trials: resume a run, then save forever until SIGKILLed.

Prints ``ready N`` after restoring step N (0: new run) and ``saved N`` after each save
returns. Exits 3 if the restored content is not exactly step N's.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from manager._toy import Toy  # noqa: E402

from torchkeep.manager import Checkpointer  # noqa: E402


def main() -> int:
    run, mode, big = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ck = Checkpointer(run, keep_last=2, async_save=mode == "async")
    toy = Toy(big=big)
    start = ck.restore(toy) or 0
    if start and not toy.matches(start):
        print(f"MISMATCH {start}", flush=True)
        return 3
    print(f"ready {start}", flush=True)
    step = start
    while True:
        step += 1
        toy.fill(step)
        ck.save(toy, step, metrics={"loss": 1.0 / step})
        print(f"saved {step}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
