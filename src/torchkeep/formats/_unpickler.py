"""The restricted unpickler: a pickle opcode interpreter that imports and calls nothing.

Every pickle torchkeep reads (torch zip ``data.pkl``, legacy torch files, bare ``.pkl``,
TorchScript ``data.pkl``) goes through :func:`unpickle`. It is our own interpreter of the
pickle opcodes (protocols 0-5), not ``pickle.Unpickler``: globals are looked up in the
tables of ``_pickle_globals`` and never imported, ``REDUCE``/``NEWOBJ``/``BUILD`` only ever
run torchkeep's own validating handlers, and the memo is a dict (a forged memo index
cannot make it allocate).

Decision on hostile files (issue 2): a global that is a known code-execution primitive
(``os.system``, ``builtins.eval``, ``subprocess.Popen``, ``torch.load``, ... see
``_pickle_globals.HOSTILE_MODULES`` / ``HOSTILE_NAMES``) makes the whole load fail with
:class:`~torchkeep.errors.UnsafePickleError` naming the global: such a file is an attack or
needs its code, and silently handing back "the tensors" would hide that. The payload is
never run (it is not even imported). Every other unknown global (user classes such as
``__main__.Net``, ``argparse.Namespace``, even ``torch.nn.modules.linear.Linear``) becomes
an inert :class:`Placeholder` that records its class path, arguments and state.
``unsafe_pickle=True`` (in ``tk.load``) is the explicit opt-in to real
``torch.load(weights_only=False)`` for files the user trusts.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from typing import Any

from ..errors import CorruptCheckpointError, FormatError, TorchkeepError

__all__ = ["Placeholder", "unpickle", "Unpickled", "check_keys"]

_MAX_KEY_DEPTH = 32
_FLAT_KEYS = (str, int, float, bytes, type(None))


def check_keys(keys: Any) -> None:
    """Refuse dict keys / set members nested deeper than 32 tuples: hashing a deeply nested
    tuple recurses in C without a limit and would crash the interpreter."""
    for k in keys:
        if isinstance(k, _FLAT_KEYS):
            continue
        todo = [(k, 0)]
        while todo:
            x, d = todo.pop()
            if isinstance(x, (tuple, frozenset)):
                if d >= _MAX_KEY_DEPTH:
                    raise FormatError(f"a dict key or set member is nested more than {_MAX_KEY_DEPTH} levels deep; refusing to hash it")
                todo.extend((y, d + 1) for y in x)


class Placeholder:
    """An inert stand-in for an object whose class torchkeep does not import.

    ``class_path`` is ``"module.QualName"``; ``args`` the decoded constructor arguments
    (REDUCE/NEWOBJ); ``kwargs`` those of NEWOBJ_EX; ``state`` what BUILD gave (usually the
    instance ``__dict__``, sometimes ``(dict, slotstate)``); ``items`` / ``list_items`` what
    SETITEMS / APPENDS added (dict and list subclasses). ``kind`` is ``"object"`` for an
    instance and ``"global"`` for a bare reference to a class or function. Nothing on it is
    ever called.
    """

    __slots__ = ("class_path", "args", "kwargs", "state", "items", "list_items", "kind")

    def __init__(
        self, class_path: str, args: tuple[Any, ...] = (), state: Any = None, *, kind: str = "object"
    ) -> None:
        self.class_path = class_path
        self.args = args
        self.kwargs: dict[str, Any] = {}
        self.state = state
        self.items: dict[Any, Any] = {}
        self.list_items: list[Any] = []
        self.kind = kind

    def __repr__(self) -> str:
        return f"<Placeholder {'global ' if self.kind == 'global' else ''}{self.class_path}>"

    @property
    def module(self) -> str:
        return self.class_path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.class_path.rpartition(".")[2]


class PickleTruncated(CorruptCheckpointError):
    """The pickle's bytes end inside it."""


class Unpickled:
    """Result of :func:`unpickle`: the object and the offset just past its STOP opcode."""

    __slots__ = ("value", "end")

    def __init__(self, value: Any, end: int) -> None:
        self.value = value
        self.end = end


class _Mark:
    __slots__ = ()


_MARK = _Mark()
_MAX_LINE = 1 << 16


def unpickle(
    data: bytes | bytearray | memoryview,
    *,
    path: str,
    ctx: Any,
    start: int = 0,
    what: str = "pickle",
) -> Unpickled:
    """Interpret one pickle from ``data[start:]``.

    ``ctx`` (a ``_pickle_globals.Context``) resolves globals, runs the allowlisted handlers
    and answers persistent ids. Errors: :class:`UnsafePickleError` for hostile globals,
    :class:`CorruptCheckpointError` for truncated data, :class:`FormatError` for the rest;
    never a raw exception.
    """
    try:
        return _Machine(bytes(data) if not isinstance(data, bytes) else data, path, ctx, start, what).run()
    except TorchkeepError as e:
        if path in str(e):
            raise
        raise type(e)(f"{path}: {e}") from None
    except RecursionError:
        raise FormatError(f"{path}: {what} is nested too deeply to be read safely.") from None
    except (MemoryError, OverflowError) as e:
        raise CorruptCheckpointError(f"{path}: {what} asks for an absurd size ({type(e).__name__}); the file is damaged.") from None
    except Exception as e:  # noqa: BLE001 - any slip in malformed data becomes one clear error
        raise FormatError(
            f"{path}: malformed {what} ({type(e).__name__}: {e}); the file is damaged or not a "
            f"checkpoint torchkeep can read."
        ) from None


class _Machine:
    def __init__(self, data: bytes, path: str, ctx: Any, start: int, what: str) -> None:
        self.data = data
        self.n = len(data)
        self.pos = start
        self.path = path
        self.ctx = ctx
        self.what = what
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.pending_at: dict[int, list[int]] = {}  # id(pending obj) -> memo indices holding it

    # -- reading ---------------------------------------------------------------------------
    def _trunc(self) -> CorruptCheckpointError:
        return PickleTruncated(
            f"{self.path}: {self.what} is truncated (data ends at byte {self.n} inside an opcode); "
            f"the file is incomplete. Re-download or re-save it."
        )

    def read(self, k: int) -> bytes:
        if k < 0 or self.pos + k > self.n:
            raise self._trunc()
        b = self.data[self.pos : self.pos + k]
        self.pos += k
        return b

    def readline(self) -> bytes:
        end = self.data.find(b"\n", self.pos, min(self.n, self.pos + _MAX_LINE))
        if end < 0:
            raise self._trunc()
        b = self.data[self.pos : end]
        self.pos = end + 1
        return b

    def u(self, fmt: str, k: int) -> int:
        return struct.unpack(fmt, self.read(k))[0]

    def bad(self, msg: str) -> FormatError:
        return FormatError(f"{self.path}: malformed {self.what} at byte {self.pos}: {msg}. The file is damaged.")

    # -- stack -----------------------------------------------------------------------------
    def pop(self) -> Any:
        if not self.stack:
            raise self.bad("stack underflow")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise self.bad("MARK expected")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def top(self) -> Any:
        if not self.stack:
            raise self.bad("stack underflow")
        return self.stack[-1]

    def put(self, idx: int) -> None:
        obj = self.top()
        self.memo[idx] = obj
        if self.ctx.is_pending(obj):
            self.pending_at.setdefault(id(obj), []).append(idx)

    def get(self, idx: int) -> None:
        if idx not in self.memo:
            raise self.bad(f"memo key {idx} is not defined")
        self.stack.append(self.memo[idx])

    def _decode_str(self, b: bytes) -> Any:
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return b  # py2 byte strings that are not text (numpy buffers) stay bytes

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> Unpickled:
        ops = _OPS
        while True:
            if self.pos >= self.n:
                raise self._trunc()
            code = self.data[self.pos]
            self.pos += 1
            fn = ops.get(code)
            if fn is None:
                raise self.bad(f"unknown opcode 0x{code:02x}")
            if fn(self):
                value = self.pop()
                return Unpickled(value, self.pos)

    # -- opcodes ---------------------------------------------------------------------------
    def op_stop(self) -> bool:
        return True

    def op_proto(self) -> None:
        if self.read(1)[0] > 5:
            raise self.bad("unsupported pickle protocol")

    def op_frame(self) -> None:
        self.read(8)  # frames are an I/O hint; the data is all in memory

    def op_int(self) -> None:
        line = self.readline()
        if line == b"00":
            self.stack.append(False)
        elif line == b"01":
            self.stack.append(True)
        else:
            self.stack.append(int(line))

    def op_long(self) -> None:
        line = self.readline()
        self.stack.append(int(line[:-1] if line.endswith(b"L") else line))

    def op_long_n(self, k: int, fmt: str) -> None:
        size = self.u(fmt, k)
        if size < 0:
            raise self.bad("negative LONG4 size")
        self.stack.append(int.from_bytes(self.read(size), "little", signed=True))

    def op_string(self) -> None:
        line = self.readline()
        if len(line) < 2 or line[:1] != line[-1:] or line[:1] not in b"'\"":
            raise self.bad("STRING opcode argument must be quoted")
        self.stack.append(self._decode_str(codecs.escape_decode(line[1:-1])[0]))

    def op_unicode(self) -> None:
        self.stack.append(str(self.readline(), "raw-unicode-escape"))

    def op_binunicode(self, k: int, fmt: str) -> None:
        self.stack.append(str(self.read(self.u(fmt, k)), "utf-8", "surrogatepass"))

    def op_binstring(self, k: int, fmt: str) -> None:
        self.stack.append(self._decode_str(self.read(self.u(fmt, k))))

    def op_binbytes(self, k: int, fmt: str) -> None:
        self.stack.append(self.read(self.u(fmt, k)))

    def op_bytearray8(self) -> None:
        self.stack.append(bytearray(self.read(self.u("<Q", 8))))

    def op_buffer(self) -> None:
        raise self.bad("out-of-band buffers (pickle protocol 5 NEXT_BUFFER) are not supported")

    def op_float(self) -> None:
        self.stack.append(float(self.readline()))

    def op_binfloat(self) -> None:
        self.stack.append(self.u(">d", 8))

    def op_dict(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise self.bad("odd number of items for DICT")
        check_keys(items[0::2])
        self.stack.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})

    def op_setitem(self) -> None:
        v = self.pop()
        k = self.pop()
        self.ctx.setitems(self.top(), [(k, v)])

    def op_setitems(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise self.bad("odd number of items for SETITEMS")
        self.ctx.setitems(self.top(), [(items[i], items[i + 1]) for i in range(0, len(items), 2)])

    def op_append(self) -> None:
        v = self.pop()
        self.ctx.appends(self.top(), [v])

    def op_appends(self) -> None:
        items = self.pop_mark()
        self.ctx.appends(self.top(), items)

    def op_additems(self) -> None:
        items = self.pop_mark()
        target = self.top()
        if not isinstance(target, set):
            raise self.bad("ADDITEMS on a non-set")
        check_keys(items)
        target.update(items)

    def op_tuple_n(self, k: int) -> None:
        if len(self.stack) < k:
            raise self.bad("stack underflow")
        items = tuple(self.stack[len(self.stack) - k :]) if k else ()
        del self.stack[len(self.stack) - k :]
        self.stack.append(items)

    def op_global(self) -> None:
        module = self.readline().decode("utf-8", "replace")
        name = self.readline().decode("utf-8", "replace")
        self.stack.append(self.ctx.find_global(module, name, self.pos))

    def op_stack_global(self) -> None:
        name = self.pop()
        module = self.pop()
        if not isinstance(module, str) or not isinstance(name, str):
            raise self.bad("STACK_GLOBAL needs two strings")
        self.stack.append(self.ctx.find_global(module, name, self.pos))

    def op_reduce(self) -> None:
        args = self.pop()
        fn = self.pop()
        if not isinstance(args, tuple):
            raise self.bad("REDUCE arguments are not a tuple")
        self.stack.append(self.ctx.call(fn, args, {}, self.pos))

    def op_newobj(self) -> None:
        args = self.pop()
        cls = self.pop()
        if not isinstance(args, tuple):
            raise self.bad("NEWOBJ arguments are not a tuple")
        self.stack.append(self.ctx.new(cls, args, {}, self.pos))

    def op_newobj_ex(self) -> None:
        kwargs = self.pop()
        args = self.pop()
        cls = self.pop()
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise self.bad("NEWOBJ_EX needs a tuple and a dict")
        self.stack.append(self.ctx.new(cls, args, kwargs, self.pos))

    def op_inst(self) -> None:
        module = self.readline().decode("utf-8", "replace")
        name = self.readline().decode("utf-8", "replace")
        args = tuple(self.pop_mark())
        cls = self.ctx.find_global(module, name, self.pos)
        self.stack.append(self.ctx.call(cls, args, {}, self.pos))

    def op_obj(self) -> None:
        items = self.pop_mark()
        if not items:
            raise self.bad("OBJ without a class")
        self.stack.append(self.ctx.call(items[0], tuple(items[1:]), {}, self.pos))

    def op_build(self) -> None:
        state = self.pop()
        obj = self.top()
        new = self.ctx.build(obj, state, self.pos)
        if new is not obj:  # a pending object (numpy array / dtype) became its real value
            self.stack[-1] = new
            for idx in self.pending_at.pop(id(obj), ()):
                self.memo[idx] = new

    def op_persid(self) -> None:
        pid = self.readline().decode("ascii", "replace")
        self.stack.append(self.ctx.persistent_load(pid, self.pos))

    def op_binpersid(self) -> None:
        self.stack.append(self.ctx.persistent_load(self.pop(), self.pos))

    def op_ext(self, k: int) -> None:
        raise self.bad("extension-registry opcodes (EXT1/2/4) are not supported")

    def op_mark(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def op_pop(self) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    def op_pop_mark(self) -> None:
        self.pop_mark()

    def op_dup(self) -> None:
        self.stack.append(self.top())

    def op_memoize(self) -> None:
        self.put(len(self.memo))

    def op_list(self) -> None:
        items = self.pop_mark()  # (pop first: it switches self.stack)
        self.stack.append(items)

    def op_tuple(self) -> None:
        items = tuple(self.pop_mark())
        self.stack.append(items)

    def op_frozenset(self) -> None:
        raw = self.pop_mark()
        check_keys(raw)
        items = frozenset(raw)
        self.stack.append(items)


def _k(fn: Callable[..., Any], *a: Any) -> Callable[[_Machine], Any]:
    return lambda m: fn(m, *a)


M = _Machine
_OPS: dict[int, Callable[[_Machine], Any]] = {
    ord("."): M.op_stop,
    0x80: M.op_proto,
    0x95: M.op_frame,
    ord("I"): M.op_int,
    ord("J"): lambda m: m.stack.append(m.u("<i", 4)),
    ord("K"): lambda m: m.stack.append(m.read(1)[0]),
    ord("M"): lambda m: m.stack.append(m.u("<H", 2)),
    ord("L"): M.op_long,
    0x8A: _k(M.op_long_n, 1, "<B"),
    0x8B: _k(M.op_long_n, 4, "<i"),
    ord("S"): M.op_string,
    ord("T"): _k(M.op_binstring, 4, "<i"),
    ord("U"): _k(M.op_binstring, 1, "<B"),
    ord("B"): _k(M.op_binbytes, 4, "<I"),
    ord("C"): _k(M.op_binbytes, 1, "<B"),
    0x8E: _k(M.op_binbytes, 8, "<Q"),
    0x96: M.op_bytearray8,
    0x97: M.op_buffer,
    0x98: M.op_buffer,
    ord("V"): M.op_unicode,
    ord("X"): _k(M.op_binunicode, 4, "<I"),
    0x8C: _k(M.op_binunicode, 1, "<B"),
    0x8D: _k(M.op_binunicode, 8, "<Q"),
    ord("F"): M.op_float,
    ord("G"): M.op_binfloat,
    ord("N"): lambda m: m.stack.append(None),
    0x88: lambda m: m.stack.append(True),
    0x89: lambda m: m.stack.append(False),
    ord("]"): lambda m: m.stack.append([]),
    ord("a"): M.op_append,
    ord("e"): M.op_appends,
    ord("l"): M.op_list,
    ord(")"): lambda m: m.stack.append(()),
    ord("t"): M.op_tuple,
    0x85: _k(M.op_tuple_n, 1),
    0x86: _k(M.op_tuple_n, 2),
    0x87: _k(M.op_tuple_n, 3),
    ord("}"): lambda m: m.stack.append({}),
    ord("d"): M.op_dict,
    ord("s"): M.op_setitem,
    ord("u"): M.op_setitems,
    0x8F: lambda m: m.stack.append(set()),
    0x90: M.op_additems,
    0x91: M.op_frozenset,
    ord("0"): M.op_pop,
    ord("2"): M.op_dup,
    ord("("): M.op_mark,
    ord("1"): M.op_pop_mark,
    ord("g"): lambda m: m.get(int(m.readline())),
    ord("h"): lambda m: m.get(m.read(1)[0]),
    ord("j"): lambda m: m.get(m.u("<I", 4)),
    ord("p"): lambda m: m.put(int(m.readline())),
    ord("q"): lambda m: m.put(m.read(1)[0]),
    ord("r"): lambda m: m.put(m.u("<I", 4)),
    0x94: M.op_memoize,
    0x82: _k(M.op_ext, 1),
    0x83: _k(M.op_ext, 2),
    0x84: _k(M.op_ext, 4),
    ord("c"): M.op_global,
    0x93: M.op_stack_global,
    ord("R"): M.op_reduce,
    ord("b"): M.op_build,
    ord("i"): M.op_inst,
    ord("o"): M.op_obj,
    0x81: M.op_newobj,
    0x92: M.op_newobj_ex,
    ord("P"): M.op_persid,
    ord("Q"): M.op_binpersid,
}
del M
