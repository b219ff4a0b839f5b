"""Canonical trees for the torch zip golden files torchkeep writes (torch zip v1 + metadata record).

The files also embed torch's own records (version, byteorder, serialization id), so the
tests pin what torchkeep controls: tensors, tree, metadata record, storage bytes.
Regenerate ONLY for a deliberate format change:
    .venv/bin/python tests/golden/torchzip/make.py
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def canonical() -> dict[str, object]:
    flat = {
        "emb.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8,
        "fc.bias": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float16),
        "fc.scale": torch.tensor(3, dtype=torch.bfloat16),
        "mask": torch.tensor([True, False, True]),
        "ids": torch.tensor([[1, 2], [3, -4]], dtype=torch.int64),
        "f8": torch.tensor([0.5, -1.0], dtype=torch.float32).to(torch.float8_e4m3fn),
        "c": torch.tensor([1 + 2j], dtype=torch.complex128),
    }
    flat["head.weight"] = flat["emb.weight"]  # tied
    tree = {
        "epoch": 3,
        "loss": 0.25,
        "best": math.inf,
        "model": {k: v for k, v in flat.items() if k != "head.weight"},
        "optimizer": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(2)}},
                      "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "params": [0]}]},
        "view": flat["emb.weight"][1:, ::2],
        "dtype": torch.float16,
        "blob": b"\x00\x01",
    }
    return {"flat": flat, "tree": tree}


if __name__ == "__main__":
    import torchkeep as tk

    here = Path(__file__).parent
    for name, obj in canonical().items():
        tk.save(obj, here / f"v1_{name}.pt", metadata={"golden": name})
        print("wrote", here / f"v1_{name}.pt")
