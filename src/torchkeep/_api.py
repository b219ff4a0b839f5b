"""tk.save, tk.load, tk.inspect: one call each, any format, no code from files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from ._io.fs import resolve
from ._io.gcpause import gc_paused
from .errors import TorchkeepError
from .formats import inspect_any, read_any, safetensors, sharded
from .formats._base import CheckpointInfo, MapLocation

__all__ = ["save", "load", "inspect", "to_tree"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".tar", ".ckpt", ".pkl")


def to_tree(obj: Any) -> Any:
    """What gets stored for ``obj``: a module's/stateful's state_dict, else the tree itself."""
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if not isinstance(obj, (Mapping, list, tuple, torch.Tensor)) and callable(getattr(obj, "state_dict", None)):
        return obj.state_dict()
    return obj


@gc_paused
def save(
    obj: Any,
    path: "str | os.PathLike[str]",
    *,
    metadata: Mapping[str, Any] | None = None,
    max_shard_size: int | str | None = None,
) -> None:
    """Save a module's state_dict, a mapping of tensors, or a nested tree; atomically.

    The format follows ``path``: ``*.pt/*.pth/*.bin/*.tar/*.ckpt`` write a torch zip file
    (readable by ``torch.load(weights_only=True)``); a folder or ``max_shard_size`` writes
    Hugging Face sharded safetensors; anything else writes one safetensors file.
    """
    loc = resolve(path)
    tree = to_tree(obj)
    existing_dir = loc.isdir()  # an existing folder (a Hugging Face model folder): its shards are replaced
    folder = existing_dir or loc.path.endswith(("/", os.sep)) or (isinstance(path, str) and path.endswith("/"))  # fsspec strips "/"
    if max_shard_size is not None or folder:
        if existing_dir and loc.join("manifest.json").exists():
            raise TorchkeepError(
                f"{loc} is a Checkpointer step folder; saving into it would change a committed checkpoint. "
                f"Fix: save to another path (the step stays loadable with tk.load)."
            )
        sharded.write(loc, tree, max_shard_size=max_shard_size or "5GB", metadata=metadata)
        return
    if loc.path.lower().endswith(TORCH_SUFFIXES):
        from .formats import torchzip

        torchzip.write(loc, tree, metadata=metadata)
        return
    safetensors.write_tree(loc, tree, metadata)


@gc_paused
def load(
    path: "str | os.PathLike[str]",
    *,
    map_location: MapLocation = "cpu",
    dtype: torch.dtype | None = None,
    unsafe_pickle: bool = False,
) -> Any:
    """Load any supported checkpoint (format detected from its bytes) as the tree saved.

    Pickled files go through a restricted unpickler: nothing is imported or called outside
    an allowlist of tensor-rebuilding and container functions. A pickled ``nn.Module``
    becomes its state dict; other unknown objects become inert :class:`Placeholder` s.
    ``unsafe_pickle=True`` is the explicit opt-in to ``torch.load(weights_only=False)``:
    only for files you trust, since it can run any code inside them.
    """
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TorchkeepError(f"dtype must be a torch.dtype such as torch.float16, not {dtype!r}")
    loc = resolve(path).require()
    return read_any(loc, map_location=map_location, dtype=dtype, unsafe_pickle=unsafe_pickle)


@gc_paused
def inspect(path: "str | os.PathLike[str]") -> CheckpointInfo:
    """Format, every tensor's name/shape/dtype/bytes, metadata and totals: headers only."""
    loc = resolve(path).require()
    return inspect_any(loc)

