"""One writer per run directory.

Local directories: ``fcntl.flock`` on ``RUN/.lock`` (released by the kernel when the process
dies, so a killed run never leaves a stale lock); the file records the holder's pid and host
for the error message. Object stores (no flock): a lease file with an expiry, renewed on each
save; a lease older than its expiry may be taken over, and so may one whose holder was a
process on this host that no longer exists (a killed run).
"""

from __future__ import annotations

import json
import os
import platform
import time
import uuid
from typing import Any

from .._io import jsonio
from .._io.fs import Location
from ..errors import LockError
from ._layout import LOCK_FILE

__all__ = ["RunLock"]

LEASE_SECONDS = 3600.0

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _holder_text(info: dict[str, Any]) -> str:
    pid = info.get("pid", "?")
    host = info.get("host", "?")
    since = info.get("since")
    try:
        when = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if isinstance(since, (int, float)) else ""
    except (OverflowError, OSError, ValueError):  # a damaged lock file: say who, not when
        when = ""
    return f"pid {pid} on host {host}{when}"


class RunLock:
    """Exclusive writer lock on a run directory; :meth:`acquire` raises LockError if held."""

    def __init__(self, run: Location) -> None:
        self.run = run
        self.loc = run.join(LOCK_FILE)
        self._fd: int | None = None
        self._token: str | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._token is not None

    def _info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": platform.node(), "since": time.time()}

    def _error(self, info: dict[str, Any]) -> LockError:
        return LockError(
            f"{self.run} is being written by another process ({_holder_text(info)}); two writers "
            f"would interleave checkpoints. Fix: stop that process, or give this run its own "
            f"directory. To only read checkpoints, use tk.load(step folder) or `torchkeep ls`."
        )

    def acquire(self) -> None:
        if self.held:
            return
        if self.run.is_local and fcntl is not None:
            self._acquire_flock()
        else:
            self._acquire_lease()

    def _acquire_flock(self) -> None:
        fd = os.open(self.loc.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = jsonio.loads(os.pread(fd, 4096, 0) or b"{}", what="lock file", path=self.loc)
            except (OSError, ValueError):
                info = {}
            os.close(fd)
            raise self._error(info if isinstance(info, dict) else {}) from None
        except BaseException:
            os.close(fd)
            raise
        data = json.dumps(self._info()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self._fd = fd

    def _acquire_lease(self) -> None:
        now = time.time()
        try:
            info = jsonio.loads(self.loc.read_bytes(), what="lock file", path=self.loc)
        except (FileNotFoundError, ValueError, OSError):
            info = None
        try:
            expires = float(info.get("expires", 0)) if isinstance(info, dict) else 0.0
        except (TypeError, ValueError, OverflowError):
            expires = 0.0  # a damaged lease is no lease
        if expires > now and not _holder_died(info):
            raise self._error(info)
        self._token = uuid.uuid4().hex
        self.renew()
        # another writer may have raced us: whoever's token is in the file holds the lease
        try:
            info = jsonio.loads(self.loc.read_bytes(), what="lock file", path=self.loc)
        except (FileNotFoundError, ValueError, OSError):  # CorruptCheckpointError is a ValueError
            info = {}
        if info.get("token") != self._token:
            self._token = None
            raise self._error(info)

    def renew(self) -> None:
        """Extend an object-store lease (no-op for flock)."""
        if self._token is None:
            return
        info = self._info() | {"token": self._token, "expires": time.time() + LEASE_SECONDS}
        with self.loc.open("wb") as f:
            f.write(json.dumps(info).encode())

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
        if self._token is not None:
            try:
                info = jsonio.loads(self.loc.read_bytes(), what="lock file", path=self.loc)
                if info.get("token") == self._token:
                    self.loc.fs.rm(self.loc.path)
            except (FileNotFoundError, ValueError, OSError):
                pass
            self._token = None


def _holder_died(info: Any) -> bool:
    """True when a lease was taken on this host by a process that no longer exists (killed):
    its lease is stale at once instead of blocking the run until it expires."""
    if not isinstance(info, dict) or info.get("host") != platform.node():
        return False
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but not ours (EPERM): alive
        return False
    return False
