"""Find the state dict inside a checkpoint: container keys as data, in order of precedence.

Training scripts nest the weights: ``{"state_dict": ...}`` (Lightning, mmcv),
``{"model_state_dict": ...}`` (the PyTorch tutorials), ``{"model": ...}`` (fairseq, DeiT,
detectron2), ``{"params": ..., "params_ema": ...}`` (BasicSR) and so on. The first container
key of :data:`CONTAINER_KEYS` present (holding a mapping) wins; the raw weights come before
their EMA copies, which ``key="model_ema"`` (or the like) selects explicitly. Without a known
container key, a single mapping of tensors at the top level is taken; two or more (a GAN's
``modelA_state_dict`` and ``modelB_state_dict``) are ambiguous and raise, naming them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import KeyMismatchError

__all__ = ["CONTAINER_KEYS", "EMA_KEYS", "find_state_dict", "is_tensor_like", "select_key"]

# Order of precedence: the model's own weights first, then their EMA copies.
CONTAINER_KEYS: tuple[str, ...] = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "module",
    "net",
    "network",
    "weights",
    "params",
    "generator",
    "netG",
)
EMA_KEYS: tuple[str, ...] = (
    "state_dict_ema",
    "ema_state_dict",
    "model_ema",
    "ema_model",
    "params_ema",
    "params-ema",
    "ema",
)

_MAX_DEPTH = 4  # {"model": {"state_dict": {...}}} and the like; never deeper


def is_tensor_like(v: Any) -> bool:
    """A tensor, or a lazy one (anything with ``shape`` and a torch ``dtype``)."""
    return isinstance(v, torch.Tensor) or (
        hasattr(v, "shape") and isinstance(getattr(v, "dtype", None), torch.dtype) and hasattr(v, "read")
    )


def _tensor_count(node: Any) -> int:
    if not isinstance(node, Mapping):
        return 0
    return sum(1 for v in node.values() if is_tensor_like(v))


def _is_state_dict(node: Any) -> bool:
    """A mapping whose values are tensors (non-tensor extras such as ``_metadata`` allowed)."""
    if not isinstance(node, Mapping) or not node:
        return False
    n = _tensor_count(node)
    return n > 0 and n * 2 >= len(node) and all(isinstance(k, str) for k in node)


def select_key(tree: Any, key: str, where: str) -> Any:
    """The node at a dotted path (``"state_dict"``, ``"models.0"``); an error names what exists."""
    node = tree
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, Mapping) and part.lstrip("-").isdigit() and int(part) in node:
            node = node[int(part)]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            have = ", ".join(repr(k) for k in node) if isinstance(node, Mapping) else type(node).__name__
            raise KeyMismatchError(
                f"{where}: no key {key!r} in the checkpoint (at {part!r}; available: {have}). "
                f"Fix: pass key= one of those."
            )
    return node


def _tensors_only(node: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if is_tensor_like(v)}


def find_state_dict(tree: Any, *, key: str | None = None, where: str = "checkpoint") -> tuple[str, dict[str, Any]]:
    """``(path, state_dict)``: where the weights are inside ``tree`` and the flat mapping itself.

    ``path`` is ``""`` when the tree is the state dict itself, else the dotted container path.
    """
    path: list[str] = []
    node = tree
    if key is not None:
        node = select_key(tree, key, where)
        path = [key]
    for _ in range(_MAX_DEPTH):
        if _is_state_dict(node):
            return ".".join(path), _tensors_only(node)
        if not isinstance(node, Mapping):
            break
        found = next(
            (k for k in CONTAINER_KEYS + EMA_KEYS if k in node and isinstance(node[k], Mapping) and node[k]),
            None,
        )
        if found is None:
            candidates = [k for k, v in node.items() if _is_state_dict(v)]
            if len(candidates) > 1:
                names = ", ".join(repr(".".join(path + [str(c)])) for c in candidates)
                raise KeyMismatchError(
                    f"{where}: {len(candidates)} candidate state dicts in the checkpoint: {names}. "
                    f"Fix: pass key= one of them, e.g. key={'.'.join(path + [str(candidates[0])])!r}."
                )
            if len(candidates) == 1:
                found = candidates[0]
        if found is None:
            break
        path.append(str(found))
        node = node[found]
    have = ", ".join(repr(k) for k in node) if isinstance(node, Mapping) else type(node).__name__
    at = f" at {'.'.join(path)!r}" if path else ""
    raise KeyMismatchError(
        f"{where}: no state dict (a mapping of names to tensors) found{at}; it holds: {have}. "
        f"Fix: pass key= the dotted path of the weights inside the checkpoint, "
        f"or a mapping of tensors as source."
    )


def alternatives(tree: Any, chosen: str) -> list[str]:
    """Other container keys at the top level that also hold weights (e.g. the EMA copy)."""
    if not isinstance(tree, Mapping) or not chosen:
        return []
    top = chosen.split(".")[0]
    return [k for k in CONTAINER_KEYS + EMA_KEYS if k != top and k in tree and isinstance(tree[k], Mapping) and tree[k]]
