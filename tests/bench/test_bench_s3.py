"""The S3 benchmark (``python -m benchmarks --workloads s3``) runs end to end on a tiny state."""

from __future__ import annotations

import io
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@pytest.mark.s3
def test_s3_benchmark_writes_results(tmp_path):
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    sys.path.insert(0, ROOT)
    from benchmarks import _s3

    log = io.StringIO()
    result = _s3.run(quick=True, reps=1, out=str(tmp_path / "out"), scratch=str(tmp_path), log=log,
                     params={"d": 64, "layers": 1, "vocab": 256})
    rows = {(s["op"], s["target"]): s for s in result["summary"]}
    assert set(rows) == set(_s3.CASES), log.getvalue()[-3000:]
    assert all(r["gb_s"] > 0 and r["peak_extra_mib"] >= 0 for r in rows.values())
    saved = json.loads((tmp_path / "out" / "s3.json").read_text())
    assert saved["bytes"] == result["bytes"] > 0
    md = (tmp_path / "out" / "s3.md").read_text()
    assert "tk.save, s3:// (multipart)" in md and "tk.load, local disk" in md
