"""The examples and `torchkeep demo` run, so they never rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["COLUMNS"] = "160"
    return env


def test_there_is_one_example_per_recipe():
    assert [p.name[:2] for p in EXAMPLES] == [f"{i:02d}" for i in range(1, 9)]


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"{script.name} exited {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    assert r.stdout.strip(), f"{script.name} printed nothing"
    assert not (tmp_path / "out").exists() or (tmp_path / "out").is_dir()


def test_demo(tmp_path):
    out = tmp_path / "demo out"
    r = subprocess.run([sys.executable, "-m", "torchkeep", "demo", "--out", str(out)], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, f"demo exited {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    png = out / "demo.png"
    assert png.is_file() and png.read_bytes()[:8] == PNG_SIGNATURE
    lines = [ln for ln in r.stdout.splitlines() if "bitwise resume:" in ln]
    assert len(lines) == 1 and "bitwise resume: EQUAL" in lines[0], r.stdout
    for name in ("net_params.safetensors", "net_model.safetensors", "checkpoint.safetensors"):
        assert (out / name).is_file(), name
    assert "FAILED" not in r.stdout and "checks passed" in r.stdout


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    r = subprocess.run([sys.executable, "-m", "torchkeep", "demo", "--out", str(tmp_path)], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not written by `torchkeep demo`" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
