"""torchkeep ls RUN_DIR [--json] [--verify] [--monitor M --mode min|max]: a run's checkpoints."""

from __future__ import annotations

import argparse
import time
from typing import Any

from .._io.fs import resolve
from ..errors import NotFoundError, TorchkeepError
from ..manager._checkpointer import list_checkpoints
from ..manager._layout import LOCK_FILE, MANIFEST, parse_step
from ..manager._retention import best_step
from ..manager._verify import read_manifest, verify_step
from ._common import console, format_size, print_json, print_table


def register(sub: Any) -> None:
    p = sub.add_parser("ls", help="checkpoints of a run: step, created, size, metrics, valid, best/latest")
    p.add_argument("run_dir", help="a Checkpointer run directory (path or URL)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verify", action="store_true", help="check every checksum (reads all data) instead of sizes only")
    p.add_argument("--monitor", help="metric that defines 'best' (default: the one the run recorded)")
    p.add_argument("--mode", choices=["min", "max"], help="'min' or 'max' for --monitor (default: recorded, else min)")
    p.set_defaults(func=run)


def rows(run_dir: str, *, verify: bool = False, monitor: str | None = None, mode: str | None = None) -> list[dict[str, Any]]:
    loc = resolve(run_dir)
    if not loc.exists():
        raise NotFoundError(f"{run_dir}: no such run directory. Check the path.")
    if not loc.isdir():
        raise TorchkeepError(f"{run_dir} is a file; `torchkeep ls` lists a run directory. For one file use `torchkeep inspect`.")
    names = loc.listdir()
    if MANIFEST in names:
        raise TorchkeepError(f"{run_dir} is one step folder; list its run with `torchkeep ls {loc.parent}`.")
    if LOCK_FILE not in names and not any(parse_step(n) is not None for n in names):
        raise TorchkeepError(f"{run_dir} holds no torchkeep checkpoints (no step_* folders). Point at a Checkpointer directory.")
    records = list_checkpoints(loc)
    if verify:
        checked = []
        for r in records:
            if r.valid:
                c = verify_step(resolve(r.path), full=True)
                if not c.ok:
                    r = type(r)(r.step, r.path, r.metrics, r.size, r.created, False, "; ".join(c.problems))
            checked.append(r)
        records = checked
    valid = [r for r in records if r.valid]
    if monitor is None and valid:
        try:
            recorded = read_manifest(resolve(valid[-1].path)).run
        except TorchkeepError:
            recorded = {}
        monitor = recorded.get("monitor")
        mode = mode or recorded.get("mode")
    best = best_step(valid, monitor, mode or "min")
    latest = valid[-1].step if valid else None
    out = []
    for r in records:
        out.append(
            {
                "step": r.step,
                "path": r.path,
                "created": r.created,
                "created_iso": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(r.created)) if r.created else None,
                "size": r.size,
                "metrics": r.metrics,
                "valid": r.valid,
                "problem": r.problem,
                "latest": r.step == latest,
                "best": r.step == best,
            }
        )
    return out


def run(args: argparse.Namespace) -> int:
    data = rows(args.run_dir, verify=args.verify, monitor=args.monitor, mode=args.mode)
    if args.json:
        print_json(data)
        return 0
    from rich.table import Table

    c = console()
    t = Table(title=str(args.run_dir), box=None, pad_edge=False)
    for col, just in (("step", "right"), ("created", "left"), ("size", "right"), ("metrics", "left"), ("valid", "left"), ("", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in data:
        metrics = "  ".join(f"{k}={_fmt(v)}" for k, v in r["metrics"].items())
        valid = "[green]yes[/green]" if r["valid"] else f"[red]NO[/red] {r['problem']}"
        marks = " ".join(m for m, on in (("latest", r["latest"]), ("best", r["best"])) if on)
        t.add_row(str(r["step"]), (r["created_iso"] or "").replace("T", " "), format_size(r["size"]), metrics, valid, marks)
    print_table(c, t)
    if not data:
        c.print("no checkpoints yet")
    else:
        bad = sum(not r["valid"] for r in data)
        total = sum(r["size"] for r in data)
        c.print(f"{len(data)} checkpoint(s), {format_size(total)}" + (f", [red]{bad} damaged[/red]" if bad else ""))
    return 0


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)
