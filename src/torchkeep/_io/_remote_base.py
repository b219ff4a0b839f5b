"""What the remote readers and writers share: settings from the environment, error mapping,
running coroutines on an async filesystem's loop. See :mod:`torchkeep._io.remote`."""

from __future__ import annotations

import asyncio
import os
import sys
from concurrent.futures import Future
from typing import Any

from ..errors import CorruptCheckpointError, NotFoundError, RemoteIOError, TorchkeepError

__all__ = ["settings", "is_s3", "RemoteIOError", "MIN_PART"]

MIN_PART = 5 << 20  # S3's smallest part (all but the last)


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return max(minimum, int(raw))
    except ValueError:
        raise TorchkeepError(f"{name}={raw!r} is not an integer number of bytes/threads; unset it or give a number.") from None


def settings() -> dict[str, int]:
    """The transfer settings in force (from the environment): part/range size and concurrency."""
    rs = _env_int("TORCHKEEP_REMOTE_RANGE_SIZE", 0, 0)
    return {
        "part_size": _env_int("TORCHKEEP_REMOTE_PART_SIZE", 16 << 20, MIN_PART),
        "range_size": max(64 << 10, rs) if rs else 0,  # 0: by load size (range_for)
        "threads": _env_int("TORCHKEEP_REMOTE_THREADS", 8, 1),
        "uploads": _env_int("TORCHKEEP_REMOTE_UPLOADS", 4, 1),
    }


def is_s3(fs: Any) -> bool:
    mod = sys.modules.get("s3fs")
    return mod is not None and isinstance(fs, mod.S3FileSystem)


def _url(fs: Any, path: str) -> str:
    try:
        return str(fs.unstrip_protocol(path))
    except Exception:  # noqa: BLE001 - only for messages
        return path


def _run(fs: Any, coro: Any) -> Future:
    """Schedule a coroutine on an async filesystem's loop; a concurrent.futures.Future."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None and running is fs.loop:
        coro.close()
        raise TorchkeepError(
            "torchkeep's blocking S3 transfer was called from inside s3fs's own event loop; it would wait for "
            "itself forever. Call it from a thread (e.g. asyncio.to_thread / run_in_executor)."
        )
    return asyncio.run_coroutine_threadsafe(coro, fs.loop)


def _as_error(e: BaseException, url: str, what: str) -> BaseException:
    """Map a client error to a torchkeep error naming the URL (OSErrors pass through)."""
    if isinstance(e, TorchkeepError):
        return e
    code = _error_code(e)
    text = f"{code} {e}"
    if isinstance(e, FileNotFoundError) or code in ("NoSuchKey", "404"):
        return NotFoundError(f"{url}: not found while {what}. Check the URL; the object may have been deleted meanwhile.")
    if code in ("PreconditionFailed", "412") or "pre-condition" in text:
        return CorruptCheckpointError(
            f"{url}: the object changed while it was being read ({what}); another writer replaced it. Read it again "
            f"once the writer is done."
        )
    if code in ("InvalidRange", "416") or "Range Not Satisfiable" in text:
        return CorruptCheckpointError(f"{url}: the object is shorter than its header says ({what}); it is truncated. Re-upload it.")
    return e


def _error_code(e: BaseException) -> str:
    """The S3 error code (``NoSuchKey``, ``PreconditionFailed``...) behind an s3fs error."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 5:
        resp = getattr(cur, "response", None)
        if isinstance(resp, dict):
            return str(resp.get("Error", {}).get("Code", ""))
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return ""
