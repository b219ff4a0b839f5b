"""torchkeep diff A B [--json]: names only in A or B, shape/dtype changes, largest value changes.

Exit 0 when the checkpoints are identical (every tensor bit-equal, every value equal), 1 when
they differ, 2 when one cannot be read. Tensors are read one pair at a time.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from typing import Any

import torch

from .._io.fs import resolve
from ..formats import open_lazy
from ..keys._containers import is_tensor_like
from ._common import console, print_json, print_table

__all__ = ["register", "run", "diff", "tensor_diff", "flatten"]


def register(sub: Any) -> None:
    p = sub.add_parser("diff", help="compare two checkpoints: keys, shapes, dtypes, largest value changes")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--top", type=int, default=20, help="value changes to list (default 20; --json lists all)")
    p.set_defaults(func=run)


def flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted name, leaf) for every tensor and plain value in a checkpoint tree."""
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from flatten(v, f"{prefix}{k}.")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from flatten(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1] if prefix else "<root>", tree


def _read(t: Any) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else t.read()


def tensor_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float] | None:
    """``None`` when bit-equal, else (max |a-b|, max |a-b| / max |a|) computed in float64."""
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    if a.numel() == 0 or torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)):
        return None
    if a.is_complex() or b.is_complex():
        a64, b64 = a.to(torch.complex128), b.to(torch.complex128)
    else:
        a64, b64 = a.to(torch.float64), b.to(torch.float64)
    d = (a64 - b64).abs()
    both_nan = torch.isnan(a64) & torch.isnan(b64) if not a64.is_complex() else torch.zeros_like(d, dtype=torch.bool)
    d = torch.where(both_nan, torch.zeros_like(d), d)
    max_abs = float(torch.nan_to_num(d, nan=float("inf")).max())
    scale = float(torch.nan_to_num(a64.abs(), nan=0.0, posinf=0.0).max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return max_abs, max_rel


def diff(a_path: str, b_path: str) -> dict[str, Any]:
    """The whole comparison as a JSON-able dict (``identical`` says whether anything differs)."""
    with ExitStack() as stack:
        ta = stack.enter_context(open_lazy(resolve(a_path).require()))
        tb = stack.enter_context(open_lazy(resolve(b_path).require()))
        la, lb = dict(flatten(ta)), dict(flatten(tb))
        only_a = [k for k in la if k not in lb]
        only_b = [k for k in lb if k not in la]
        changed_type: list[dict[str, Any]] = []
        values: list[dict[str, Any]] = []
        plain: list[dict[str, Any]] = []
        equal = 0
        for k, x in la.items():
            if k not in lb:
                continue
            y = lb[k]
            if is_tensor_like(x) and is_tensor_like(y):
                if tuple(x.shape) != tuple(y.shape) or x.dtype != y.dtype:
                    changed_type.append({"key": k, "a": _desc(x), "b": _desc(y)})
                    continue
                d = tensor_diff(_read(x), _read(y))
                if d is None:
                    equal += 1
                else:
                    values.append({"key": k, "max_abs": d[0], "max_rel": d[1], "shape": list(x.shape), "dtype": _dt(x)})
            elif is_tensor_like(x) or is_tensor_like(y):
                changed_type.append({"key": k, "a": _desc(x), "b": _desc(y)})
            elif not _same(x, y):
                plain.append({"key": k, "a": x, "b": y})
            else:
                equal += 1
    values.sort(key=lambda r: (-r["max_abs"], r["key"]))
    identical = not (only_a or only_b or changed_type or values or plain)
    return {"a": a_path, "b": b_path, "identical": identical, "only_in_a": only_a, "only_in_b": only_b,
            "shape_or_dtype_changed": changed_type, "value_changes": values, "plain_value_changes": plain,
            "equal": equal}


def _same(x: Any, y: Any) -> bool:
    try:
        return type(x) is type(y) and (x == y or (x != x and y != y))
    except Exception:  # noqa: BLE001 - exotic leaves compare by repr
        return repr(x) == repr(y)


def _dt(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def _desc(x: Any) -> str:
    if is_tensor_like(x):
        return f"{_dt(x)}[{', '.join(map(str, x.shape))}]"
    return type(x).__name__


def run(args: argparse.Namespace) -> int:
    result = diff(args.a, args.b)
    if args.json:
        print_json(result)
        return 0 if result["identical"] else 1
    from rich.table import Table

    con = console()
    if result["identical"]:
        con.print(f"identical: {result['equal']} entries, every tensor bit-equal")
        return 0
    con.print(f"{args.a} vs {args.b}: {len(result['only_in_a'])} only in A, {len(result['only_in_b'])} only in B, "
              f"{len(result['shape_or_dtype_changed'])} shape/dtype changed, {len(result['value_changes'])} values changed, "
              f"{result['equal']} equal")
    t = Table(show_edge=False, pad_edge=False)
    for col in ("change", "key", "A", "B"):
        t.add_column(col)
    for k in result["only_in_a"]:
        t.add_row("only in A", k, "", "")
    for k in result["only_in_b"]:
        t.add_row("only in B", k, "", "")
    for r in result["shape_or_dtype_changed"]:
        t.add_row("shape/dtype", r["key"], r["a"], r["b"])
    for r in result["plain_value_changes"]:
        t.add_row("value", r["key"], repr(r["a"]), repr(r["b"]))
    if t.row_count:
        print_table(con, t)
    if result["value_changes"]:
        v = Table(show_edge=False, pad_edge=False, title="largest value changes", title_justify="left")
        for col in ("key", "shape", "dtype", "max abs diff", "max rel diff"):
            v.add_column(col, justify="right" if col.startswith("max") else "left")
        shown = result["value_changes"][: max(args.top, 0)]
        for r in shown:
            v.add_row(r["key"], str(r["shape"]), r["dtype"], f"{r['max_abs']:.6g}", f"{r['max_rel']:.6g}")
        con.print(v)
        if len(result["value_changes"]) > len(shown):
            con.print(f"... and {len(result['value_changes']) - len(shown)} more (--top N or --json)")
    return 1
