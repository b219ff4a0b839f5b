"""Small helpers shared by commands: console, JSON output, size formatting, --force checks."""

from __future__ import annotations

import json
import sys
from typing import Any

from .._io.fs import resolve
from .._units import format_size
from ..errors import TorchkeepError

__all__ = ["console", "print_json", "format_size", "refuse_overwrite"]


def console() -> Any:
    from rich.console import Console

    import sys as _sys

    width = None if _sys.stdout.isatty() else 160  # pipes and logs: don't wrap at 80 columns
    return Console(highlight=False, soft_wrap=True, width=width)


def print_table(c: Any, table: Any) -> None:
    """Print a rich table without the padding rich leaves at the end of each line."""
    with c.capture() as cap:
        c.print(table)
    lines = cap.get().split("\n")
    sys.stdout.write("\n".join(line.rstrip() for line in lines))
    sys.stdout.flush()


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str, allow_nan=True)
    sys.stdout.write("\n")


def refuse_overwrite(path: str, force: bool) -> None:
    if not force and resolve(path).exists():
        raise TorchkeepError(f"{path} already exists; pass --force to overwrite it.")
