"""Canonical trees for the safetensors golden files (format version 1).

Regenerate ONLY for a deliberate format change (bump FORMAT_VERSION):
    .venv/bin/python tests/golden/safetensors/make.py
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
    }
    flat["head.weight"] = flat["emb.weight"]  # tied
    tree = {
        "epoch": 3,
        "loss": 0.25,
        "best": math.inf,
        "model": {k: v for k, v in flat.items() if k != "head.weight"},
        "optimizer": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "params": [0]}]},
        "rng": torch.tensor([1, 2, 3], dtype=torch.uint8),
    }
    return {"flat": flat, "tree": tree}


if __name__ == "__main__":
    import torchkeep as tk

    here = Path(__file__).parent
    for name, obj in canonical().items():
        tk.save(obj, here / f"v1_{name}.safetensors", metadata={"golden": name})
        print("wrote", here / f"v1_{name}.safetensors")
