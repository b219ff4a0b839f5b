"""The benchmark harness runs end to end (tiny workload, one repetition) and writes its report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_quick_benchmark_writes_results(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--reps", "1", "--workloads", "small",
           "--contenders", "torch,torchkeep,raw", "--size", "small:n=300", "--no-cold",
           "--out", str(out), "--scratch", str(tmp_path)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["machine"]["torch"]
    rows = {(s["op"], s["contender"], s.get("fsync")): s for s in data["summary"]}
    for key in [("save", "torchkeep", True), ("save", "raw", False), ("load_into", "torchkeep", False),
                ("load_into", "torch", False), ("load", "torchkeep", False)]:
        assert key in rows and rows[key]["runs"] == 1 and not rows[key]["errors"], (key, rows.get(key))
        assert rows[key]["seconds"] > 0 and rows[key]["extra_rss"] >= 0
    md = (out / "results.md").read_text()
    assert "## Goals (issue 8)" in md and "tk.load_into" in md
    assert (out / "chart.png").stat().st_size > 1000
    assert (out / "README_SECTION.md").read_text().startswith("## Performance")
