"""What a pickle may name, as data: hostile primitives, allowlisted handlers, placeholders.

``Context`` is what the opcode interpreter in ``_unpickler`` asks whenever a pickle names a
global, calls something, builds state or refers to a persistent id:

* a global in ``HOSTILE_MODULES`` / ``HOSTILE_NAMES`` raises :class:`UnsafePickleError`;
* a global in ``_pickled.SAFE`` resolves to a :class:`SafeGlobal` whose handler is torchkeep's own
  code, validating its arguments (tensor rebuilding, ``OrderedDict``, ``set``, numpy
  scalars and arrays via ``numpy.frombuffer``, ...);
* anything else resolves to a ``Placeholder(kind="global")``; calling it makes a
  ``Placeholder`` instance. Nothing is imported, nothing from the file is called.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import FormatError
from ._unpickler import Placeholder, check_keys

if TYPE_CHECKING:
    from ._pickled import Context

__all__ = ["SafeGlobal", "HOSTILE_MODULES", "HOSTILE_NAMES", "STORAGE_DTYPES", "TORCH_DTYPES"]

# --------------------------------------------------------------------------- hostile table
# A module here, or any submodule of it, is refused whatever name is asked from it.
HOSTILE_MODULES = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "sys", "importlib",
    "runpy", "pty", "shutil", "socket", "_socket", "ssl", "code", "codeop", "pickle", "_pickle",
    "pickletools", "marshal", "types", "ctypes", "_ctypes", "multiprocessing", "_multiprocessing",
    "threading", "_thread", "signal", "asyncio", "webbrowser", "http", "urllib", "ftplib",
    "smtplib", "telnetlib", "pdb", "bdb", "timeit", "cProfile", "profile", "trace", "pydoc",
    "pkgutil", "inspect", "platform", "commands", "popen2", "io", "_io", "tempfile", "zipimport",
    "ensurepip", "venv", "distutils", "setuptools", "pip", "sysconfig", "dill", "cloudpickle",
    "joblib", "shelve", "dbm", "glob", "fileinput", "gc", "weakref", "builtins.__dict__",
    "torch.jit", "torch._C", "torch.ops", "torch._ops", "torch.classes", "torch.hub",
    "torch.package", "torch.serialization", "torch._dynamo", "torch._inductor", "torch.fx",
    "torch.utils.cpp_extension", "torch.multiprocessing", "torch.distributed.rpc",
    "torch._export", "torch.export", "numpy.testing", "numpy.f2py", "numpy.distutils",
    "numpy.ctypeslib", "numpy.lib.format", "numpy.lib.npyio",
})
# (module, name) pairs refused in modules that are otherwise fine.
HOSTILE_NAMES = frozenset({
    *(("builtins", n) for n in (
        "eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "open", "input",
        "breakpoint", "globals", "locals", "vars", "exit", "quit", "help", "type", "__build_class__",
        "memoryview", "super", "classmethod", "staticmethod", "property", "print", "dir", "id",
    )),
    ("functools", "partial"), ("functools", "reduce"), ("functools", "partialmethod"),
    ("functools", "wraps"), ("functools", "update_wrapper"),
    ("operator", "attrgetter"), ("operator", "methodcaller"), ("operator", "itemgetter"),
    ("operator", "call"), ("operator", "getitem"), ("operator", "setitem"),
    ("copyreg", "add_extension"), ("copyreg", "remove_extension"), ("copyreg", "pickle"),
    ("copyreg", "constructor"), ("copyreg", "_reduce_ex"),
    ("torch", "load"), ("torch", "save"), ("torch", "compile"), ("torch", "from_file"),
    ("torch", "_load_global_deps"), ("torch._utils", "_import_dotted_name"),
    ("torch.storage", "_load_from_file"), ("torch.nn.modules.module", "_load_from_state_dict"),
    ("numpy", "load"), ("numpy", "loads"), ("numpy", "save"), ("numpy", "fromfile"),
    ("numpy", "memmap"), ("numpy", "loadtxt"), ("numpy", "genfromtxt"),
})
# py2 / old numpy spellings of the same modules
_ALIASES = {"__builtin__": "builtins", "exceptions": "builtins", "copy_reg": "copyreg", "cPickle": "pickle"}


def normalize_module(module: str) -> str:
    module = _ALIASES.get(module, module)
    if module == "numpy.core" or module.startswith("numpy.core."):
        module = "numpy._core" + module[len("numpy.core") :]
    return module


# attribute names that only an attack reaches for (in a dotted name, any module)
_HOSTILE_PARTS = frozenset({
    "os", "sys", "subprocess", "builtins", "__builtins__", "__builtin__", "importlib", "eval",
    "exec", "__import__", "__globals__", "__code__", "__subclasses__", "__getattribute__",
    "__reduce__", "__reduce_ex__", "__class__", "__dict__", "__init__", "__call__", "__bases__",
    "__mro__", "__base__", "getattr", "setattr", "__loader__", "__spec__", "f_globals",
})


def is_hostile(module: str, name: str) -> bool:
    """True for known code-execution primitives (a data table, not a heuristic on behaviour)."""
    parts = module.split(".")
    if any(".".join(parts[: i + 1]) in HOSTILE_MODULES for i in range(len(parts))):
        return True
    if (module, name) in HOSTILE_NAMES:
        return True
    names = name.split(".")
    if len(names) > 1 and is_hostile(f"{module}.{'.'.join(names[:-1])}", names[-1]):
        return True
    return any(p in _HOSTILE_PARTS for p in names)


# --------------------------------------------------------------------------- torch tables
TORCH_DTYPES: dict[str, torch.dtype] = {
    n: getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)
}
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "LongStorage": torch.int64, "IntStorage": torch.int32, "ShortStorage": torch.int16,
    "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "BFloat16Storage": torch.bfloat16, "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64, "QInt8Storage": torch.qint8,
    "QInt32Storage": torch.qint32, "QUInt8Storage": torch.quint8,
    "QUInt4x2Storage": torch.quint4x2, "QUInt2x4Storage": torch.quint2x4,
    "UntypedStorage": torch.uint8, "_UntypedStorage": torch.uint8,
}


class SafeGlobal(Placeholder):
    """An allowlisted global: calling it runs ``handler(ctx, args, kwargs)``, our own code.

    Left bare in a tree it reads as a global-reference placeholder.
    """

    __slots__ = ("handler", "is_class", "value")

    def __init__(self, path: str, handler: Callable[..., Any] | None, *, is_class: bool = False, value: Any = None) -> None:
        super().__init__(path, kind="global")
        self.handler = handler
        self.is_class = is_class
        self.value = value  # storage classes: their dtype


class PendingArray(Placeholder):
    """``numpy._reconstruct`` result waiting for its BUILD state; stays a placeholder if none comes."""

    __slots__ = ()


class PendingDtype(Placeholder):
    __slots__ = ("dtype",)


def _bad(ctx: "Context", what: str, args: Any) -> FormatError:
    shown = repr(args)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    return FormatError(
        f"{ctx.path}: malformed pickle: {what} got unexpected arguments {shown}. The file is damaged "
        f"or was not written by torch; it was not run."
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int_tuple(ctx: "Context", x: Any, what: str) -> tuple[int, ...]:
    if isinstance(x, (tuple, list, torch.Size)) and all(_is_int(v) for v in x):
        return tuple(x)
    raise _bad(ctx, what, x)


_PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray)
_ITERABLE = (list, tuple, set, frozenset, dict, str, bytes)


def _check_pairs(x: Any) -> None:
    if isinstance(x, dict):
        return  # keys already hashed safely when the dict was built
    check_keys(p[0] if isinstance(p, (tuple, list)) and p else p for p in x)


def _plain_call(typ: type, max_args: int, arg_types: tuple[type, ...]) -> Callable[..., Any]:
    """builtins type called on plain values only (no size-only forms like bytes(10**12))."""

    def handler(ctx: "Context", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if len(args) > max_args or kwargs or not all(isinstance(a, arg_types) for a in args):
            raise _bad(ctx, typ.__name__, args)
        if typ is dict and args:
            _check_pairs(args[0])
        try:
            return typ(*args)
        except (TypeError, ValueError) as e:
            raise _bad(ctx, f"{typ.__name__} ({e})", args) from None

    return handler


def _h_set(ctx: "Context", args: tuple[Any, ...], kwargs: dict[str, Any], typ: type = set) -> Any:
    if kwargs or len(args) > 1 or (args and not isinstance(args[0], _ITERABLE)):
        raise _bad(ctx, typ.__name__, args)
    if args and typ in (set, frozenset):
        check_keys(args[0])
    try:
        return typ(*args)
    except TypeError as e:
        raise _bad(ctx, f"{typ.__name__} ({e})", args) from None


def _h_ordered_dict(ctx: "Context", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or len(args) > 1 or (args and not isinstance(args[0], (list, tuple, dict))):
        raise _bad(ctx, "collections.OrderedDict", args)
    if args:
        _check_pairs(args[0])
    try:
        return collections.OrderedDict(*args)
    except (TypeError, ValueError) as e:
        raise _bad(ctx, f"collections.OrderedDict ({e})", args) from None


def _h_defaultdict(ctx: "Context", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # the default factory is code; the loaded dict keeps its items and has none
    rest = args[1:] if args else ()
    if kwargs or len(rest) > 1 or (rest and not isinstance(rest[0], (list, tuple, dict))):
        raise _bad(ctx, "collections.defaultdict", args)
    if rest:
        _check_pairs(rest[0])
    return collections.defaultdict(None, *rest)


def _h_counter(ctx: "Context", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or len(args) > 1 or (args and not isinstance(args[0], dict)):
        raise _bad(ctx, "collections.Counter", args)
    if args:
        _check_pairs(args[0])
    return collections.Counter(*args)


def _h_codecs_encode(ctx: "Context", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # protocol 2 writes bytes as _codecs.encode(str, "latin1")
    if kwargs or len(args) not in (1, 2) or not isinstance(args[0], str):
        raise _bad(ctx, "_codecs.encode", args)
    enc = args[1] if len(args) == 2 else "utf-8"
    if enc not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise _bad(ctx, "_codecs.encode", args)
    try:
        return args[0].encode(enc)
    except UnicodeEncodeError as e:
        raise _bad(ctx, f"_codecs.encode ({e})", args) from None


def _h_bytearray(ctx: "Context", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or len(args) > 2:
        raise _bad(ctx, "bytearray", args)
    if not args:
        return bytearray()
    if len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], str):
        return bytearray(_h_codecs_encode(ctx, args, {}))
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray, list)):
        try:
            return bytearray(args[0])
        except (TypeError, ValueError) as e:
            raise _bad(ctx, f"bytearray ({e})", args) from None
    raise _bad(ctx, "bytearray", args)


def _h_reconstructor(ctx: "Context", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # copyreg._reconstructor(cls, base, state): object.__new__(cls) [+ base.__init__(state)]
    if kwargs or len(args) != 3 or not isinstance(args[0], Placeholder):
        raise _bad(ctx, "copyreg._reconstructor", args)
    cls, _base, state = args
    obj = ctx.new(cls, (), {}, None)
    if state is not None and isinstance(obj, Placeholder):
        obj.args = (state,)
    return obj


def _h_newobj(ctx: "Context", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or not args:
        raise _bad(ctx, "copyreg.__newobj__", args)
    return ctx.new(args[0], tuple(args[1:]), {}, None)


def _h_newobj_ex(ctx: "Context", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or len(args) != 3 or not isinstance(args[1], tuple) or not isinstance(args[2], dict):
        raise _bad(ctx, "copyreg.__newobj_ex__", args)
    return ctx.new(args[0], args[1], args[2], None)


# ------------------------------------------------------------------------------ numpy
_NP_DTYPE = re.compile(r"^[<>|=]?(?:[biufc]\d{1,2}|\?|b1|[SUV]\d{0,9}|[Mm]8(?:\[\w{1,4}\])?)$")


def _h_np_dtype(ctx: "Context", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or not args or not isinstance(args[0], str) or not _NP_DTYPE.match(args[0]):
        return Placeholder("numpy.dtype", args)
    dt = np.dtype(args[0])
    if dt.hasobject:
        return Placeholder("numpy.dtype", args)
    p = PendingDtype("numpy.dtype", args)
    p.dtype = dt
    return p


def _dtype_of(x: Any) -> np.dtype | None:
    if isinstance(x, PendingDtype):
        return x.dtype
    if isinstance(x, np.dtype) and not x.hasobject:
        return x
    return None


def _h_np_scalar(ctx: "Context", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    dt = _dtype_of(args[0]) if args else None
    if kwargs or len(args) != 2 or dt is None or not isinstance(args[1], (bytes, bytearray)):
        return Placeholder("numpy._core.multiarray.scalar", args)
    if len(args[1]) != dt.itemsize:
        raise _bad(ctx, "numpy scalar", args)
    return np.frombuffer(bytes(args[1]), dtype=dt)[0].copy()


def _array_from(ctx: "Context", raw: Any, dt: np.dtype | None, shape: Any, fortran: bool, what: str) -> Any:
    if dt is None or not isinstance(raw, (bytes, bytearray)):
        return None
    shape = _int_tuple(ctx, shape, what)
    if any(s < 0 for s in shape):
        raise _bad(ctx, what, shape)
    n = 1
    for s in shape:
        n *= s
    if n * dt.itemsize != len(raw):
        raise _bad(ctx, f"{what} (shape {shape} of {dt} needs {n * dt.itemsize} bytes, got {len(raw)})", shape)
    return np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order="F" if fortran else "C").copy(order="K")


def _h_np_reconstruct(ctx: "Context", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return PendingArray("numpy.ndarray", args)


def _h_np_frombuffer(ctx: "Context", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # numpy._core.numeric._frombuffer(buf, dtype, shape, order) (protocol 5, in-band)
    if kwargs or len(args) != 4:
        return Placeholder("numpy._core.numeric._frombuffer", args)
    arr = _array_from(ctx, args[0], _dtype_of(args[1]), args[2], args[3] == "F", "numpy array")
    return arr if arr is not None else Placeholder("numpy._core.numeric._frombuffer", args)


def build_numpy(ctx: "Context", obj: Placeholder, state: Any) -> Any:
    if isinstance(obj, PendingDtype):
        if isinstance(state, tuple) and len(state) >= 5 and state[2] is None and state[3] is None and state[4] is None:
            order = state[1]
            return obj.dtype.newbyteorder(order) if order in ("<", ">") else obj.dtype
        obj.state = state
        return Placeholder("numpy.dtype", obj.args, state)
    # ndarray state: (version, shape, dtype, is_fortran, rawdata)
    if isinstance(state, tuple) and len(state) == 5:
        _v, shape, dt, fortran, raw = state
        arr = _array_from(ctx, raw, _dtype_of(dt), shape, bool(fortran), "numpy array")
        if arr is not None:
            return arr
    obj.state = state
    return Placeholder("numpy.ndarray", obj.args, state)
