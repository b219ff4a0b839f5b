"""Tensors, storages and modules out of a safely unpickled tree (shared by torchzip and legacy).

* :class:`Context` answers the opcode interpreter (``_unpickler``): it resolves globals
  through the tables of ``_pickle_globals`` and runs only torchkeep's own handlers.
* Storages come from the format module (``Storage``: bytes already read and placed on the
  ``map_location`` device, or just described for ``inspect``); the tensor rebuilders here
  check every view against its storage before anything is built.

What becomes of the rebuilt tree (modules to state dicts, inspect summaries) is in
``_pickled_tree``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CorruptCheckpointError, FormatError, UnsafePickleError
from . import _pickle_globals as G
from ._base import MapLocation, dtype_name, resolve_device
from ._pickle_globals import Placeholder, SafeGlobal, _bad, _int_tuple, _is_int
from ._unpickler import check_keys

_MAX_DEPTH = 200

__all__ = ["Context", "Storage", "TensorStub", "StoragePid", "is_tensor"]


@dataclass
class Storage:
    """One storage of a checkpoint: ``buf`` is a flat uint8 tensor (None when inspecting)."""

    key: str
    dtype: torch.dtype
    nbytes: int
    location: str
    buf: torch.Tensor | None = None


@dataclass
class StoragePid:
    dtype: torch.dtype
    key: str
    location: str
    numel: int
    view: Any = None  # legacy (view_key, offset, size) or None


class TensorStub:
    """A tensor as described by a pickle, without data (``inspect``)."""

    __slots__ = ("shape", "dtype", "storage_key")

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, storage_key: str) -> None:
        self.shape = shape
        self.dtype = dtype
        self.storage_key = storage_key

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"TensorStub({list(self.shape)}, {dtype_name(self.dtype)})"


def is_tensor(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, TensorStub))


class Context:
    """Everything the interpreter may do, for one file.

    ``persistent_load(ctx, pid)`` is the format's storage loader; ``load_from_bytes(ctx, b)``
    reads the nested legacy ``torch.save`` bytes of storages pickled through plain pickle.
    ``materialize=False`` builds :class:`TensorStub` s instead of tensors.
    """

    def __init__(
        self,
        path: str,
        *,
        persistent_load: Callable[["Context", Any], Any] | None = None,
        load_from_bytes: Callable[["Context", bytes], Any] | None = None,
        materialize: bool = True,
        map_location: MapLocation = "cpu",
        dtype: torch.dtype | None = None,
        depth: int = 0,
    ) -> None:
        self.path = path
        self._persistent_load = persistent_load
        self.load_from_bytes = load_from_bytes
        self.materialize = materialize
        self.map_location = map_location
        self.cast = dtype
        self.depth = depth
        self._refs: dict[str, Placeholder] = {}
        self._devices: dict[str, torch.device | None] = {}
        self._views: dict[tuple[Any, ...], Any] = {}

    # -- interpreter callbacks --------------------------------------------------------------
    def find_global(self, module: str, name: str, pos: int) -> Any:
        mod = G.normalize_module(module)
        hit = SAFE.get((mod, name))
        if hit is not None:
            return hit
        if G.is_hostile(mod, name):
            raise UnsafePickleError(
                f"{self.path}: refusing to load: the pickle calls {module}.{name}, a known "
                f"code-execution primitive (pickle byte {pos}). Nothing from the file was run. "
                f"If you trust this file and its source, load it with tk.load(path, "
                f"unsafe_pickle=True), which runs it through torch.load(weights_only=False)."
            )
        if mod == "torch" and name in G.TORCH_DTYPES:
            return G.TORCH_DTYPES[name]
        path = f"{mod}.{name}"
        ref = self._refs.get(path)
        if ref is None:
            ref = self._refs[path] = Placeholder(path, kind="global")
        return ref

    def call(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], pos: int | None) -> Any:
        if isinstance(fn, SafeGlobal) and fn.handler is not None:
            return fn.handler(self, args, kwargs)
        if isinstance(fn, Placeholder) and fn.kind == "global":
            p = Placeholder(fn.class_path, args)
            p.kwargs = dict(kwargs)
            return p
        raise FormatError(f"{self.path}: malformed pickle: it calls a {type(fn).__name__}, which is not callable. The file is damaged.")

    def new(self, cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any], pos: int | None) -> Any:
        if isinstance(cls, SafeGlobal) and cls.is_class and cls.handler is not None:
            return cls.handler(self, args, kwargs)
        if isinstance(cls, Placeholder) and cls.kind == "global":
            p = Placeholder(cls.class_path, args)
            p.kwargs = dict(kwargs)
            return p
        raise FormatError(f"{self.path}: malformed pickle: NEWOBJ on a {type(cls).__name__}, which is not a class. The file is damaged.")

    def build(self, obj: Any, state: Any, pos: int) -> Any:
        if isinstance(obj, (G.PendingArray, G.PendingDtype)):
            return G.build_numpy(self, obj, state)
        if isinstance(obj, Placeholder) and obj.kind == "object":
            if isinstance(obj.state, dict) and isinstance(state, dict):
                obj.state.update(state)
            else:
                obj.state = state
            return obj
        if isinstance(obj, dict):  # e.g. a state_dict's OrderedDict with its _metadata attribute
            for part in state if isinstance(state, tuple) else (state,):
                if isinstance(part, dict):
                    for k, v in part.items():
                        if isinstance(k, str) and k.isidentifier() and not k.startswith("__"):
                            try:
                                setattr(obj, k, v)
                            except (AttributeError, TypeError):
                                pass
            return obj
        if is_tensor(obj):
            return obj  # tensor subclass state (python attributes) is not restored
        raise FormatError(f"{self.path}: malformed pickle: BUILD on a {type(obj).__name__} (byte {pos}). The file is damaged.")

    def setitems(self, target: Any, pairs: list[tuple[Any, Any]]) -> None:
        if isinstance(target, dict):
            dest = target
        elif isinstance(target, Placeholder) and target.kind == "object":
            dest = target.items
        else:
            raise FormatError(f"{self.path}: malformed pickle: SETITEMS on a {type(target).__name__}. The file is damaged.")
        check_keys(k for k, _ in pairs)
        try:
            for k, v in pairs:
                dest[k] = v
        except TypeError as e:
            raise FormatError(f"{self.path}: malformed pickle: unhashable dict key ({e}). The file is damaged.") from None

    def appends(self, target: Any, items: list[Any]) -> None:
        if isinstance(target, list):
            target.extend(items)
        elif isinstance(target, Placeholder) and target.kind == "object":
            target.list_items.extend(items)
        else:
            raise FormatError(f"{self.path}: malformed pickle: APPENDS on a {type(target).__name__}. The file is damaged.")

    def is_pending(self, obj: Any) -> bool:
        return isinstance(obj, (G.PendingArray, G.PendingDtype))

    def persistent_load(self, pid: Any, pos: int) -> Any:
        if self._persistent_load is None:
            raise FormatError(f"{self.path}: this pickle refers to external data (persistent id {pid!r:.80}) but is not inside a torch checkpoint.")
        return self._persistent_load(self, pid)

    # -- helpers for format modules ---------------------------------------------------------
    def device_for(self, location: str) -> torch.device | None:
        if location not in self._devices:
            self._devices[location] = resolve_device(self.map_location, location, path=self.path)
        return self._devices[location]

    def place(self, buf: torch.Tensor, location: str) -> torch.Tensor:
        dev = self.device_for(location)
        return buf if dev is None or dev == buf.device else buf.to(dev)

    def parse_pid(self, pid: Any) -> StoragePid:
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] not in ("storage", b"storage"):
            raise _bad(self, "persistent id", pid)
        _, typ, key, location, numel, *view = pid
        if not (isinstance(typ, SafeGlobal) and isinstance(typ.value, torch.dtype)):
            raise _bad(self, "storage type", typ)
        if isinstance(location, bytes):
            location = location.decode("ascii", "replace")
        if not isinstance(key, str) or not isinstance(location, str) or not _is_int(numel) or numel < 0:
            raise _bad(self, "persistent id", pid)
        return StoragePid(typ.value, key, location, numel, view[0] if view else None)

    # -- tensors ----------------------------------------------------------------------------
    def make_tensor(
        self, storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None, what: str
    ) -> Any:
        if not isinstance(storage, Storage):
            raise _bad(self, what, (storage, offset, size, stride))
        size_t = _int_tuple(self, size, what)
        stride_t = _int_tuple(self, stride, what)
        if not _is_int(offset) or offset < 0 or len(size_t) != len(stride_t) or any(s < 0 for s in size_t + stride_t):
            raise _bad(self, what, (offset, size, stride))
        dt = dtype if dtype is not None else storage.dtype
        numel = 1
        for s in size_t:
            numel *= s
        if numel:
            need = (offset + sum((s - 1) * st for s, st in zip(size_t, stride_t)) + 1) * dt.itemsize
            if need > storage.nbytes:
                raise CorruptCheckpointError(
                    f"{self.path}: a tensor of shape {list(size_t)} ({dtype_name(dt)}) needs {need:,} bytes "
                    f"of storage {storage.key!r}, which has {storage.nbytes:,}; the file is damaged."
                )
        if not self.materialize or storage.buf is None:
            return TensorStub(size_t, dt, storage.key)
        key = (id(storage), offset, size_t, stride_t, dt)
        t = self._views.get(key)
        if t is None:
            buf = storage.buf
            t = torch.empty(0, dtype=dt, device=buf.device).set_(buf.untyped_storage(), offset, size_t, stride_t)
            if self.cast is not None and t.is_floating_point() and t.dtype != self.cast:
                t = t.to(self.cast)
            self._views[key] = t
        return t


# ----------------------------------------------------------------------------- handlers
def _flag(ctx: Context, t: Any, requires_grad: Any, hooks: Any, what: str) -> Any:
    if not isinstance(requires_grad, bool) or not (hooks is None or isinstance(hooks, (dict, Placeholder))):
        raise _bad(ctx, what, (requires_grad, hooks))
    if requires_grad and isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and t.is_leaf:
        t.requires_grad_(True)
    return t


def _metadata(ctx: Context, t: Any, meta: Any) -> Any:
    if not meta:
        return t
    if not isinstance(meta, dict) or not all(k in ("conj", "neg") and isinstance(v, bool) for k, v in meta.items()):
        raise _bad(ctx, "tensor metadata", meta)
    if isinstance(t, torch.Tensor):
        torch._C._set_tensor_metadata(t, dict(meta))
    return t


def _h_rebuild_tensor(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or len(args) != 4:
        raise _bad(ctx, "torch._utils._rebuild_tensor", args)
    return ctx.make_tensor(*args, None, "torch._utils._rebuild_tensor")


def _h_rebuild_tensor_v2(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or len(args) not in (6, 7):
        raise _bad(ctx, "torch._utils._rebuild_tensor_v2", args)
    t = ctx.make_tensor(*args[:4], None, "torch._utils._rebuild_tensor_v2")
    t = _flag(ctx, t, args[4], args[5], "torch._utils._rebuild_tensor_v2")
    return _metadata(ctx, t, args[6] if len(args) == 7 else None)


def _h_rebuild_tensor_v3(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or len(args) not in (7, 8) or not isinstance(args[6], torch.dtype):
        raise _bad(ctx, "torch._utils._rebuild_tensor_v3", args)
    t = ctx.make_tensor(*args[:4], args[6], "torch._utils._rebuild_tensor_v3")
    t = _flag(ctx, t, args[4], args[5], "torch._utils._rebuild_tensor_v3")
    return _metadata(ctx, t, args[7] if len(args) == 8 else None)


def _h_rebuild_parameter(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # (data, requires_grad, backward_hooks[, state]); python attributes in state are dropped
    if kwargs or len(args) not in (3, 4) or not is_tensor(args[0]) or not isinstance(args[1], bool):
        raise _bad(ctx, "torch._utils._rebuild_parameter", args)
    data = args[0]
    if isinstance(data, torch.Tensor):
        return torch.nn.Parameter(data.detach(), requires_grad=args[1] and (data.is_floating_point() or data.is_complex()))
    return data


def _h_param_class(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return _h_rebuild_parameter(ctx, (args[0] if args else None, args[1] if len(args) > 1 else True, None), kwargs)


def _h_rebuild_from_type_v2(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # (func, new_type, args, state): tensor subclasses come back as plain tensors / Parameters
    if kwargs or len(args) != 4 or not isinstance(args[0], SafeGlobal) or args[0].handler is None or not isinstance(args[2], tuple):
        raise _bad(ctx, "torch._tensor._rebuild_from_type_v2", args)
    t = args[0].handler(ctx, args[2], {})
    if args[1] is SAFE[("torch.nn.parameter", "Parameter")] and isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter):
        t = torch.nn.Parameter(t.detach(), requires_grad=t.requires_grad)
    return t


def _h_device_tensor(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # (cpu_tensor, dtype, device, requires_grad)
    if kwargs or len(args) != 4 or not is_tensor(args[0]) or not isinstance(args[2], str):
        raise _bad(ctx, "torch._utils._rebuild_device_tensor_from_cpu_tensor", args)
    t = args[0]
    if isinstance(t, torch.Tensor):
        dev = ctx.device_for(args[2])
        if dev is not None and dev != t.device:
            t = t.to(dev)
    return t


def _h_meta_tensor(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or len(args) != 4 or not isinstance(args[0], torch.dtype):
        raise _bad(ctx, "torch._utils._rebuild_meta_tensor_no_storage", args)
    size = _int_tuple(ctx, args[1], "meta tensor")
    stride = _int_tuple(ctx, args[2], "meta tensor")
    if len(size) != len(stride):
        raise _bad(ctx, "meta tensor", args)
    return torch.empty_strided(size, stride, dtype=args[0], device="meta")


def _h_size(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or len(args) > 1:
        raise _bad(ctx, "torch.Size", args)
    return torch.Size(_int_tuple(ctx, args[0], "torch.Size") if args else ())


def _h_device(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or not (1 <= len(args) <= 2) or not isinstance(args[0], str) or (len(args) == 2 and not (_is_int(args[1]) or args[1] is None)):
        raise _bad(ctx, "torch.device", args)
    try:
        return torch.device(*args)
    except (RuntimeError, TypeError, ValueError) as e:
        raise _bad(ctx, f"torch.device ({e})", args) from None


def _h_load_from_bytes(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or len(args) != 1 or not isinstance(args[0], (bytes, bytearray)):
        raise _bad(ctx, "torch.storage._load_from_bytes", args)
    if ctx.load_from_bytes is None or ctx.depth >= 2:
        raise FormatError(f"{ctx.path}: nested torch.save data inside a storage is not supported here.")
    return ctx.load_from_bytes(ctx, bytes(args[0]))


def _h_identity(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or len(args) != 1 or not isinstance(args[0], list):
        raise _bad(ctx, "torch.jit._pickle list builder", args)
    return args[0]


def _h_first(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or len(args) != 2 or not isinstance(args[1], str):
        raise _bad(ctx, "torch.jit._pickle.restore_type_tag", args)
    return args[0]


def _g(path: str, handler: Callable[..., Any] | None = None, *, is_class: bool = False, value: Any = None) -> SafeGlobal:
    return SafeGlobal(path, handler, is_class=is_class, value=value)


SAFE: dict[tuple[str, str], SafeGlobal] = {}


def _register() -> None:
    def add(mod: str, name: str, handler: Callable[..., Any] | None = None, *, is_class: bool = False, value: Any = None) -> None:
        SAFE[(mod, name)] = _g(f"{mod}.{name}", handler, is_class=is_class, value=value)

    add("torch._utils", "_rebuild_tensor", _h_rebuild_tensor)
    add("torch._utils", "_rebuild_tensor_v2", _h_rebuild_tensor_v2)
    add("torch._utils", "_rebuild_tensor_v3", _h_rebuild_tensor_v3)
    add("torch._utils", "_rebuild_parameter", _h_rebuild_parameter)
    add("torch._utils", "_rebuild_parameter_with_state", _h_rebuild_parameter)
    add("torch._utils", "_rebuild_device_tensor_from_cpu_tensor", _h_device_tensor)
    add("torch._utils", "_rebuild_meta_tensor_no_storage", _h_meta_tensor)
    add("torch._tensor", "_rebuild_from_type_v2", _h_rebuild_from_type_v2)
    add("torch.storage", "_load_from_bytes", _h_load_from_bytes)
    add("torch", "Size", _h_size, is_class=True)
    add("torch", "device", _h_device, is_class=True)
    add("torch", "Tensor")
    add("torch._tensor", "Tensor")
    add("torch.nn.parameter", "Parameter", _h_param_class, is_class=True)
    for mod in ("torch", "torch.cuda", "torch.storage"):
        for name, dt in G.STORAGE_DTYPES.items():
            add(mod, name, value=dt)
    add("torch.storage", "TypedStorage", value=torch.uint8)
    add("collections", "OrderedDict", G._h_ordered_dict, is_class=True)
    add("collections", "defaultdict", G._h_defaultdict, is_class=True)
    add("collections", "Counter", G._h_counter, is_class=True)
    add("builtins", "set", lambda c, a, k: G._h_set(c, a, k, set), is_class=True)
    add("builtins", "frozenset", lambda c, a, k: G._h_set(c, a, k, frozenset), is_class=True)
    add("builtins", "list", lambda c, a, k: G._h_set(c, a, k, list), is_class=True)
    add("builtins", "tuple", lambda c, a, k: G._h_set(c, a, k, tuple), is_class=True)
    add("builtins", "dict", G._plain_call(dict, 1, (dict, list, tuple)), is_class=True)
    add("builtins", "slice", G._plain_call(slice, 3, (type(None), int)), is_class=True)
    add("builtins", "range", G._plain_call(range, 3, (int,)), is_class=True)
    add("builtins", "complex", G._plain_call(complex, 2, (int, float)), is_class=True)
    add("builtins", "int", G._plain_call(int, 1, (int, float, bool)), is_class=True)
    add("builtins", "float", G._plain_call(float, 1, (int, float, bool)), is_class=True)
    add("builtins", "bool", G._plain_call(bool, 1, (int, float, bool, type(None))), is_class=True)
    add("builtins", "str", G._plain_call(str, 1, (str, int, float, bool, type(None))), is_class=True)
    add("builtins", "bytes", G._plain_call(bytes, 1, (bytes, bytearray, list)), is_class=True)
    add("builtins", "bytearray", G._h_bytearray, is_class=True)
    add("builtins", "object")
    add("_codecs", "encode", G._h_codecs_encode)
    add("copyreg", "_reconstructor", G._h_reconstructor)
    add("copyreg", "__newobj__", G._h_newobj)
    add("copyreg", "__newobj_ex__", G._h_newobj_ex)
    for name in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist"):
        add("torch.jit._pickle", name, _h_identity)
    add("torch.jit._pickle", "restore_type_tag", _h_first)
    add("numpy", "dtype", G._h_np_dtype, is_class=True)
    add("numpy", "ndarray")
    add("numpy._core.multiarray", "scalar", G._h_np_scalar)
    add("numpy._core.multiarray", "_reconstruct", G._h_np_reconstruct)
    add("numpy._core.numeric", "_frombuffer", G._h_np_frombuffer)


_register()
