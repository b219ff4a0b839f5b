"""summary: a table of a model's modules with trainable/frozen parameters, bytes and dtypes.

Each parameter counts once (tied weights under their first name) in the row of its owning
module cut to ``depth`` levels, so the rows always add up to the totals. A row for a module
that has children at the cut depth holds only the parameters registered on it directly
(``(root)`` for the model's own).
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .._units import format_size
from ..errors import SelectionError
from ._freeze import is_bn_locked

__all__ = ["ModelSummary", "SummaryRow", "summary"]

_WIDTH = 120


def _dt(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


@dataclass
class SummaryRow:
    module: str  # dotted path, "(root)" for parameters on the model itself
    type: str
    trainable: int = 0  # elements
    frozen: int = 0
    bytes: int = 0  # parameter bytes
    dtypes: list[str] = field(default_factory=list)
    note: str = ""  # "bn eval" where freeze(..., bn_eval=True) locked a BatchNorm below

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


@dataclass
class ModelSummary:
    """What :func:`summary` returns: ``rows``, totals, ``to_dict()``; prints as a table."""

    model: str
    depth: int | None
    rows: list[SummaryRow]
    trainable: int
    frozen: int
    bytes: int
    dtypes: dict[str, int]  # parameter tensors per dtype
    buffer_bytes: int
    training: bool

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total"] = self.total
        for r, row in zip(d["rows"], self.rows):
            r["total"] = row.total
        return d

    def table(self) -> Any:
        from rich.table import Table

        t = Table(title=f"{self.model} ({'train' if self.training else 'eval'} mode)", title_justify="left")
        for col, just in (
            ("module", "left"), ("type", "left"), ("trainable", "right"), ("frozen", "right"),
            ("bytes", "right"), ("dtypes", "left"), ("note", "left"),
        ):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for r in self.rows:
            t.add_row(
                r.module, r.type, f"{r.trainable:,}", f"{r.frozen:,}", format_size(r.bytes),
                ", ".join(r.dtypes), r.note,
            )
        dts = ", ".join(f"{k} x{v}" for k, v in sorted(self.dtypes.items()))
        t.add_section()
        t.add_row("total", "", f"{self.trainable:,}", f"{self.frozen:,}", format_size(self.bytes), dts, "")
        return t

    def __rich__(self) -> Any:
        return self.table()

    def __str__(self) -> str:
        from rich.console import Console

        buf = io.StringIO()
        Console(file=buf, width=_WIDTH, color_system=None, force_terminal=False, highlight=False).print(self.table())
        text = "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
        pct = 100.0 * self.trainable / self.total if self.total else 0.0
        return text + (
            f"{self.total:,} parameters: {self.trainable:,} trainable ({pct:.1f}%), {self.frozen:,} frozen; "
            f"{format_size(self.bytes)} of parameters, {format_size(self.buffer_bytes)} of buffers\n"
        )

    def __repr__(self) -> str:
        return str(self)


def summary(model: nn.Module, *, depth: int | None = 2) -> ModelSummary:
    """Modules of ``model`` down to ``depth`` levels (``None``: every module) with trainable and
    frozen parameter counts, bytes and dtypes, and totals. ``print()`` it for a table (no
    terminal needed); ``to_dict()`` for scripts.
    """
    if not isinstance(model, nn.Module):
        raise SelectionError(f"summary: expected an nn.Module, got {type(model).__name__}.")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise SelectionError(f"summary: depth must be a positive int or None, got {depth!r}.")
    modules = dict(model.named_modules())
    rows: dict[str, SummaryRow] = {}

    def cut(path: str) -> str:
        return path if depth is None else ".".join(path.split(".")[:depth]) if path else ""

    for name, m in modules.items():  # rows in print(model) order
        if next(m.parameters(recurse=False), None) is not None:
            key = cut(name)
            if key not in rows:
                rows[key] = SummaryRow(key or "(root)", type(modules[key]).__name__)
    dtypes: Counter[str] = Counter()
    for pname, p in model.named_parameters():
        row = rows[cut(pname.rpartition(".")[0])]
        if p.requires_grad:
            row.trainable += p.numel()
        else:
            row.frozen += p.numel()
        row.bytes += p.numel() * p.element_size()
        if _dt(p) not in row.dtypes:
            row.dtypes.append(_dt(p))
        dtypes[_dt(p)] += 1
    for name, m in modules.items():
        if is_bn_locked(m) and cut(name) in rows:
            rows[cut(name)].note = "bn eval"
    ordered = list(rows.values())
    return ModelSummary(
        model=type(model).__name__,
        depth=depth,
        rows=ordered,
        trainable=sum(r.trainable for r in ordered),
        frozen=sum(r.frozen for r in ordered),
        bytes=sum(r.bytes for r in ordered),
        dtypes=dict(dtypes),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        training=model.training,
    )
