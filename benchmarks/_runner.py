"""Plan the cases, run each in its own forked process (interleaved, repeated), keep medians.

Every measurement is a separate process forked from a server that has already imported
torch (``multiprocessing`` forkserver): a fresh address space, so peak RSS is per run, without
paying the torch import a hundred times. Contenders alternate within each group and the
order rotates every repetition; medians over repetitions are reported.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from typing import Any

from . import _workloads as W

SAVE = ["torch", "safetensors", "torchkeep", "raw"]
LOAD_INTO = ["torch", "torch_mmap", "safetensors", "torchkeep", "raw"]
LOAD = ["torch", "safetensors", "torchkeep", "raw"]
SUFFIX = {"torch": ".pt", "safetensors": ".st.safetensors", "torchkeep": ".tk.safetensors", "raw": ".raw"}


def _file_for(who: str) -> str:
    return "torch" if who == "torch_mmap" else who


def plan(wls: dict[str, W.Workload], contenders: set[str], cold: bool, quick: bool) -> list[dict[str, Any]]:
    """Groups of cases; each group's contenders alternate (see :func:`order`)."""
    caches = ["warm", "cold"] if cold else ["warm"]
    groups: list[dict[str, Any]] = []

    def add(wl: W.Workload, op: str, whos: list[str], **kw: Any) -> None:
        whos = [w for w in whos if w in contenders or (op == "checkpoint")]
        if whos:
            groups.append({"workload": wl.name, "op": op, "contenders": whos, **kw})

    for name, wl in wls.items():
        for fsync in (True, False) if wl.kind == "flat" or quick else (True,):
            add(wl, "save", SAVE, fsync=fsync)
        if wl.kind == "flat":
            for cache in caches:
                add(wl, "load_into", LOAD_INTO, cache=cache)
            add(wl, "load", LOAD, cache="warm")
            if name == "transformer" and "torchkeep" in contenders:
                for cache in caches:
                    add(wl, "inspect", ["torchkeep"], cache=cache)
        else:
            add(wl, "load", LOAD, cache="warm")
            if "torchkeep" in contenders:
                add(wl, "checkpoint", ["sync", "async"])
    return groups


def _worker(case: dict[str, Any], conn: Any) -> None:
    try:
        import torch

        torch.set_num_threads(int(case.get("torch_threads", 2)))
        from ._child import run_case

        conn.send(run_case(case))
    except BaseException:  # noqa: BLE001 - reported to the parent, which records the failure
        conn.send({"error": traceback.format_exc(limit=8)})
    finally:
        conn.close()


class Runner:
    def __init__(self, scratch: str, timeout: float = 600.0, log: Any = sys.stderr) -> None:
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["torch", "safetensors.torch", "torchkeep", "benchmarks._child"])
        self.scratch = scratch
        self.timeout = timeout
        self.log = log

    def run(self, case: dict[str, Any]) -> dict[str, Any]:
        os.sync()  # the previous case's dirty pages must not be written back during this one
        recv, send = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=_worker, args=(case, send))
        t0 = time.perf_counter()
        p.start()
        send.close()
        res: dict[str, Any]
        if recv.poll(self.timeout):
            try:
                res = recv.recv()
            except EOFError:
                res = {"error": "the measuring process died (out of memory?)"}
        else:
            p.kill()
            res = {"error": f"timed out after {self.timeout:.0f} s"}
        p.join(30)
        res["wall_s"] = time.perf_counter() - t0
        if p.exitcode not in (0, None) and "error" not in res:
            res["error"] = f"exit code {p.exitcode}"
        return res


def _files(scratch: str, wl: W.Workload) -> dict[str, str]:
    return {who: os.path.join(scratch, f"{wl.name}{suf}") for who, suf in SUFFIX.items()}


def run_all(wls: dict[str, W.Workload], groups: list[dict[str, Any]], reps: int, scratch: str,
            log: Any = sys.stderr) -> list[dict[str, Any]]:
    runner = Runner(scratch, log=log)
    records: list[dict[str, Any]] = []
    files = {name: _files(scratch, wl) for name, wl in wls.items()}
    needs_files = {g["workload"] for g in groups if g["op"] in ("load", "load_into", "inspect")}
    for name in needs_files:
        t0 = time.perf_counter()
        res = runner.run({"op": "prep", "contender": "-", "path": "-", "workload": asdict(wls[name]), "files": files[name]})
        if "error" in res:
            raise RuntimeError(f"preparing {name} files failed:\n{res['error']}")
        print(f"[bench] prepared {name} files ({time.perf_counter() - t0:.1f} s)", file=log, flush=True)
    total = reps * sum(len(g["contenders"]) for g in groups)
    done = 0
    for rep in range(reps):
        for g in groups:
            whos = g["contenders"]
            k = rep % len(whos)
            for who in whos[k:] + whos[:k]:  # rotate: nobody always runs first
                wl = wls[g["workload"]]
                case = {"workload": asdict(wl), "op": g["op"], "contender": who,
                        "fsync": g.get("fsync", False), "cache": g.get("cache", "warm")}
                if g["op"] == "save":
                    case["path"] = os.path.join(scratch, f"out-{wl.name}{SUFFIX[who]}")
                elif g["op"] == "checkpoint":
                    case["path"] = os.path.join(scratch, f"run-{who}")
                elif g["op"] == "inspect":
                    case["path"] = files[wl.name]["torchkeep"]
                else:
                    case["path"] = files[wl.name][_file_for(who)]
                res = runner.run(case)
                _cleanup(case)
                done += 1
                rec = {k: v for k, v in case.items() if k not in ("workload", "path")}
                rec.update(workload=wl.name, rep=rep, **res)
                records.append(rec)
                msg = f"error: {res['error'].strip().splitlines()[-1]}" if "error" in res else (
                    f"{res['seconds']:.3f} s, extra RSS {res.get('extra_rss', 0) / 2**20:.0f} MiB")
                print(f"[bench {done}/{total}] rep {rep} {wl.name} {g['op']} {who}"
                      f"{' fsync' if case['fsync'] else ''} {case['cache'] if g['op'] != 'save' else ''}: {msg}",
                      file=log, flush=True)
    return records


def _cleanup(case: dict[str, Any]) -> None:
    if case["op"] == "save" and os.path.exists(case["path"]):
        os.unlink(case["path"])
    if case["op"] == "checkpoint" and os.path.isdir(case["path"]):
        shutil.rmtree(case["path"], ignore_errors=True)


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (workload, op, contender, cache, fsync)."""
    keyf = ("workload", "op", "contender", "cache", "fsync")
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(r.get(k) for k in keyf), []).append(r)
    out = []
    for key, rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        row: dict[str, Any] = dict(zip(keyf, key))
        row["runs"] = len(ok)
        row["errors"] = [r["error"].strip().splitlines()[-1] for r in rs if "error" in r]
        if ok:
            secs = sorted(r["seconds"] for r in ok)
            row["seconds"] = statistics.median(secs)
            row["all_seconds"] = [round(s, 4) for s in secs]
            row["bytes"] = ok[0]["bytes"]
            row["gbps"] = row["bytes"] / row["seconds"] / 1e9 if row["seconds"] > 0 else None
            if any("extra_rss" in r for r in ok):
                row["extra_rss"] = statistics.median(r.get("extra_rss", 0) for r in ok)
            for extra in ("total_s", "read_bytes", "file_size"):
                vals = [r[extra] for r in ok if extra in r]
                if vals:
                    row[extra] = statistics.median(vals)
            for extra in ("cache_method", "api"):
                vals = {r[extra] for r in ok if extra in r}
                if vals:
                    row[extra] = ", ".join(sorted(vals))
        out.append(row)
    return out


def make_scratch(base: str | None) -> str:
    base = base or os.environ.get("TORCHKEEP_BENCH_DIR") or "/var/tmp"
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix="torchkeep-bench-", dir=base)


def dump(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=str)
