"""torchkeep migrate OLD.pt NEW.safetensors: a torch.save(model) pickle -> save_model format."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import TorchkeepError
from ._common import refuse_overwrite


def register(sub: Any) -> None:
    p = sub.add_parser(
        "migrate",
        help="turn a whole-model pickle (torch.save(model)) into a save_model file, without running it",
        description=(
            "Reads OLD with the restricted unpickler (nothing in it runs), imports only the model "
            "classes under torch and --allow prefixes, recovers their constructor arguments, and "
            "writes NEW loadable by torchkeep.load_model."
        ),
    )
    p.add_argument("source", metavar="OLD", help="file written by torch.save(model)")
    p.add_argument("target", metavar="NEW", help="output .safetensors file")
    p.add_argument("--allow", action="append", default=[], metavar="PREFIX", help="module prefix whose classes may be imported (repeatable)")
    p.add_argument("--class-map", action="append", default=[], metavar="OLD=NEW", help="map a moved class or module path (repeatable)")
    p.add_argument("--force", action="store_true", help="overwrite NEW if it exists")
    p.set_defaults(func=run)


def parse_class_map(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise TorchkeepError(f"--class-map {item!r}: expected OLD=NEW, e.g. --class-map old.mod.Net=new.mod.Net")
        out[old.strip()] = new.strip()
    return out


def run(args: argparse.Namespace) -> int:
    from ..model._migrate import migrate

    refuse_overwrite(args.target, args.force)
    report = migrate(args.source, args.target, allow=args.allow, class_map=parse_class_map(args.class_map) or None)
    for line in report.lines():
        print(line)
    return 0
