"""Constructor-argument capture: what call rebuilds each module of a model.

In this order: (1) torch.nn classes, from their attributes (``inspect.signature`` + attribute
names + the few aliases in ``_TORCH_RULES``); (2) user classes decorated with
:func:`keep_args` (the call's own arguments), or automatically when every constructor
parameter is an attribute of the same name; (3) otherwise :class:`ArchitectureError` naming
the class and the one-line fix. ``_api.save_model`` rebuilds the captured spec on the meta
device and compares every state-dict key and shape, so a wrong capture fails at save.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from ..errors import ArchitectureError
from ._spec import SPEC_FORMAT, EmptyLike, Resolver, Unencodable, class_path, encode_value

__all__ = ["keep_args", "capture_model", "capture_args", "NoCapture", "CONTAINERS", "FIX"]

M = TypeVar("M", bound=type)

INIT_ATTR = "_torchkeep_init"
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
FIX = "decorate the class with @torchkeep.keep_args (one line above `class ...`)"


class NoCapture(Exception):
    """This module's constructor call cannot be recovered (internal)."""


def keep_args(cls: M) -> M:
    """Class decorator: record each instance's constructor arguments so ``save_model`` can
    store the call and ``load_model`` can repeat it::

        @torchkeep.keep_args
        class Net(nn.Module):
            def __init__(self, width: int, *, depth: int = 2): ...

    The arguments are kept as passed (defaults are not filled in), on the instance as
    ``_torchkeep_init``. Only the outermost decorated class of an instance records, so a
    decorated base class never records a subclass's call.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"@keep_args decorates nn.Module subclasses, not {cls!r}")
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        if type(self) is cls and INIT_ATTR not in self.__dict__:
            object.__setattr__(self, INIT_ATTR, (cls, tuple(_snapshot(a) for a in args), {k: _snapshot(v) for k, v in kwargs.items()}))
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[misc]
    return cls


def _snapshot(v: Any) -> Any:
    """Copy plain containers so a constructor that mutates its argument doesn't change the record."""
    if isinstance(v, (list, dict, set)):
        try:
            return copy.deepcopy(v)
        except Exception:  # noqa: BLE001 - uncopyable contents: keep the object itself
            return v
    return v


# ----------------------------------------------------------------------- torch built-ins
def _is_not_none(attr: str) -> Callable[[nn.Module], Any]:
    return lambda m: getattr(m, attr) is not None


_SKIP = object()
_TRANSFORMER_LAYER: dict[str, Callable[[nn.Module], Any]] = {
    "d_model": lambda m: m.self_attn.embed_dim,
    "nhead": lambda m: m.self_attn.num_heads,
    "dim_feedforward": lambda m: m.linear1.out_features,
    "dropout": lambda m: m.dropout.p,
    "activation": lambda m: m.activation,
    "layer_norm_eps": lambda m: m.norm1.eps,
    "batch_first": lambda m: m.self_attn.batch_first,
    "norm_first": lambda m: m.norm_first,
    "bias": lambda m: m.linear1.bias is not None,
}
# class name in torch.nn -> parameter -> how to read it (or _SKIP: leave the default)
_TORCH_RULES: dict[str, dict[str, Any]] = {
    "MultiheadAttention": {"bias": _is_not_none("in_proj_bias"), "add_bias_kv": _is_not_none("bias_k")},
    "TransformerEncoderLayer": _TRANSFORMER_LAYER,
    "TransformerDecoderLayer": _TRANSFORMER_LAYER,
    "TransformerEncoder": {"encoder_layer": lambda m: m.layers[0], "num_layers": lambda m: len(m.layers)},
    "TransformerDecoder": {"decoder_layer": lambda m: m.layers[0], "num_layers": lambda m: len(m.layers)},
    "PReLU": {"init": _SKIP},  # initial value only; the weights are loaded
    "Embedding": {"_weight": _SKIP, "_freeze": _SKIP},
    "EmbeddingBag": {"_weight": _SKIP},
    "Hardtanh": {"min_value": _SKIP, "max_value": _SKIP},  # deprecated aliases of min_val/max_val
    "_Loss": {"size_average": _SKIP, "reduce": _SKIP},  # deprecated; folded into `reduction`
    "Transformer": {
        "num_encoder_layers": lambda m: len(m.encoder.layers),
        "num_decoder_layers": lambda m: len(m.decoder.layers),
        **{k: (lambda f: lambda m: f(m.encoder.layers[0]))(f) for k, f in _TRANSFORMER_LAYER.items() if k not in ("d_model", "nhead", "batch_first")},
        "custom_encoder": _SKIP,  # children: attached as saved whatever the constructor made
        "custom_decoder": _SKIP,
    },
}
_RNN = ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional"]
# classes whose __init__ is (*args, **kwargs): the parameters they forward
_TORCH_PARAMS: dict[str, list[str]] = {"LSTM": [*_RNN, "proj_size"], "GRU": _RNN, "RNN": [*_RNN, "nonlinearity"]}
_TORCH_SKIP = {"device", "dtype"}  # factory options: the loaded weights decide


def _torch_rules(cls: type) -> dict[str, Any]:
    rules: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):  # a subclass's rules win
        if klass.__module__.startswith("torch.nn") and klass.__name__ in _TORCH_RULES:
            rules.update(_TORCH_RULES[klass.__name__])
    return rules


def _torch_params(cls: type) -> list[str] | None:
    for klass in cls.__mro__:
        if getattr(nn, klass.__name__, None) is klass and klass.__name__ in _TORCH_PARAMS:
            return _TORCH_PARAMS[klass.__name__]
    return None


def _is_torch_class(cls: type) -> bool:
    return cls.__module__ == "torch" or cls.__module__.startswith("torch.")


def _signature(cls: type) -> inspect.Signature:
    try:
        return inspect.signature(cls.__init__)
    except (TypeError, ValueError) as e:
        raise NoCapture(f"its constructor signature cannot be read ({e})") from None


def _raw_args(m: nn.Module) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The constructor call as Python values: recorded by keep_args, or read from attributes."""
    cls = type(m)
    rec = m.__dict__.get(INIT_ATTR)
    if rec is not None and rec[0] is cls:
        return rec[1], rec[2]
    torch_cls = _is_torch_class(cls)
    rules = _torch_rules(cls) if torch_cls else {}
    params = list(_signature(cls).parameters.values())[1:]  # drop self
    explicit = _torch_params(cls) if torch_cls else None
    if explicit is not None:
        params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in explicit]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    missing: list[str] = []
    for p in params:
        rule = rules.get(p.name)
        if rule is _SKIP or (torch_cls and p.name in _TORCH_SKIP):
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            if torch_cls:  # torch layers that accept and ignore *args/**kwargs (Identity, Tanh)
                continue
            missing.append(("*" if p.kind == p.VAR_POSITIONAL else "**") + p.name)
            continue
        try:
            if rule is not None:
                value = rule(m)
            elif torch_cls and p.name == "bias" and isinstance(getattr(m, "bias", 0), (torch.Tensor, type(None))):
                value = m.bias is not None
            elif (
                any(p.name in d for d in (m.__dict__, m._modules, m._parameters, m._buffers))
                or isinstance(getattr(type(m), p.name, None), property)
            ):
                value = getattr(m, p.name)
            else:
                missing.append(p.name)
                continue
        except Exception as e:  # noqa: BLE001 - an attribute/rule that fails means: not recoverable
            missing.append(f"{p.name} ({type(e).__name__}: {e})")
            continue
        if isinstance(value, torch.Tensor):
            if _in_state_dict(m, p.name):  # e.g. a loss's `weight`: rebuilt empty, then loaded
                value = EmptyLike(tuple(value.shape), value.dtype)
            else:
                missing.append(f"{p.name} (attribute is a tensor that is not saved in the state dict)")
                continue
        if p.kind == p.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[p.name] = value
    if missing:
        raise NoCapture(f"constructor parameters {missing} are not attributes of the same name")
    return tuple(args), kwargs


def _in_state_dict(m: nn.Module, name: str) -> bool:
    if m._parameters.get(name) is not None:
        return True
    return m._buffers.get(name) is not None and name not in m._non_persistent_buffers_set


def _module_ref(owner: nn.Module, where: str) -> Callable[[nn.Module], str]:
    names: dict[int, str] | None = None

    def ref(sub: nn.Module) -> str:
        nonlocal names
        if names is None:
            names = {}
            for n, s in owner.named_modules(remove_duplicate=False):
                if n:
                    names.setdefault(id(s), n)
        if id(sub) not in names:
            raise Unencodable(
                f"{where} is a module ({type(sub).__name__}) that is not a submodule of the module it was "
                f"passed to; only submodules can be passed by reference"
            )
        return names[id(sub)]

    return ref


def capture_args(m: nn.Module) -> tuple[list[Any], dict[str, Any]]:
    """The encoded constructor call of ``m``; raises :class:`NoCapture` with the reason."""
    args, kwargs = _raw_args(m)
    name = type(m).__qualname__
    ref = _module_ref(m, name)
    try:
        enc_args = [encode_value(v, ref, f"{name} argument {i}") for i, v in enumerate(args)]
        enc_kwargs = {k: encode_value(v, ref, f"{name} argument {k!r}") for k, v in kwargs.items()}
    except Unencodable as e:
        raise NoCapture(str(e)) from None
    return enc_args, enc_kwargs


def _class_problem(cls: type) -> str | None:
    path = class_path(cls)
    if "<locals>" in path:
        return f"{path} is defined inside a function; move it to module level so it can be imported"
    try:
        found = Resolver(trust_all=True).resolve(path)
    except ArchitectureError:
        found = None
    if found is not cls:
        return f"{path} cannot be imported by that path; define it at module level of an importable module"
    return None


def capture_model(root: nn.Module) -> dict[str, Any]:
    """The JSON spec of ``root`` (see ``_spec``); raises one ArchitectureError listing every
    module that cannot be captured."""
    seen: dict[int, str] = {}
    problems: list[str] = []

    def node(m: nn.Module, path: str, parent_builds: bool) -> dict[str, Any]:
        if id(m) in seen:
            return {"ref": seen[id(m)]}
        seen[id(m)] = path
        cls = type(m)
        out: dict[str, Any] = {"class": class_path(cls)}
        bad_class = _class_problem(cls)
        if bad_class:
            problems.append(f"'{path or '<root>'}': {bad_class}")
        builds = False
        if cls in CONTAINERS:
            out["container"] = True
        else:
            try:
                out["args"], out["kwargs"] = capture_args(m)
                builds = True
            except NoCapture as e:
                if parent_builds:
                    out["by_parent"] = True
                else:
                    problems.append(f"'{path or '<root>'}' ({out['class']}): {e}")
        children: dict[str, Any] = {}
        for name, child in m._modules.items():
            children[name] = None if child is None else node(child, f"{path}.{name}" if path else name, builds or parent_builds)
        out["children"] = children
        out["training"] = bool(m.training)
        return out

    spec_root = node(root, "", False)
    if problems:
        raise ArchitectureError(
            "cannot save the architecture of "
            f"{class_path(type(root))}: the constructor call of these modules cannot be recovered:\n  "
            + "\n  ".join(problems)
            + f"\nFix: {FIX}, or store the arguments as attributes of the same name as the constructor "
            "parameters. Modules that are not nn.Module classes at module level must be moved there. "
            "To save weights only, use torchkeep.save(model, path)."
        )
    frozen = [n for n, p in root.named_parameters() if not p.requires_grad]
    spec: dict[str, Any] = {"format": SPEC_FORMAT, "torch": torch.__version__.split("+")[0], "root": spec_root}
    if frozen:
        spec["frozen"] = frozen
    return spec
