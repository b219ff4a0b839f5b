"""torchkeep convert SRC DST: any readable format to any writable one, verified by reloading."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from .._api import load, save
from ..errors import TorchkeepError
from ..keys import add_prefix, strip_prefix
from ._common import console, format_size, refuse_overwrite

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}


def register(sub: Any) -> None:
    p = sub.add_parser("convert", help="convert between formats (verified by reloading)")
    p.add_argument("src")
    p.add_argument("dst", help="*.safetensors, *.pt/.pth/.bin, or a folder (with --max-shard-size)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), help="cast floating tensors")
    p.add_argument("--max-shard-size", help="write a Hugging Face sharded folder, e.g. 2GB")
    p.add_argument("--key", help="convert only this sub-tree, a dotted path such as state_dict or model")
    p.add_argument("--strip-prefix", action="append", default=[], metavar="P", help="remove prefix P from tensor names")
    p.add_argument("--add-prefix", metavar="P", help="prepend P to tensor names")
    p.add_argument("--dcp", action="store_true",
                   help="write DST as a torch.distributed.checkpoint folder (dcp.load reads it at any world size)")
    p.add_argument("--force", action="store_true", help="overwrite DST")
    p.set_defaults(func=run)


def select(tree: Any, key: str, src: str) -> Any:
    node = tree
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, dict) and part.lstrip("-").isdigit() and int(part) in node:
            node = node[int(part)]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            have = ", ".join(map(str, node.keys())) if isinstance(node, dict) else type(node).__name__
            raise TorchkeepError(f"{src}: no key {key!r} (at {part!r}; available: {have}). Fix: --key one of those.")
    return node


def rename(tree: Any, strip: list[str], add: str | None, src: str) -> Any:
    if not strip and not add:
        return tree
    if not isinstance(tree, dict) or not all(isinstance(v, torch.Tensor) for v in tree.values()):
        raise TorchkeepError(f"{src}: --strip-prefix/--add-prefix need a flat state dict; pick one with --key.")
    try:
        for p in strip:
            tree = strip_prefix(tree, p)
    except ValueError as e:
        raise TorchkeepError(f"{src}: {e}") from None
    return add_prefix(tree, add) if add else tree


def cast(tree: Any, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return tree
    if isinstance(tree, torch.Tensor):
        return tree.to(dtype) if tree.is_floating_point() else tree
    if isinstance(tree, dict):
        return {k: cast(v, dtype) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(cast(v, dtype) for v in tree)
    return tree


def leaves(tree: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        return [x for k, v in tree.items() for x in leaves(v, f"{path}{k}.")]
    if isinstance(tree, (list, tuple)):
        return [x for i, v in enumerate(tree) for x in leaves(v, f"{path}{i}.")]
    return [(path.rstrip("."), tree)]


def verify(expected: Any, got: Any, dst: str) -> int:
    a, b = leaves(expected), leaves(got)
    ka, kb = [k for k, _ in a], [k for k, _ in b]
    if ka != kb:
        missing = sorted(set(ka) - set(kb))[:10]
        raise TorchkeepError(f"{dst}: verification failed: reloaded tree differs in keys {missing}; the output was kept for inspection.")
    bad = [k for (k, x), (_, y) in zip(a, b)
           if (isinstance(x, torch.Tensor) and not (isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)))]
    if bad:
        raise TorchkeepError(f"{dst}: verification failed: tensors differ after reload: {', '.join(bad[:10])}")
    return sum(1 for _, x in a if isinstance(x, torch.Tensor))


def run(args: argparse.Namespace) -> int:
    refuse_overwrite(args.dst, args.force)
    tree = load(args.src)
    if args.key:
        tree = select(tree, args.key, args.src)
    tree = rename(tree, args.strip_prefix, args.add_prefix, args.src)
    tree = cast(tree, _DTYPES.get(args.dtype) if args.dtype else None)
    if getattr(args, "dcp", False):
        n = _to_dcp(tree, args)
    else:
        save(tree, args.dst, max_shard_size=args.max_shard_size)
        n = verify(tree, load(args.dst), args.dst)
    total = sum(x.numel() * x.element_size() for _, x in leaves(tree) if isinstance(x, torch.Tensor))
    console().print(f"converted {args.src} -> {args.dst}: {n} tensors, {format_size(total)}, verified bit-equal after reload")
    return 0


def _to_dcp(tree: Any, args: argparse.Namespace) -> int:
    """Write a DCP folder and check it reads back equal (DCP keys are strings, order is its own)."""
    import os
    import shutil

    from .._io.fs import resolve
    from ..formats import dcp

    if args.max_shard_size:
        raise TorchkeepError(f"{args.dst}: --dcp and --max-shard-size do not go together; DCP decides its own files. Drop one.")
    if not isinstance(tree, dict):
        raise TorchkeepError(f"{args.src}: a DCP checkpoint needs a dict at the top; pick one with --key.")
    dst = resolve(args.dst)
    if dst.exists() and dst.is_local:  # refuse_overwrite let it through: --force was given
        if dst.isdir():
            shutil.rmtree(dst.path)
        else:
            os.unlink(dst.path)
    dcp.write(dst, tree)
    a, b = dict(leaves(tree)), dict(leaves(load(args.dst)))
    if set(a) != set(b):
        raise TorchkeepError(
            f"{args.dst}: verification failed: reloaded keys differ ({sorted(set(a) ^ set(b))[:10]}); the output was kept for inspection."
        )
    bad = [k for k, x in a.items() if isinstance(x, torch.Tensor)
           and not (isinstance(b[k], torch.Tensor) and x.dtype == b[k].dtype and x.shape == b[k].shape and torch.equal(x, b[k]))]
    if bad:
        raise TorchkeepError(f"{args.dst}: verification failed: tensors differ after reload: {', '.join(bad[:10])}")
    return sum(1 for x in a.values() if isinstance(x, torch.Tensor))
