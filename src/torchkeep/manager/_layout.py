"""Run-directory layout and the step manifest.

A run directory holds one folder per committed step and nothing else that matters::

    run/
      .lock                      who writes this run (pid, host); flock'ed on local disks
      step_00000100/
        state.safetensors        the state tree (safetensors, readable by any reader)
        manifest.json            written last: the commit record, with checksums
      .tmp-step_00000200-1a2b3c  a save in progress (or interrupted: removed at start)
      .del-step_00000050-4d5e6f  a step being deleted by retention (removed at start)
      .old-step_00000300-7a8b9c  the previous copy of a step being saved again (put back at
                                 start if the new copy never got its name)

A folder is a checkpoint only when its ``manifest.json`` exists and parses. On local disks
the folder is built under a ``.tmp-`` name and renamed into place after the manifest is
written; on object stores (no rename) it is written in place and the manifest is the commit
marker, uploaded last.
"""

from __future__ import annotations

import json
import reprlib
import platform
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .._io import jsonio
from ..errors import CorruptCheckpointError

__all__ = [
    "MANIFEST",
    "STATE_FILE",
    "LOCK_FILE",
    "TMP_PREFIX",
    "DEL_PREFIX",
    "OLD_PREFIX",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "step_name",
    "parse_step",
    "FileEntry",
    "Manifest",
    "CheckpointRecord",
]

MANIFEST = "manifest.json"
STATE_FILE = "state.safetensors"
LOCK_FILE = ".lock"
TMP_PREFIX = ".tmp-"
DEL_PREFIX = ".del-"
OLD_PREFIX = ".old-"
MANIFEST_FORMAT = "torchkeep-step"
MANIFEST_VERSION = 1

_STEP_RE = re.compile(r"^step_(\d{8,})$")


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def parse_step(name: str) -> int | None:
    """The step of a committed folder name ``step_00000100``; None for anything else."""
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m else None


@dataclass
class FileEntry:
    """One file of a step: its size and xxh3_64 checksums (hex).

    For safetensors files the header and the data are hashed separately (``header_xxh3``
    over bytes ``[0, data_offset)``, ``data_xxh3`` over ``[data_offset, size)``) so the data
    can be hashed while it is written, and each tensor's bytes have their own checksum so a
    damaged file names the damaged tensors.
    """

    size: int
    header_xxh3: str
    data_xxh3: str
    data_offset: int
    tensors: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "data_offset": self.data_offset,
            "xxh3_64": {"header": self.header_xxh3, "data": self.data_xxh3},
            "tensors_xxh3_64": self.tensors,
        }

    @classmethod
    def from_json(cls, d: Any, where: str) -> "FileEntry":
        try:
            h = d["xxh3_64"]
            tensors = d.get("tensors_xxh3_64", {})
            entry = cls(int(d["size"]), str(h["header"]), str(h["data"]), int(d["data_offset"]), dict(tensors))
        except (TypeError, KeyError, ValueError, OverflowError) as e:
            raise CorruptCheckpointError(f"{where}: manifest file entry is malformed ({e!r}); the manifest is damaged.") from None
        if not all(isinstance(v, str) for v in entry.tensors.values()):
            raise CorruptCheckpointError(f"{where}: manifest tensor checksums must be hex strings; the manifest is damaged.")
        return entry


@dataclass
class Manifest:
    step: int
    files: dict[str, FileEntry]
    metrics: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0  # unix time
    state_file: str = STATE_FILE
    env: dict[str, Any] = field(default_factory=dict)
    user: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)  # e.g. {"monitor": "loss", "mode": "min"}

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_bytes(self) -> bytes:
        doc = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "step": self.step,
            "created": self.created,
            "created_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "metrics": self.metrics,
            "state_file": self.state_file,
            "files": {k: v.to_json() for k, v in self.files.items()},
            "env": self.env,
        }
        if self.run:
            doc["run"] = self.run
        if self.user:
            doc["user"] = self.user
        return (json.dumps(doc, indent=1, allow_nan=True, default=_json_default) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> "Manifest":
        doc = jsonio.loads(raw, what="manifest", path=where, fix="the step is damaged. Delete the step folder or restore an older step")
        if doc.get("format") != MANIFEST_FORMAT:
            raise CorruptCheckpointError(f"{where}: not a torchkeep step manifest (format field missing or wrong).")
        ver = doc.get("format_version")
        if not isinstance(ver, int) or ver > MANIFEST_VERSION:
            raise CorruptCheckpointError(
                f"{where}: manifest format_version {ver!r} is newer than this torchkeep reads ({MANIFEST_VERSION}). Upgrade torchkeep."
            )
        try:
            step = doc["step"]
            if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                raise ValueError(f"step {step!r}")
            files_doc = doc["files"]
            if not isinstance(files_doc, dict):
                raise ValueError("files is not an object")
            files = {str(k): FileEntry.from_json(v, where) for k, v in files_doc.items()}
            state_file = str(doc.get("state_file", STATE_FILE))
            if state_file not in files or "/" in state_file or state_file.startswith("."):
                raise ValueError(f"state_file {state_file!r} not among files")
            metrics = doc.get("metrics") or {}
            if not isinstance(metrics, dict):
                raise ValueError("metrics is not an object")
            created = float(doc.get("created", 0.0))
            if not 0.0 <= created < 1e11:  # a time stamp (seconds) before the year 5000
                raise ValueError(f"created {created!r}")
            env, user = doc.get("env") or {}, doc.get("user") or {}
            if not isinstance(env, dict) or not isinstance(user, dict):
                raise ValueError("env/user is not an object")
        except (KeyError, ValueError, TypeError, OverflowError) as e:
            raise CorruptCheckpointError(f"{where}: manifest is malformed ({reprlib.repr(e)[:300]}); the step is damaged.") from None
        run = doc.get("run") or {}
        return cls(step, files, metrics, created, state_file, dict(env), dict(user), dict(run) if isinstance(run, dict) else {})


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint of a run, as :meth:`Checkpointer.checkpoints` lists it.

    ``valid`` means committed (manifest present and readable) with every file present at its
    recorded size; checksums are checked by ``restore`` and ``torchkeep verify``. ``problem``
    says what is wrong when ``valid`` is False.
    """

    step: int
    path: str
    metrics: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    created: float = 0.0
    valid: bool = True
    problem: str | None = None


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(o, "item") and callable(o.item):  # 0-d tensors
        return o.item()
    raise TypeError(f"metric value {o!r} of type {type(o).__name__} is not JSON-serializable; pass numbers or strings.")


def environment() -> dict[str, Any]:
    """What the run ran on, so a restore elsewhere can say what changed."""
    import torch

    from .. import __version__

    world = 1
    rank = 0
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            world, rank = dist.get_world_size(), dist.get_rank()
    except Exception:  # noqa: BLE001 - best effort description
        pass
    devices: list[str] = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return {
        "torch": torch.__version__,
        "torchkeep": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "world_size": world,
        "rank": rank,
        "devices": devices,
    }
