"""torchkeep ls / verify on runs, step folders and single files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from manager._toy import Toy

import torchkeep as tk
from torchkeep.cli import main
from torchkeep.manager import Checkpointer


@pytest.fixture
def run(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    with Checkpointer(d, monitor="loss") as ck:
        for s, loss in [(100, 0.9), (200, 0.3), (300, 0.5)]:
            ck.save(Toy().fill(s), s, {"loss": loss, "acc": 1 - loss})
    return d


def _flip(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[-5] ^= 1
    path.write_bytes(bytes(b))


def test_ls_table_and_json(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", str(run)]) == 0
    out = capsys.readouterr().out
    assert "300" in out and "loss=0.5" in out and "latest" in out and "best" in out
    assert "3 checkpoint(s)" in out
    assert main(["ls", str(run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["step"] for r in data] == [100, 200, 300]
    assert [r["best"] for r in data] == [False, True, False]  # recorded monitor: loss, min
    assert [r["latest"] for r in data] == [False, False, True]
    assert all(r["valid"] and r["size"] > 0 for r in data)
    assert main(["ls", str(run), "--json", "--monitor", "acc", "--mode", "min"]) == 0
    assert [r["best"] for r in json.loads(capsys.readouterr().out)] == [True, False, False]


def test_ls_marks_damage(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = run / "step_00000300" / "state.safetensors"
    os.truncate(st, st.stat().st_size - 10)
    _flip(run / "step_00000200" / "state.safetensors")
    assert main(["ls", str(run), "--json"]) == 0
    data = {r["step"]: r for r in json.loads(capsys.readouterr().out)}
    assert not data[300]["valid"] and "truncated" in data[300]["problem"]
    assert data[200]["valid"]  # a bit flip needs checksums ...
    assert data[200]["latest"]  # the newest valid one
    assert main(["ls", str(run), "--json", "--verify"]) == 0
    data = {r["step"]: r for r in json.loads(capsys.readouterr().out)}
    assert not data[200]["valid"] and "checksum mismatch" in data[200]["problem"]  # ... which --verify reads
    assert data[100]["latest"]


def test_ls_errors(tmp_path: Path, run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    assert main(["ls", str(tmp_path / "plain")]) == 2
    assert "no torchkeep checkpoints" in capsys.readouterr().err
    assert main(["ls", str(run / "step_00000100")]) == 2
    assert "one step folder" in capsys.readouterr().err


def test_verify_ok(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(run)]) == 0
    assert "3 verified, no damage" in capsys.readouterr().out
    assert main(["verify", str(run / "step_00000200")]) == 0
    assert main(["verify", str(run / "step_00000200" / "state.safetensors")]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("damage", ["bitflip", "truncate"])
def test_verify_names_damaged_file(run: Path, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    st = run / "step_00000300" / "state.safetensors"
    if damage == "bitflip":
        _flip(st)
    else:
        os.truncate(st, st.stat().st_size // 2)
    for target in (run, run / "step_00000300", st):
        assert main(["verify", str(target)]) == 1, target
        out = capsys.readouterr().out
        assert "DAMAGED" in out and str(st) in out
        assert str(run / "step_00000100") not in out or "ok" in out
    assert main(["verify", str(run), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    bad = [r for r in doc["results"] if r["status"] == "damaged"]
    assert [r["step"] for r in bad] == [300] and bad[0]["damaged_files"] == [str(st)]


def test_verify_reports_incomplete_but_passes(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run / ".tmp-step_00000400-deadbeef").mkdir()
    (run / "step_00000500").mkdir()
    assert main(["verify", str(run)]) == 0
    out = capsys.readouterr().out
    assert "incomplete" in out and "step_00000500" in out


def test_verify_single_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "w.safetensors"
    tk.save({"w": torch.randn(64, 64)}, f)
    assert main(["verify", str(f)]) == 0
    os.truncate(f, f.stat().st_size - 1000)
    assert main(["verify", str(f)]) == 1
    assert str(f) in capsys.readouterr().out
    g = tmp_path / "notes.txt"
    g.write_text("hello")
    assert main(["verify", str(g)]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "missing")]) == 2
