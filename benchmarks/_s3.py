"""Object-storage throughput: torchkeep to/from a local S3 server (moto) vs the local disk.

``python -m benchmarks --workloads s3`` (or ``--s3`` next to the other workloads) runs it.
It starts moto's S3 server itself, in its own process on 127.0.0.1, and measures in fresh
processes (one per measurement, repeated, medians reported):

- ``save``/``load`` of one transformer-like state dict with ``tk.save``/``tk.load`` to a local
  file (fsynced; loads from a warm page cache) and to ``s3://`` (streaming multipart upload /
  parallel ranged GETs; the load also with 64 MiB ranges, which moto favours, see below);
- ``checkpoint``/``restore``: ``Checkpointer.save`` (checksums, manifest as commit marker) and
  ``restore`` (every checksum verified) on a local run directory and on ``s3://``;
- ``s3fs-put``/``s3fs-get``: the same bytes moved by plain s3fs calls (``pipe_file`` /
  ``cat_file``), the client's and server's own limit on this machine, for reference.

Peak RSS is the high-water mark of resident memory during the transfer minus the resident
memory just before it (reset through ``/proc/self/clear_refs``), so it shows what the
transfer itself holds: the state being saved is already resident, a load's result is not.
The local S3 server is a Python process on the same cores: the S3 figures are what this
machine's loopback and moto allow, not what a real S3 endpoint would do.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "torchkeep-bench"

# (op, target), run in this order every repetition (each load reads what a save wrote)
CASES = [
    ("save", "local"), ("save", "s3"), ("put", "s3fs"),
    ("load", "local"), ("load", "s3"), ("load", "s3-64m"), ("get", "s3fs"),
    ("checkpoint", "local"), ("checkpoint", "s3"),
    ("restore", "local"), ("restore", "s3"),
]


# ------------------------------------------------------------------------ child process
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> int:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kib("VmRSS")


def _child(case: dict[str, Any]) -> dict[str, Any]:
    import torch

    import torchkeep as tk

    from . import _workloads as W

    torch.set_num_threads(2)
    wl = W.Workload("transformer", "transformer-like state dict", "flat", case["params"])
    op, target, where = case["op"], case["target"], case["where"]
    sd = W.make_state_dict(wl.spec()) if op in ("save", "checkpoint", "put") else None
    fs = None
    if target.startswith("s3"):
        import s3fs

        fs = s3fs.S3FileSystem()
        tk.save({"x": torch.ones(4)}, f"s3://{BUCKET}/warm.safetensors")  # session and pool exist
        tk.load(f"s3://{BUCKET}/warm.safetensors")
    raw = None
    if op == "put":
        raw = open(case["local_file"], "rb").read()  # noqa: SIM115 - the file's bytes, resident
    base = _reset_peak()
    t0 = time.perf_counter()
    if op == "save":
        tk.save(sd, where)
    elif op == "load":
        out = tk.load(where)
    elif op == "checkpoint":
        with tk.Checkpointer(where, keep_last=1) as ck:
            ck.save(sd, case["step"])
    elif op == "restore":
        out = {}
        with tk.Checkpointer(where) as ck:
            got = ck.restore(out)
        if got is None:
            raise SystemExit(f"{where}: nothing to restore")
    elif op == "put":
        fs.pipe_file(where, raw)
    elif op == "get":
        out = fs.cat_file(where)
    else:
        raise SystemExit(f"unknown op {op}")
    secs = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    if op in ("load", "restore"):
        W.verify(wl.spec(), out)
    return {"secs": secs, "peak_extra_mib": max(0, peak - base) / 1024, "peak_rss_mib": peak / 1024}


# ----------------------------------------------------------------------------- server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process on 127.0.0.1; returns (process, endpoint URL)."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        raise SystemExit("the s3 benchmark needs moto[server] and s3fs: pip install 'moto[server]' s3fs") from None
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from moto.server import ThreadedMotoServer as S; s = S(ip_address='127.0.0.1', port={port}, "
         "verbose=False); s.start(); import time\nwhile True: time.sleep(60)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).read()  # noqa: S310 - loopback only
            return proc, endpoint
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise SystemExit("moto's S3 server did not start on 127.0.0.1") from None
            time.sleep(0.2)


def _env(endpoint: str) -> dict[str, str]:
    return {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint, "PYTHONPATH": ROOT}


def _run_child(case: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks._s3", "--child", json.dumps(case)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- main
def run(*, quick: bool, reps: int, out: str, scratch: str, log: Any = sys.stderr,
        params: dict[str, int] | None = None) -> dict[str, Any]:
    from . import _workloads as W

    if params is None:  # about 57 MiB quick, 250 MiB full
        params = {"d": 512, "layers": 4, "vocab": 4096} if quick else {"d": 768, "layers": 8, "vocab": 8192}
    nbytes = W.nbytes(W.transformer_spec(**params))
    server, endpoint = start_moto()
    env = _env(endpoint)
    records: list[dict[str, Any]] = []
    t0 = time.time()
    try:
        subprocess.run([sys.executable, "-c", f"import s3fs; s3fs.S3FileSystem().mkdir({BUCKET!r})"], env=env, check=True, timeout=120)
        local_file = os.path.join(scratch, "s3bench.safetensors")
        where = {
            ("save", "local"): local_file, ("load", "local"): local_file,
            ("save", "s3"): f"s3://{BUCKET}/bench.safetensors", ("load", "s3"): f"s3://{BUCKET}/bench.safetensors",
            ("load", "s3-64m"): f"s3://{BUCKET}/bench.safetensors",
            ("put", "s3fs"): f"{BUCKET}/raw.safetensors", ("get", "s3fs"): f"{BUCKET}/raw.safetensors",
            ("checkpoint", "local"): os.path.join(scratch, "s3bench-run"), ("restore", "local"): os.path.join(scratch, "s3bench-run"),
            ("checkpoint", "s3"): f"s3://{BUCKET}/run", ("restore", "s3"): f"s3://{BUCKET}/run",
        }
        for rep in range(reps):
            for op, target in CASES:  # each load reads what the save before it wrote
                case = {"op": op, "target": target, "where": where[(op, target)], "params": params,
                        "local_file": local_file, "step": rep + 1}
                rec = _run_child(case, {**env, **VARIANT_ENV.get(target, {})})
                rec.update(op=op, target=target, rep=rep)
                if "secs" in rec:
                    rec["gb_s"] = nbytes / rec["secs"] / 1e9
                    print(f"[s3-bench] {op:>10} {target:<6} rep {rep}: {rec['gb_s']:.3f} GB/s, "
                          f"peak +{rec['peak_extra_mib']:.0f} MiB", file=log)
                else:
                    print(f"[s3-bench] {op} {target} rep {rep}: FAILED\n{rec['error']}", file=log)
                records.append(rec)
    finally:
        server.kill()
        server.wait()
    summary = []
    for op, target in CASES:
        ok = [r for r in records if r["op"] == op and r["target"] == target and "secs" in r]
        if ok:
            summary.append({"op": op, "target": target, "n": len(ok),
                            "gb_s": statistics.median(r["gb_s"] for r in ok),
                            "secs": statistics.median(r["secs"] for r in ok),
                            "peak_extra_mib": statistics.median(r["peak_extra_mib"] for r in ok)})
    from torchkeep._io.remote import settings

    result = {"bytes": nbytes, "params": params, "reps": reps, "wall_s": time.time() - t0,
              "settings": settings(), "summary": summary, "records": records}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "s3.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = report(result)
    with open(os.path.join(out, "s3.md"), "w") as f:
        f.write(md)
    return result


VARIANT_ENV = {"s3-64m": {"TORCHKEEP_REMOTE_RANGE_SIZE": str(64 << 20)}}

LABEL = {
    ("save", "local"): "tk.save, local disk (fsync)", ("save", "s3"): "tk.save, s3:// (multipart)",
    ("put", "s3fs"): "s3fs pipe_file (reference)",
    ("load", "local"): "tk.load, local disk (warm cache)", ("load", "s3"): "tk.load, s3:// (ranged GETs)",
    ("load", "s3-64m"): "tk.load, s3://, 64 MiB ranges",
    ("get", "s3fs"): "s3fs cat_file (reference)",
    ("checkpoint", "local"): "Checkpointer.save, local", ("checkpoint", "s3"): "Checkpointer.save, s3://",
    ("restore", "local"): "Checkpointer.restore, local", ("restore", "s3"): "Checkpointer.restore, s3://",
}


def _settings_text(cfg: dict[str, int]) -> str:
    rng = f"{cfg['range_size'] >> 20} MiB" if cfg.get("range_size") else "load size / readers, 8-64 MiB"
    return (f"parts of {cfg['part_size'] >> 20} MiB, {cfg['uploads']} uploads in flight; ranges of {rng}, "
            f"{cfg['threads']} readers")


def report(result: dict[str, Any]) -> str:
    lines = [
        "## Object storage (moto S3 on 127.0.0.1) vs local disk",
        "",
        f"One state dict of {result['bytes'] / 2**20:.0f} MiB, median of {result['reps']} runs, each in a fresh process; "
        f"same run, same machine. Transfer settings: {_settings_text(result['settings'])}.",
        "",
        "| operation | GB/s | seconds | peak extra RSS (MiB) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for s in result["summary"]:
        lines.append(f"| {LABEL[(s['op'], s['target'])]} | {s['gb_s']:.3f} | {s['secs']:.2f} | {s['peak_extra_mib']:.0f} |")
    lines += [
        "",
        "Peak extra RSS: the high-water mark of resident memory during the operation minus the resident memory "
        "just before it (a save's state is already resident; a load's result is not). moto is a Python server "
        "sharing this machine's cores, so the s3:// figures are bounded by it (see the s3fs reference rows). "
        "moto also reads and copies the whole object to answer each ranged GET, so on moto fewer, larger ranges "
        "win (the 64 MiB row); on a real S3 endpoint a ranged GET costs its range only. The default spreads a load "
        "over 8 concurrent ranges of 8 to 64 MiB.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks._s3")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    scratch = tempfile.mkdtemp(prefix="torchkeep-s3bench-", dir=os.environ.get("TORCHKEEP_BENCH_DIR") or "/var/tmp")
    try:
        result = run(quick=args.quick, reps=args.reps or (2 if args.quick else 3), out=args.out, scratch=scratch)
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
