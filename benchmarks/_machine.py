"""What the benchmark ran on: CPU, cores, RAM, disk, kernel, library versions."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any


def _first(path: str, key: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.lower().startswith(key.lower()):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _mount_of(path: str) -> tuple[str, str, str]:
    path = os.path.realpath(path)
    best = ("?", "?", "?")
    best_len = -1
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > best_len:
                    best, best_len = (dev, mnt, fstype), len(mnt)
    except OSError:
        pass
    return best


def _disk(dev: str) -> str:
    name = os.path.basename(dev)
    base = name.rstrip("0123456789") if not name.startswith("nvme") else name.split("p")[0]
    parts = []
    for blk in (name, base):
        q = f"/sys/block/{blk}"
        if os.path.isdir(q):
            model = ""
            try:
                model = open(f"{q}/device/model").read().strip()
            except OSError:
                pass
            try:
                rot = open(f"{q}/queue/rotational").read().strip()
                parts.append(("rotational" if rot == "1" else "non-rotational") + (f" {model}" if model else ""))
            except OSError:
                pass
            try:
                size = int(open(f"{q}/size").read()) * 512
                parts.append(f"{size / 2**30:.0f} GiB")
            except OSError:
                pass
            break
    return ", ".join(parts) or "unknown"


def describe(scratch: str) -> dict[str, Any]:
    import torch

    try:
        import safetensors

        st_ver = safetensors.__version__
    except ImportError:
        st_ver = "not installed"
    import torchkeep

    mem = _first("/proc/meminfo", "MemTotal")
    dev, mnt, fstype = _mount_of(scratch)
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git = ""
    return {
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
        "disk": f"{dev} ({_disk(dev)}), {fstype} at {mnt}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "safetensors": st_ver,
        "torchkeep": getattr(torchkeep, "__version__", "dev") + (f" ({git})" if git else ""),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "load_avg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
