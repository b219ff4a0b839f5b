"""torchkeep verify PATH [--json]: checksums, completeness and loadability.

PATH is a run directory (every step), a step folder, or a single file (structure and every
tensor read; checksums too when the file lies in a step folder). Exit 0 when everything
verifies, 1 when something is damaged (the damaged files are named), 2 when PATH cannot be
read as a checkpoint at all.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._api import load
from .._io.fs import Location, resolve
from ..errors import CorruptCheckpointError, NotFoundError
from ..manager._layout import LOCK_FILE, MANIFEST, TMP_PREFIX, parse_step
from ..manager._verify import read_manifest, verify_step
from ._common import console, print_json


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="checksums, completeness and loadability of a run, a step or a file")
    p.add_argument("path", help="run directory, step folder, or checkpoint file (path or URL)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def check(path: str) -> list[dict[str, Any]]:
    """One result per checked item: {"path", "kind", "status": ok|damaged|incomplete, "problems", "damaged_files"}."""
    loc = resolve(path)
    if not loc.exists():
        raise NotFoundError(f"{path}: not found. Check the path.")
    if loc.isdir():
        names = loc.listdir()
        if MANIFEST in names:
            return [_step(loc)]
        if LOCK_FILE in names or any(parse_step(n) is not None for n in names):
            return _run_dir(loc, names)
    return [_file(loc)]


def _step(loc: Location) -> dict[str, Any]:
    c = verify_step(loc, full=True, load=True)
    return {
        "path": str(loc),
        "kind": "step",
        "step": c.manifest.step if c.manifest else parse_step(loc.name),
        "status": "ok" if c.ok else "damaged",
        "problems": c.problems,
        "damaged_files": c.damaged_files,
    }


def _run_dir(loc: Location, names: list[str]) -> list[dict[str, Any]]:
    out = []
    for n in names:
        sub = loc.join(n)
        if parse_step(n) is not None:
            if sub.join(MANIFEST).exists():
                out.append(_step(sub))
            else:
                out.append({"path": str(sub), "kind": "step", "step": parse_step(n), "status": "incomplete",
                            "problems": ["no manifest: an interrupted save (never restored; removed by the next Checkpointer)"],
                            "damaged_files": []})
        elif n.startswith(TMP_PREFIX):
            out.append({"path": str(sub), "kind": "leftover", "step": None, "status": "incomplete",
                        "problems": ["leftover of an interrupted save (removed by the next Checkpointer)"], "damaged_files": []})
    return out


def _file(loc: Location) -> dict[str, Any]:
    problems: list[str] = []
    parent = loc.parent
    try:
        in_step = not loc.isdir() and parent.join(MANIFEST).exists()
    except OSError:
        in_step = False
    if in_step:
        try:
            man = read_manifest(parent)
        except CorruptCheckpointError as e:
            problems.append(str(e))
        else:
            if loc.name in man.files:
                c = verify_step(parent, full=True)
                problems += [p for p in c.problems if loc.name in p]
    if not problems:
        try:
            load(loc.url)
        except CorruptCheckpointError as e:
            problems.append(str(e))
    return {
        "path": str(loc),
        "kind": "file" if not loc.isdir() else "folder",
        "step": None,
        "status": "damaged" if problems else "ok",
        "problems": problems,
        "damaged_files": [str(loc)] if problems else [],
    }


def run(args: argparse.Namespace) -> int:
    results = check(args.path)
    damaged = [r for r in results if r["status"] == "damaged"]
    if args.json:
        print_json({"ok": not damaged, "results": results})
        return 1 if damaged else 0
    c = console()
    if not results:
        c.print(f"{args.path}: no checkpoints to verify")
    for r in results:
        label = {"ok": "[green]ok[/green]", "damaged": "[red]DAMAGED[/red]", "incomplete": "[yellow]incomplete[/yellow]"}[r["status"]]
        c.print(f"{label}  {r['path']}")
        for p in r["problems"]:
            c.print(f"    {p}")
    if damaged:
        files = sorted({f for r in damaged for f in r["damaged_files"]})
        c.print(f"[red]{len(damaged)} damaged[/red]: " + ", ".join(files))
        return 1
    n_ok = sum(r["status"] == "ok" for r in results)
    c.print(f"{n_ok} verified, no damage")
    return 0
