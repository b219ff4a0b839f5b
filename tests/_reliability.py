"""Counters behind RELIABILITY.md: inputs fuzzed per reader, hostile files read, faults
injected, kill trials. Tests call :func:`record`; ``pytest --reliability-report FILE``
writes the totals (summed over xdist workers) and the pass/fail counts of the tests that
recorded them to FILE as JSON. ``python tests/_reliability.py FILE`` prints them as tables.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

# the test files whose pass/fail counts the report lists (what held)
FILES = (
    "tests/fuzz/",
    "tests/formats/test_pickle_hostile.py",
    "tests/formats/test_json_sites.py",
    "tests/manager/test_faults.py",
    "tests/manager/test_kill.py",
    "tests/manager/test_hostile_fs.py",
    "tests/formats/test_save_faults.py",
)

COUNTS: Counter[tuple[str, str]] = Counter()
OUTCOMES: Counter[tuple[str, str]] = Counter()  # (test file, "passed"/"failed"/"skipped")

_CATEGORIES = {
    "fuzz": "Inputs fuzzed, per reader",
    "hostile": "Hostile files read",
    "fault": "Faults injected (write path: call site / error)",
    "kill": "SIGKILL trials",
}


_SUBSET = "(kills that left a temporary file)"  # rows that count a subset of another row


def record(category: str, name: str, n: int = 1) -> None:
    COUNTS[(category, name)] += n


def _parts_dir(report: str) -> Path:
    return Path(report + ".parts")


def dump_part(report: str) -> None:
    d = _parts_dir(report)
    d.mkdir(parents=True, exist_ok=True)
    doc = {
        "counts": [[c, n, v] for (c, n), v in COUNTS.items()],
        "outcomes": [[f, o, v] for (f, o), v in OUTCOMES.items()],
    }
    (d / f"{os.getpid()}.json").write_text(json.dumps(doc))


def merge(report: str, *, argv: list[str], exitstatus: int) -> dict:
    counts: Counter[tuple[str, str]] = Counter()
    outcomes: Counter[tuple[str, str]] = Counter()
    d = _parts_dir(report)
    for part in sorted(d.glob("*.json")) if d.exists() else []:
        doc = json.loads(part.read_text())
        for c, n, v in doc["counts"]:
            counts[(c, n)] += v
        for f, o, v in doc["outcomes"]:
            outcomes[(f, o)] += v
        part.unlink()
    if d.exists():
        d.rmdir()
    out: dict = {"argv": argv, "exitstatus": exitstatus, "counts": {}, "tests": {}}
    for (c, n), v in sorted(counts.items()):
        out["counts"].setdefault(c, {})[n] = v
    for (f, o), v in sorted(outcomes.items()):
        out["tests"].setdefault(f, {})[o] = v
    Path(report).write_text(json.dumps(out, indent=1) + "\n")
    return out


def render(doc: dict) -> str:
    lines = [f"Run: `{' '.join(doc['argv'])}`, exit status {doc['exitstatus']}.", ""]
    for cat, title in _CATEGORIES.items():
        rows = doc["counts"].get(cat, {})
        if cat == "fault":  # one row per scenario (the JSON keeps every call site)
            grouped: Counter[str] = Counter()
            for k, v in rows.items():
                grouped[k.split(":", 1)[0]] += v
            rows = dict(sorted(grouped.items()))
        if not rows:
            continue
        lines += [f"{title}:", "", "| what | count |", "| --- | ---: |"]
        lines += [f"| {k} | {v:,} |" for k, v in rows.items()]
        total = sum(v for k, v in rows.items() if not k.endswith(_SUBSET))
        lines += [f"| **total** | **{total:,}** |", ""]
    lines += ["Tests behind these counts:", "", "| test file | passed | failed | skipped |", "| --- | ---: | ---: | ---: |"]
    for f, o in doc["tests"].items():
        lines.append(f"| {f} | {o.get('passed', 0)} | {o.get('failed', 0)} | {o.get('skipped', 0)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(render(json.loads(Path(path).read_text())))
