"""Snapshot tests: the report table and the strict error message, text exact.

Regenerate after an intended change with ``TORCHKEEP_UPDATE_SNAPSHOTS=1`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import torchkeep as tk
from torchkeep.keys import collapse

SNAPSHOTS = Path(__file__).parent / "snapshots"


def check(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("TORCHKEEP_UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert path.exists(), f"{path} is missing; run with TORCHKEEP_UPDATE_SNAPSHOTS=1 and review it"
    assert text == path.read_text()


class Encoder(nn.Module):
    def __init__(self, layers: int = 12, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(layers))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, classes)


def _case() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    src = {"module." + k: v for k, v in Encoder(classes=1000).state_dict().items()}
    del src["module.norm.bias"]
    src["module.pooler.weight"] = torch.zeros(8, 8)
    src["module.pooler.bias"] = torch.zeros(8)
    return Encoder(), src


def test_report_rendering_snapshot():
    model, src = _case()
    report = tk.load_into(model, src, strict=False, on_mismatch="skip")
    check("report.txt", str(report))
    check("report.json", json.dumps(report.to_dict(), indent=1) + "\n")


def test_strict_error_message_snapshot():
    model, src = _case()
    with pytest.raises(tk.KeyMismatchError) as e:
        tk.load_into(model, src)
    check("strict_error.txt", str(e.value) + "\n")


def test_collapse_runs():
    rows = [(f"blocks.{i}.attn.{j}.weight", ("[4]",)) for i in range(12) for j in (0, 1)]
    rows += [("blocks.3.extra", ("[1]",)), ("blocks.5.extra", ("[1]",)), ("blocks.6.extra", ("[1]",))]
    assert collapse(rows) == [
        ("blocks.{0..11}.attn.{0,1}.weight", ("[4]",), 24),
        ("blocks.{3,5,6}.extra", ("[1]",), 3),
    ]
    assert collapse([("a.0.w", (1,)), ("a.1.w", (2,))]) == [("a.0.w", (1,), 1), ("a.1.w", (2,), 1)]


def test_str_works_without_a_terminal(capsys):
    model, src = _case()
    report = tk.load_into(model, src, strict=False, on_mismatch="skip")
    print(report)
    out = capsys.readouterr().out
    assert "\x1b[" not in out and "layers.{0..11}.weight" in out
