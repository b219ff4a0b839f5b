"""Human sizes: "2GB" (10^9, the Hugging Face convention), "2GiB" (2^30), or an int of bytes."""

from __future__ import annotations

import re

__all__ = ["parse_size", "format_size"]

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
}
_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(size: "int | str") -> int:
    """Bytes in ``size``; raises ValueError naming the accepted forms."""
    if isinstance(size, bool):
        raise ValueError(f"size must be bytes or a string like '2GB', not {size!r}")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        return size
    m = _RE.match(str(size))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read size {size!r}: use bytes (an int) or a number with KB/MB/GB/TB (10^3) or KiB/MiB/GiB/TiB (2^10)")
    n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return n


def format_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
