"""torchkeep average A B ... -o OUT: the uniform average of several checkpoints' weights.

fairseq/timm style: the state dict of each file (found as ``load_into`` finds it, or
``--key``) is averaged tensor by tensor; floating tensors are summed in float64 and cast
back; integer and bool tensors must be equal in every file (``--ints first`` takes the first
file's instead). Names, shapes and dtypes must agree; every disagreement is listed at once.
Tensors are read one name at a time, so memory holds one model plus one tensor per file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch

from .._api import save
from .._io.fs import resolve
from ..errors import KeyMismatchError, TorchkeepError
from ..formats import open_lazy
from ..keys._containers import find_state_dict
from ._common import console, refuse_overwrite

__all__ = ["register", "run", "average"]


def register(sub: Any) -> None:
    p = sub.add_parser("average", help="uniform average of the weights of several checkpoints")
    p.add_argument("inputs", nargs="+", metavar="CKPT", help="two or more checkpoints with the same keys")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="where to write the averaged state dict")
    p.add_argument("--key", help="dotted path of the state dict inside each checkpoint (default: found automatically)")
    p.add_argument("--ints", choices=["error", "first"], default="error",
                   help="integer/bool tensors that differ: refuse (default) or take the first file's")
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    p.set_defaults(func=run)


def _read(t: Any) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else t.read()


def average(paths: Sequence[str], *, key: str | None = None, ints: str = "error") -> dict[str, torch.Tensor]:
    """The averaged state dict of ``paths`` (every name, shape and dtype must agree)."""
    if len(paths) < 2:
        raise TorchkeepError("give at least two checkpoints.")
    with ExitStack() as stack:
        sds = []
        for p in paths:
            tree = stack.enter_context(open_lazy(resolve(p).require()))
            sds.append(find_state_dict(tree, key=key, where=p)[1])
        first = sds[0]
        problems = []
        for p, sd in zip(paths[1:], sds[1:]):
            missing = [k for k in first if k not in sd]
            extra = [k for k in sd if k not in first]
            if missing:
                problems.append(f"{p} lacks {len(missing)} keys of {paths[0]}: {', '.join(missing)}")
            if extra:
                problems.append(f"{p} has {len(extra)} keys {paths[0]} lacks: {', '.join(extra)}")
            bad = [f"{k} {_desc(first[k])} vs {_desc(sd[k])}" for k in first
                   if k in sd and (tuple(sd[k].shape) != tuple(first[k].shape) or sd[k].dtype != first[k].dtype)]
            if bad:
                problems.append(f"{p} differs from {paths[0]} in shape/dtype: {'; '.join(bad)}")
        if problems:
            raise KeyMismatchError("the checkpoints do not have the same tensors:\n  " + "\n  ".join(problems)
                                   + "\nFix: average checkpoints of one model (same architecture), or pick the "
                                     "state dict with --key.")
        out: dict[str, torch.Tensor] = {}
        unequal = []
        n = len(sds)
        for k in first:
            base = _read(first[k])
            if base.is_floating_point() or base.is_complex():
                acc = base.to(torch.complex128 if base.is_complex() else torch.float64)
                for sd in sds[1:]:
                    acc += _read(sd[k]).to(acc.dtype)
                out[k] = (acc / n).to(base.dtype)
            else:
                if any(not torch.equal(base, _read(sd[k])) for sd in sds[1:]):
                    unequal.append(k)
                out[k] = base
        if unequal and ints == "error":
            raise KeyMismatchError(
                f"integer/bool tensors differ between the checkpoints and cannot be averaged: "
                f"{', '.join(unequal)}. Fix: --ints first keeps the first checkpoint's values."
            )
    return out


def _desc(t: Any) -> str:
    return f"{str(t.dtype).removeprefix('torch.')}[{', '.join(map(str, t.shape))}]"


def run(args: argparse.Namespace) -> int:
    refuse_overwrite(args.output, args.force)
    def where(p: str) -> str:
        loc = resolve(p)
        return os.path.realpath(loc.path) if loc.is_local else loc.url

    if where(args.output) in {where(p) for p in args.inputs}:
        raise TorchkeepError(f"the output {args.output} is also an input; write somewhere else.")
    sd = average(args.inputs, key=args.key, ints=args.ints)
    save(sd, args.output)
    total = sum(t.numel() for t in sd.values())
    console().print(f"averaged {len(args.inputs)} checkpoints -> {args.output}: {len(sd)} tensors, {total:,} values")
    return 0
