"""Child for the SIGKILL trials of tk.save: saves trees A and B alternately to one path,
forever, printing "saved N" after each save returned. ``argv[3]``: a max_shard_size (a
sharded folder, updated in place)."""

from __future__ import annotations

import sys

import torch

import torchkeep as tk


def tree(which: int, big: int) -> dict[str, torch.Tensor]:
    return {"w": torch.full((big,), float(which)), "b": torch.arange(17) + which, "tag": torch.tensor([which])}


if __name__ == "__main__":
    path, big = sys.argv[1], int(sys.argv[2])
    kw = {"max_shard_size": sys.argv[3]} if len(sys.argv) > 3 else {}
    trees = [tree(0, big), tree(1, big)]
    print("ready", flush=True)
    n = 0
    while True:
        tk.save(trees[n % 2], path, **kw)
        n += 1
        print(f"saved {n}", flush=True)
