"""Lazy checkpoints: the tree with tensors not yet read, so data can go straight to its target.

``open_lazy(loc)`` yields the checkpoint tree whose tensor leaves are :class:`LazyTensor`
for formats with known data offsets (safetensors, sharded safetensors, torchkeep step
folders) and real tensors otherwise. ``LazyTensor.read_into(dest)`` reads the bytes directly
into ``dest``'s memory when it is a contiguous CPU tensor of the same dtype and size: loading
into an existing model then needs no second copy of the model in RAM.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from .._io.fastio import read_jobs
from .._io.fs import ByteSource, Location
from ..errors import CorruptCheckpointError
from . import _detect, _tree, safetensors

__all__ = ["LazyTensor", "open_lazy", "read_many_into", "materialize"]


class LazyTensor:
    """A tensor in a file, described by its header; nothing is read until asked."""

    __slots__ = ("source", "offset", "shape", "dtype", "nbytes", "name", "_numel")

    def __init__(self, source: ByteSource, offset: int, shape: Sequence[int], dtype: torch.dtype, nbytes: int, name: str) -> None:
        self.source = source
        self.offset = offset
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self.nbytes = nbytes
        self.name = name
        self._numel = self.shape.numel()

    def numel(self) -> int:
        return self._numel

    def dim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"LazyTensor({self.name!r}, shape={tuple(self.shape)}, dtype={self.dtype})"

    def read(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = torch.empty(self.shape, dtype=self.dtype)
        if self.nbytes:
            read_jobs(self.source, [(self.offset, t)])
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        if device is not None and torch.device(device) != t.device:
            t = t.to(device)
        return t

    def _direct(self, dest: torch.Tensor) -> bool:
        return dest.dtype == self.dtype and dest.is_cpu and dest.numel() == self._numel and dest.is_contiguous()

    def read_into(self, dest: torch.Tensor) -> None:
        """Copy this tensor's values into ``dest`` (same number of elements)."""
        if dest.numel() != self.numel():
            raise ValueError(f"{self.name}: cannot read {tuple(self.shape)} into a tensor of shape {tuple(dest.shape)}")
        with torch.no_grad():
            if self._direct(dest):
                if self.nbytes:
                    read_jobs(self.source, [(self.offset, dest.detach().view(-1))])
            else:
                dest.copy_(self.read().view(dest.shape))


def read_many_into(pairs: Sequence[tuple[LazyTensor, torch.Tensor]]) -> None:
    """Read several lazy tensors into their destinations, batching direct reads per file."""
    by_source: dict[int, tuple[ByteSource, list[tuple[int, torch.Tensor]]]] = {}
    with torch.no_grad():
        for lt, dest in pairs:
            if lt._direct(dest):  # read_jobs takes any contiguous CPU tensor as it is
                if lt.nbytes:
                    src = lt.source
                    entry = by_source.get(id(src))
                    if entry is None:
                        entry = by_source[id(src)] = (src, [])
                    entry[1].append((lt.offset, dest))
            else:
                lt.read_into(dest)
        for src, jobs in by_source.values():
            read_jobs(src, jobs)


def materialize(tree: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Any:
    """Replace every LazyTensor in ``tree`` by a real tensor (tied leaves stay tied)."""
    memo: dict[int, torch.Tensor] = {}

    def go(node: Any) -> Any:
        if isinstance(node, LazyTensor):
            if id(node) not in memo:
                memo[id(node)] = node.read(device, dtype)
            return memo[id(node)]
        if isinstance(node, dict):
            return {k: go(v) for k, v in node.items()}
        if isinstance(node, list):
            return [go(v) for v in node]
        if isinstance(node, tuple):
            return tuple(go(v) for v in node)
        return node

    return go(tree)


def _lazy_safetensors(src: ByteSource) -> Any:
    header = safetensors.read_header(src)
    tensors = {
        e.name: LazyTensor(src, header.data_start + e.begin, e.shape, e.dtype, e.end - e.begin, e.name)
        for e in header.entries.values()
    }
    return safetensors.decode_tree(header, tensors)


@contextmanager
def open_lazy(loc: Location, *, unsafe_pickle: bool = False) -> Iterator[Any]:
    """Yield the checkpoint tree with LazyTensor leaves where the format allows it.

    The files stay open for the duration of the ``with`` block; read what you need inside it.
    """
    from . import read_any, sharded

    fmt = _detect.detect(loc)
    with ExitStack() as stack:
        if fmt == _detect.SAFETENSORS:
            src = stack.enter_context(loc.open_source())
            yield _lazy_safetensors(src)
            return
        if fmt == _detect.HF_SHARDED:
            folder, index = sharded.find_index(loc)
            if index is not None:
                wm, meta = sharded.read_index(index)
                shards = sorted(set(wm.values()))
                if all(s.endswith(".safetensors") for s in shards):
                    tensors: dict[str, Any] = {}
                    for shard in shards:
                        src = stack.enter_context(folder.join(shard).open_source())
                        part = _lazy_safetensors(src)
                        for n, s in wm.items():
                            if s == shard:
                                if n not in part:
                                    raise CorruptCheckpointError(f"{folder.join(shard)}: index lists {n!r}, which this shard lacks.")
                                tensors[n] = part[n]
                    if safetensors.TREE_KEY in meta:
                        yield _tree.unflatten(meta[safetensors.TREE_KEY], tensors, where=str(index))
                    else:
                        yield {n: tensors[n] for n in wm}
                    return
        if fmt == _detect.TORCHKEEP_STEP:
            from . import step  # the Checkpointer's step folder: state file(s) + manifest

            lazy = getattr(step, "open_lazy", None)
            if lazy is not None:
                yield stack.enter_context(lazy(loc))
                return
        yield read_any(loc, unsafe_pickle=unsafe_pickle)

