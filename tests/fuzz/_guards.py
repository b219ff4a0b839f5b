"""The fuzz invariants' instruments: the auditor (no code runs) and the memory guard (no
allocation driven by a size field). Shared by the fuzz tests and the write-fault tests."""

from __future__ import annotations

import encodings
import importlib
import os
import resource
import sys
from contextlib import contextmanager
from typing import Iterator

import torchkeep

# audit events of primitives that run code or reach outside; none may fire while reading a file
_DANGEROUS = ("os.system", "os.exec", "os.spawn", "os.posix_spawn", "subprocess.Popen", "exec", "compile", "ctypes.", "socket.connect",
              "webbrowser", "import")
_OWN_IMPORTS = ("torchkeep", "encodings.")  # torchkeep's lazily imported modules are fine


# module bodies the import machinery may run lazily while reading: torchkeep's own modules
# and the codecs zip and pickle need for odd names (encodings.cp437, ...)
_OWN_DIRS = (os.path.dirname(os.path.abspath(torchkeep.__file__)) + os.sep, os.path.dirname(os.path.abspath(encodings.__file__)) + os.sep)


def _is_own_module(obj: object) -> bool:
    name = getattr(obj, "co_filename", obj)
    return isinstance(name, str) and name.startswith(_OWN_DIRS) and getattr(obj, "co_name", "<module>") == "<module>"


# torch imports these lazily on some error paths (a namedtuple built by exec, in its module
# body); loaded here once, so the auditor can stay strict about every other import
for _name in ("torch._subclasses.schema_check_mode",):
    try:
        importlib.import_module(_name)
    except ImportError:  # pragma: no cover - another torch version
        pass


class Auditor:
    """``with auditor:`` fails if a code-running primitive fires (or any module outside
    torchkeep is imported) inside the block."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.active = False
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if self.active and event.startswith(_DANGEROUS):
            if event == "import" and str(args[0]).startswith(_OWN_IMPORTS):
                return
            if event in ("exec", "compile") and args and _is_own_module(args[0] if event == "exec" else args[1]):
                return  # the import machinery loading one of torchkeep's lazily imported modules
            self.events.append(f"{event} {str(args[0])[:60] if args else ''}")

    def __enter__(self) -> "Auditor":
        self.events.clear()
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False
        if self.events:
            raise AssertionError(f"code-running primitives fired while reading: {sorted(set(self.events))}")


HEADROOM = 1 << 30  # a reader of a file under 1 MB may reserve this much address space, no more


def _vm_size() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


@contextmanager
def memory_guard(headroom: int = HEADROOM) -> Iterator[None]:
    """Cap the address space at what the process has now plus ``headroom``: an allocation
    sized by a forged field (``torch.empty(2**40)``) then fails instead of being lazily
    granted by overcommit, and the fuzz test sees a non-torchkeep error."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
