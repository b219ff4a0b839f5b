"""``torchkeep`` command line: one thin module per command (parse, call, print)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import TorchkeepError

__all__ = ["main", "build_parser", "COMMANDS"]

# command modules, in the order `torchkeep --help` lists them
COMMANDS = ["inspect", "diff", "convert", "verify", "average", "ls", "demo", "migrate"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(
        prog="torchkeep",
        description="Save, load, resume, convert, inspect and transfer PyTorch checkpoints, safely.",
    )
    p.add_argument("--version", action="version", version=f"torchkeep {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}._{name}").register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except TorchkeepError as e:
        print(f"torchkeep {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"torchkeep {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
