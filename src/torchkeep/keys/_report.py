"""LoadReport: what a load did, key by key; a rich table, a dict for scripts, the strict error."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LoadReport", "collapse"]

Shape = tuple[int, ...]


def _fmt_indices(values: set[int]) -> str:
    vals = sorted(values)
    if len(vals) == 1:
        return str(vals[0])
    runs: list[str] = []
    start = prev = vals[0]
    for v in vals[1:] + [None]:  # type: ignore[list-item]
        if v is not None and v == prev + 1:
            prev = v
            continue
        runs.append(str(start) if start == prev else (f"{start},{prev}" if prev == start + 1 else f"{start}..{prev}"))
        if v is not None:
            start = prev = v
    return "{" + ",".join(runs) + "}"


def collapse(rows: Iterable[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, tuple[Any, ...], int]]:
    """Merge rows whose keys differ only in numeric components: ``layers.{0..11}.weight``.

    Rows are ``(key, extra)``; only rows with equal ``extra`` (shapes) merge. Returns
    ``(pattern, extra, count)`` in first-seen order.
    """
    items: list[tuple[list[Any], tuple[Any, ...], int]] = [
        ([int(c) if c.isdigit() and (c == "0" or not c.startswith("0")) else c for c in k.split(".")], extra, 1)
        for k, extra in rows
    ]
    slot = 0
    while True:
        grouped: dict[Any, tuple[list[Any], tuple[Any, ...], int, int]] = {}
        any_slot = False
        for comps, extra, n in items:
            pos = [i for i, c in enumerate(comps) if not isinstance(c, str)]
            if len(pos) <= slot:
                gk: Any = (tuple(_freeze(c) for c in comps), extra, None)
                grouped.setdefault(gk, (comps, extra, 0, 0))
                c0, e0, n0, _ = grouped[gk]
                grouped[gk] = (c0, e0, n0 + n, 0)
                continue
            any_slot = True
            i = pos[slot]
            gk = (tuple(_freeze(c) if j != i else None for j, c in enumerate(comps)), extra, i)
            vals = comps[i] if isinstance(comps[i], frozenset) else frozenset([comps[i]])
            if gk in grouped:
                c0, e0, n0, _ = grouped[gk]
                merged = frozenset(c0[i]) | vals
                c0 = list(c0)
                c0[i] = merged
                grouped[gk] = (c0, e0, n0 + n, 0)
            else:
                c1 = list(comps)
                c1[i] = vals
                grouped[gk] = (c1, extra, n, 0)
        items = [(c, e, n) for c, e, n, _ in grouped.values()]
        if not any_slot:
            break
        slot += 1
    out = []
    for comps, extra, n in items:
        parts = [c if isinstance(c, str) else (_fmt_indices(set(c)) if isinstance(c, frozenset) else str(c)) for c in comps]
        out.append((".".join(parts), extra, n))
    return out


def _freeze(c: Any) -> Any:
    return c if isinstance(c, (str, int, frozenset)) else frozenset(c)


def _shape(s: Sequence[int] | None) -> str:
    return "" if s is None else "[" + ", ".join(map(str, s)) + "]"


@dataclass
class LoadReport:
    """What :func:`torchkeep.load_into` did (or, with ``dry_run=True``, would do).

    Keys in ``loaded``/``missing``/``mismatched``/``partial``/``skipped`` are the model's
    names; ``unexpected`` and the left side of ``renamed``/``ambiguous`` are the checkpoint's.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)  # (key, checkpoint shape, model shape)
    renamed: dict[str, str] = field(default_factory=dict)  # checkpoint name -> model name
    partial: list[str] = field(default_factory=list)  # mismatched keys whose overlapping slice was copied
    skipped: list[str] = field(default_factory=list)  # left out by include=/exclude=
    ambiguous: dict[str, list[str]] = field(default_factory=dict)  # checkpoint name -> candidate model names
    source: str = "<mapping>"
    container: str = ""  # where the state dict was inside the checkpoint ("" = top level)
    prefix: str = "none"  # the wrapper-prefix change applied to every checkpoint name
    alternatives: list[str] = field(default_factory=list)  # other state dicts in the file (EMA ...)
    dry_run: bool = False
    # explanations of renames not due to the prefix change: "rule" or "suffix"
    rename_reason: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, Shape] = field(default_factory=dict, repr=False)  # model shapes by model name
    source_shapes: dict[str, Shape] = field(default_factory=dict, repr=False)  # checkpoint shapes by its names

    @property
    def ok(self) -> bool:
        """Everything in the checkpoint and the model matched one to one."""
        return not (self.missing or self.unexpected or self.mismatched)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "container": self.container,
            "prefix": self.prefix,
            "dry_run": self.dry_run,
            "loaded": list(self.loaded),
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "mismatched": [{"key": k, "checkpoint_shape": list(a), "model_shape": list(b)} for k, a, b in self.mismatched],
            "partial": list(self.partial),
            "renamed": dict(self.renamed),
            "skipped": list(self.skipped),
            "ambiguous": {k: list(v) for k, v in self.ambiguous.items()},
            "alternatives": list(self.alternatives),
        }

    # ---- rendering -------------------------------------------------------------------------
    def summary(self) -> str:
        verb = "would load" if self.dry_run else "loaded"
        where = self.source + (f" [{self.container}]" if self.container else "")
        parts = [f"{len(self.loaded)} {verb}", f"{len(self.missing)} missing", f"{len(self.unexpected)} unexpected",
                 f"{len(self.mismatched)} mismatched"]
        if self.partial:
            parts.append(f"{len(self.partial)} partial")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        if self.ambiguous:
            parts.append(f"{len(self.ambiguous)} ambiguous")
        line = f"LoadReport: {', '.join(parts)} from {where}; prefix: {self.prefix}"
        if self.alternatives:
            line += f"; also in the file: {', '.join(self.alternatives)} (pick with key=)"
        return line

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(status, key pattern, checkpoint shape, model shape), runs collapsed."""
        out: list[tuple[str, str, str, str]] = []
        mism = {k: (a, b) for k, a, b in self.mismatched}
        partial = set(self.partial)
        for status, rows in (
            ("mismatched", [(k, (_shape(a), _shape(b), "partial" if k in partial else "")) for k, a, b in self.mismatched]),
            ("missing", [(k, ("", _shape(self.shapes.get(k)), "")) for k in self.missing]),
            ("unexpected", [(k, (_shape(self.source_shapes.get(k)), "", "")) for k in self.unexpected]),
        ):
            for pattern, (a, b, note), n in collapse(rows):
                out.append((status + (f" ({note})" if note else ""), pattern, a, b))
        for s, cands in self.ambiguous.items():
            out.append(("ambiguous", f"{s} -> {' | '.join(cands)}", "", ""))
        for s, t in self.renamed.items():
            why = self.rename_reason.get(s)
            if why and t not in mism:
                out.append((f"renamed ({why})", f"{s} -> {t}", "", ""))
        for pattern, (b,), n in collapse((k, (_shape(self.shapes.get(k)),)) for k in self.skipped):
            out.append(("skipped", pattern, "", b))
        for pattern, (b,), n in collapse((k, (_shape(self.shapes.get(k)),)) for k in self.loaded):
            out.append(("would load" if self.dry_run else "loaded", pattern, b, b))
        return out

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        t = Table(show_edge=False, pad_edge=False)
        t.add_column("status")
        t.add_column("key")
        t.add_column("checkpoint")
        t.add_column("model")
        styles = {"mismatched": "red", "missing": "yellow", "unexpected": "magenta", "ambiguous": "red"}
        for status, key, a, b in self.rows():
            t.add_row(status, key, a, b, style=styles.get(status.split(" ")[0]))
        return Group(Text(self.summary()), t)

    def render(self, width: int = 120) -> str:
        """The table as plain text (no terminal needed)."""
        from rich.console import Console

        buf = io.StringIO()
        Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False,
                soft_wrap=False).print(self.__rich__())
        return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"<{self.summary()}>"

    # ---- the strict error ------------------------------------------------------------------
    def error_message(self, *, strict: bool, on_mismatch: str) -> str:
        """Every offending key, once, and the fix."""
        where = self.source + (f" [{self.container}]" if self.container else "")
        lines = [
            f"cannot load {where} into the model: {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.mismatched)} with another shape (strict={strict}, on_mismatch={on_mismatch!r}); "
            f"prefix: {self.prefix}. Nothing in the model was changed."
        ]

        def section(title: str, rows: list[tuple[str, tuple[Any, ...]]], fmt: Any) -> None:
            if not rows:
                return
            lines.append(f"  {title}:")
            items = [(k, e, 1) for k, e in rows] if len(rows) <= 40 else collapse(rows)
            width = min(max(len(k) for k, _, _ in items), 60)
            for k, e, _ in items:
                lines.append(f"    {k.ljust(width)}  {fmt(e)}".rstrip())

        if on_mismatch == "error":
            section("shape mismatch (checkpoint -> model)", [(k, (a, b)) for k, a, b in self.mismatched],
                    lambda e: f"{_shape(e[0])} -> {_shape(e[1])}")
        if strict:
            section("missing (in the model, not in the checkpoint)", [(k, (self.shapes.get(k),)) for k in self.missing],
                    lambda e: _shape(e[0]))
            section("unexpected (in the checkpoint, not in the model)",
                    [(k, (self.source_shapes.get(k),)) for k in self.unexpected], lambda e: _shape(e[0]))
        if self.ambiguous:
            lines.append("  ambiguous suffix matches (not taken):")
            for s, c in self.ambiguous.items():
                lines.append(f"    {s} -> {' | '.join(c)}")
        fixes = []
        if strict and (self.missing or self.unexpected):
            fixes.append("strict=False loads what fits and reports the rest")
        if self.mismatched and on_mismatch == "error":
            fixes.append('on_mismatch="skip" leaves mismatched tensors as they are, "partial" copies the overlapping slice')
        if self.missing and self.unexpected:
            fixes.append('rename={"old.": "new."} (or [(regex, repl)] or a callable) maps checkpoint names to model names')
        fixes.append("include=/exclude= globs limit the model keys; dry_run=True shows the plan")
        lines.append("Fix: " + "; ".join(fixes) + ".")
        return "\n".join(lines)
