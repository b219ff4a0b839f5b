"""Test helpers importable from every test module (tests/ is on pythonpath)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


def tensor_bytes(t: torch.Tensor) -> torch.Tensor:
    """Raw bytes of a tensor: NaN-safe bitwise comparison for every dtype."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def assert_tree_equal(a, b, path="") -> None:  # noqa: ANN001
    """Exact equality for trees: tensors bit-equal with the same dtype and shape."""
    import math

    import numpy as np

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{path}: {type(b)} is not a tensor"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{tuple(a.shape)} != {b.dtype}{tuple(b.shape)}"
        assert torch.equal(tensor_bytes(a), tensor_bytes(b)), f"{path}: values differ"
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict), f"{path}: {type(b)} is not a dict"
        assert list(a.keys()) == list(b.keys()), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_tree_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{path}: {type(a)}/{len(a)} != {type(b)}/{len(b) if hasattr(b, '__len__') else b}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tree_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} != {b!r}"


class BytesRead:
    """Bytes this process passed through read()/pread() inside the block (Linux rchar).

    Counts page-cache hits too, so it shows how much of a file a call really reads,
    independently of the machine's speed or load.
    """

    def __enter__(self) -> "BytesRead":
        import pytest

        try:
            self._start = self._rchar()
        except OSError:
            pytest.skip("needs /proc/self/io (Linux)")
        self.n = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.n = self._rchar() - self._start

    @staticmethod
    def _rchar() -> int:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
        raise OSError("no rchar")


@contextlib.contextmanager
def mounted_tmpfs(parent: Path, size: str, label: str = "tmpfs") -> Iterator[Path]:
    """A real tmpfs of ``size`` (e.g. ``"2m"``) mounted under ``parent``; skips the test where
    mounting is impossible (not Linux, not root, no mount). Unmounted afterwards."""
    mnt = parent / f"{label}-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux (and chmod does not stop root)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
