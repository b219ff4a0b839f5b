"""The tree a restricted unpickle produced: pickled modules to state dicts, inspect summaries.

* :func:`convert_modules` turns pickled ``nn.Module`` placeholders into the state dict
  ``module.state_dict()`` would give, wherever they sit in the tree;
* :func:`summarize` describes a tree for ``inspect`` (tensors, values, placeholders).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ..errors import FormatError
from ._base import TensorInfo, dtype_name
from ._pickle_globals import Placeholder
from ._pickled import _MAX_DEPTH, TensorStub, is_tensor

__all__ = ["convert_modules", "summarize", "is_module", "module_state_dict"]


# ------------------------------------------------------------------------ module -> dict
def is_module(x: Any) -> bool:
    st = getattr(x, "state", None) if isinstance(x, Placeholder) and x.kind == "object" else None
    return isinstance(st, dict) and all(isinstance(st.get(k), Mapping) for k in ("_parameters", "_buffers", "_modules"))


def _detach(t: Any) -> Any:
    return t.detach() if isinstance(t, torch.nn.Parameter) else t


def module_state_dict(p: Placeholder) -> dict[str, Any]:
    """The keys and tensors ``module.state_dict()`` gives, from a module placeholder."""
    out: dict[str, Any] = collections.OrderedDict()
    seen: set[int] = set()

    def visit(m: Placeholder, prefix: str) -> None:
        if id(m) in seen:  # a cycle; shared submodules appear under every name, like state_dict()
            return
        seen.add(id(m))
        st = m.state
        for name, v in st["_parameters"].items():
            if is_tensor(v):
                out[prefix + str(name)] = _detach(v)
        skip = st.get("_non_persistent_buffers_set")
        skip = skip if isinstance(skip, (set, frozenset, list, tuple)) else ()
        for name, v in st["_buffers"].items():
            if is_tensor(v) and name not in skip:
                out[prefix + str(name)] = _detach(v)
        for name, child in st["_modules"].items():
            if is_module(child):
                visit(child, f"{prefix}{name}.")
        seen.discard(id(m))

    visit(p, "")
    return out


def convert_modules(tree: Any, *, path: str = "", to_state_dict: Callable[[Placeholder], Any] | None = None) -> Any:
    """Replace module placeholders wherever they appear by their state dicts.

    Containers are copied only where something inside changed (so attributes such as a
    state dict's ``_metadata`` survive); other placeholders are converted in place.
    """
    conv = to_state_dict or module_state_dict
    is_mod = is_module if to_state_dict is None else (lambda x: isinstance(x, Placeholder) and x.kind == "object" and conv(x) is not None)
    memo: dict[int, Any] = {}

    def walk(x: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise FormatError(f"{path}: checkpoint tree is nested more than {_MAX_DEPTH} levels deep; refusing to walk it.")
        if x is None or isinstance(x, (bool, int, float, str, bytes, torch.Tensor, TensorStub, np.ndarray, np.generic)):
            return x
        k = id(x)
        if k in memo:
            return memo[k]
        if isinstance(x, Placeholder):
            if x.kind == "object" and is_mod(x):
                memo[k] = out = conv(x)
                return out
            memo[k] = x
            if x.kind == "object":
                x.args = walk(x.args, depth + 1)
                x.state = walk(x.state, depth + 1)
                x.items = walk(x.items, depth + 1)
                x.list_items = walk(x.list_items, depth + 1)
            return x
        if isinstance(x, dict):
            memo[k] = x
            new = {kk: walk(v, depth + 1) for kk, v in x.items()}
            if all(new[kk] is v for kk, v in x.items()):
                return x
            out = type(x)() if type(x) in (dict, collections.OrderedDict) else dict()
            out.update(new)
            if getattr(x, "__dict__", None):
                out.__dict__.update(x.__dict__)
            memo[k] = out
            return out
        if isinstance(x, (list, tuple)):
            memo[k] = x
            items = [walk(v, depth + 1) for v in x]
            if all(a is b for a, b in zip(items, x)):
                return x
            out = items if isinstance(x, list) else tuple(items)
            memo[k] = out
            return out
        return x

    try:
        return walk(tree, 0)
    except RecursionError:
        raise FormatError(f"{path}: checkpoint tree is nested too deeply to be read safely.") from None


# ------------------------------------------------------------------------------ inspect
def _value(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (bool, int, float, str, type(None))):
        return x
    if isinstance(x, np.ndarray):
        return f"ndarray(shape={list(x.shape)}, dtype={x.dtype})"
    if isinstance(x, (torch.dtype, torch.device)):
        return str(x)
    return repr(x)


def summarize(tree: Any) -> tuple[list[TensorInfo], dict[str, Any], list[str]]:
    """Tensors (dotted names), non-tensor leaves and placeholders of a converted tree."""
    tensors: list[TensorInfo] = []
    values: dict[str, Any] = {}
    placeholders: list[str] = []
    seen: set[int] = set()

    def name(path: tuple[Any, ...]) -> str:
        return ".".join(str(p) for p in path) if path else "<root>"

    def walk(x: Any, path: tuple[Any, ...], in_placeholder: bool) -> None:
        if isinstance(x, (torch.Tensor, TensorStub)):
            nbytes = x.nbytes if isinstance(x, TensorStub) else x.numel() * x.element_size()
            tensors.append(TensorInfo(name(path), tuple(x.shape), dtype_name(x.dtype), nbytes))
            return
        if isinstance(x, (dict, list, tuple, Placeholder)):
            if id(x) in seen or len(path) > 100:
                return
            seen.add(id(x))
        if isinstance(x, Placeholder):
            placeholders.append(f"{name(path)}: {x.class_path}")
            for i, a in enumerate(x.args):
                walk(a, path + (f"args{i}",), True)
            st = x.state[0] if isinstance(x.state, tuple) and x.state and isinstance(x.state[0], dict) else x.state
            if isinstance(st, dict):
                for k, v in st.items():
                    walk(v, path + (k,), True)
            for k, v in x.items.items():
                walk(v, path + (k,), True)
            return
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, path + (k,), in_placeholder)
        elif isinstance(x, (list, tuple)) and not (x and len(x) <= 16 and all(isinstance(v, (int, float)) for v in x)):
            for i, v in enumerate(x):
                walk(v, path + (i,), in_placeholder)
        elif not in_placeholder:
            values[name(path)] = list(x) if isinstance(x, tuple) else _value(x)

    walk(tree, (), False)
    return tensors, values, placeholders
