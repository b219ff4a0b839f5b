"""Child process for the memory tests: save or load one large checkpoint on S3, print RSS figures.

usage: python _rss_child.py save|load|checkpointer URL MIB
Prints one JSON line: {"base_kib": resident memory just before the transfer, "peak_kib": the
high-water mark of resident memory during it}. The mark is reset right before the transfer
(``/proc/self/clear_refs``), so neither the set-up nor the parent's memory (``ru_maxrss``
inherits it across exec) counts. The endpoint comes from AWS_ENDPOINT_URL (set by the test).
"""

from __future__ import annotations

import json
import sys

import torch

import torchkeep as tk


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SystemExit(f"/proc/self/status has no {field}")


def _reset_peak() -> int:
    """Reset the RSS high-water mark to the current RSS; return the current RSS (KiB)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def _peak_kib() -> int:
    return _status_kib("VmHWM")


def main() -> None:
    op, url, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tk.inspect  # noqa: B018 - imports done before the baseline
    import s3fs  # noqa: F401

    if op in ("save", "checkpointer"):
        t = torch.arange(mib << 18, dtype=torch.float32)  # mib MiB, resident before the baseline
        tree = {"w": t, "step": 7}
        small = {"b": torch.ones(3)}
        tk.save(small, url + ".warm.safetensors")  # the client, its session and pools exist
        base = _reset_peak()
        if op == "save":
            tk.save(tree, url)
        else:
            with tk.Checkpointer(url) as ck:
                ck.save(tree, 7)
        peak = _peak_kib()
    else:
        tk.load(url + ".warm.safetensors")
        base = _reset_peak()
        out = tk.load(url)
        peak = _peak_kib()
        want = torch.arange(out["w"].numel(), dtype=torch.float32)
        if not torch.equal(out["w"], want):
            raise SystemExit("loaded tensor differs from the one saved")
    print(json.dumps({"base_kib": base, "peak_kib": peak}))


if __name__ == "__main__":
    main()
