"""torchkeep inspect PATH [--json] [--all]: what is inside, without reading tensor data."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from typing import Any

from .._api import inspect
from ..formats._base import CheckpointInfo, TensorInfo
from ._common import console, format_size, print_json, print_table

_NUM = re.compile(r"(?<=\.)\d+(?=\.|$)")


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="what is inside a checkpoint, without loading tensor data")
    p.add_argument("path", help="file, folder or URL")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="list every tensor instead of groups")
    p.set_defaults(func=run)


def group_key(name: str) -> str:
    """The tensor's module path, numbered runs collapsed: ``encoder.layer.3.attn.q.weight``
    -> ``encoder.layer.*``; ``state_dict.module.head.weight`` -> ``state_dict.module.head``."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[:i] + ["*"])
    return ".".join(parts[:-1]) if len(parts) > 1 else "(top level)"


def short(v: Any) -> str:
    """A value for one line: long lists shown by their ends and length."""
    if isinstance(v, (list, tuple)) and len(v) > 8:
        kinds = sorted({type(x).__name__ for x in v})
        return f"[{', '.join(map(repr, v[:3]))}, ..., {v[-1]!r}] ({len(v)} {'/'.join(kinds)})"
    r = repr(v)
    return r if len(r) <= 200 else r[:197] + "..."


def groups(tensors: list[TensorInfo]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t in tensors:
        g = out.setdefault(group_key(t.name), {"group": group_key(t.name), "tensors": 0, "params": 0, "bytes": 0, "dtypes": Counter(), "indices": set()})
        g["tensors"] += 1
        g["params"] += t.numel
        g["bytes"] += t.nbytes
        g["dtypes"][t.dtype] += 1
        m = _NUM.search(t.name)
        if m:
            g["indices"].add(int(m.group()))
    rows = []
    for g in out.values():
        idx = sorted(g.pop("indices"))
        g["range"] = f"{{{idx[0]}..{idx[-1]}}}" if len(idx) > 1 else ""
        g["dtypes"] = ", ".join(sorted(g["dtypes"]))
        rows.append(g)
    return rows


def render(info: CheckpointInfo, show_all: bool = False) -> None:
    from rich.table import Table

    c = console()
    c.print(f"[bold]{info.path}[/bold]  format: [cyan]{info.format}[/cyan]  file: {format_size(info.file_size)}")
    if show_all:
        t = Table(box=None, pad_edge=False)
        for col, just in (("tensor", "left"), ("shape", "left"), ("dtype", "left"), ("bytes", "right")):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for ti in info.tensors:
            t.add_row(ti.name, str(list(ti.shape)), ti.dtype, format_size(ti.nbytes))
    else:
        t = Table(box=None, pad_edge=False)
        for col, just in (("group", "left"), ("layers", "left"), ("tensors", "right"), ("params", "right"), ("bytes", "right"), ("dtypes", "left")):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for g in groups(info.tensors):
            t.add_row(g["group"], g["range"], str(g["tensors"]), f"{g['params']:,}", format_size(g["bytes"]), g["dtypes"])
    print_table(c, t)
    dts = ", ".join(f"{k} x{v}" for k, v in sorted(info.dtypes.items()))
    c.print(f"[bold]total[/bold]: {info.num_tensors} tensors, {info.total_params:,} params, {format_size(info.total_bytes)} ({dts})")
    if info.values:
        c.print("[bold]values[/bold]:")
        for k, v in list(info.values.items())[:50]:
            c.print(f"  {k} = {short(v)}")
        if len(info.values) > 50:
            c.print(f"  ... and {len(info.values) - 50} more (use --json)")
    if info.metadata:
        c.print("[bold]metadata[/bold]:")
        for k, v in info.metadata.items():
            s = v if isinstance(v, str) else repr(v)
            c.print(f"  {k}: {s[:200]}")
    if info.placeholders:
        c.print(f"[bold yellow]placeholders[/bold yellow] (objects not imported, kept inert): {len(info.placeholders)}")
        for p in info.placeholders[:20]:
            c.print(f"  {p}")


def run(args: argparse.Namespace) -> int:
    info = inspect(args.path)
    if args.json:
        print_json(info.to_dict())
    else:
        render(info, args.all)
    return 0
