"""results.json, results.md, chart.png and README_SECTION.md from the measured medians."""

from __future__ import annotations

import json
import os
from typing import Any

LABEL = {
    ("save", "torch"): "torch.save",
    ("save", "safetensors"): "safetensors save_file",
    ("save", "torchkeep"): "tk.save",
    ("save", "raw"): "raw os.write (limit)",
    ("load_into", "torch"): "torch.load + load_state_dict",
    ("load_into", "torch_mmap"): "torch.load(mmap) + load_state_dict",
    ("load_into", "safetensors"): "safetensors load_file + load_state_dict",
    ("load_into", "torchkeep"): "tk.load_into",
    ("load_into", "raw"): "raw readinto, preallocated (limit)",
    ("load", "torch"): "torch.load",
    ("load", "safetensors"): "safetensors load_file",
    ("load", "torchkeep"): "tk.load",
    ("load", "raw"): "raw readinto, fresh tensors (limit)",
    ("inspect", "torchkeep"): "tk.inspect",
    ("checkpoint", "sync"): "Checkpointer.save, sync",
    ("checkpoint", "async"): "Checkpointer.save, async_save=True (blocked)",
}
OP_TITLE = {"save": "save", "load_into": "load into an existing model", "load": "load into fresh memory",
            "inspect": "inspect", "checkpoint": "Checkpointer save (training loop blocked)"}
RIVALS = {"save": ("torch", "safetensors"), "load_into": ("torch_mmap", "safetensors"), "load": ("torch", "safetensors")}
MIB = 2**20


def _rows(summary: list[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    return [r for r in summary if all(r.get(k) == v for k, v in kw.items())]


def _one(summary: list[dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
    rs = [r for r in _rows(summary, **kw) if r.get("seconds") is not None]
    return rs[0] if rs else None


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def _x(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def group_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["workload"], r["op"], r.get("cache"), r.get("fsync"))


def goals(summary: list[dict[str, Any]], wls: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue 8 with its figure, its target and whether it passed."""
    out: list[dict[str, Any]] = []

    def add(goal: str, figure: str, target: str, ok: bool | None) -> None:
        out.append({"goal": goal, "figure": figure, "target": target,
                    "result": "n/a" if ok is None else ("PASS" if ok else "FAIL")})

    T = "transformer"
    for fsync in (True, False):
        tag = "durable (fsync)" if fsync else "no fsync"
        tk = _one(summary, workload=T, op="save", contender="torchkeep", fsync=fsync)
        rivals = [r for w in ("torch", "safetensors") if (r := _one(summary, workload=T, op="save", contender=w, fsync=fsync))]
        raw = _one(summary, workload=T, op="save", contender="raw", fsync=fsync)
        if tk and rivals:
            best = min(rivals, key=lambda r: r["seconds"])
            add(f"save {tag}: at least as fast as the best of torch.save / safetensors",
                f"tk {_fmt_s(tk['seconds'])} vs {best['contender']} {_fmt_s(best['seconds'])} ({_x(best['seconds'], tk['seconds'])})",
                ">= 1.00x", tk["seconds"] <= best["seconds"])
        if tk and raw:
            add(f"save {tag}: >= 0.85 of the raw write limit", f"{raw['seconds'] / tk['seconds']:.2f} of raw", ">= 0.85",
                raw["seconds"] / tk["seconds"] >= 0.85)
        if tk and fsync and tk.get("extra_rss") is not None:
            add("save: extra RSS is a small fixed buffer (no serialised copy)", f"{tk['extra_rss'] / MIB:.0f} MiB",
                "<= 64 MiB", tk["extra_rss"] <= 64 * MIB)
    for cache in ("warm", "cold"):
        tk = _one(summary, workload=T, op="load_into", contender="torchkeep", cache=cache)
        if not tk:
            continue
        torch_ = _one(summary, workload=T, op="load_into", contender="torch", cache=cache)
        if torch_:
            add(f"load_into {cache}: >= 3x faster than torch.load + load_state_dict",
                _x(torch_["seconds"], tk["seconds"]), ">= 3.00x", torch_["seconds"] >= 3 * tk["seconds"])
        rivals = [r for w in ("torch_mmap", "safetensors") if (r := _one(summary, workload=T, op="load_into", contender=w, cache=cache))]
        if rivals:
            best = min(rivals, key=lambda r: r["seconds"])
            add(f"load_into {cache}: at least as fast as the best of torch mmap / safetensors",
                f"tk {_fmt_s(tk['seconds'])} vs {best['contender']} {_fmt_s(best['seconds'])} ({_x(best['seconds'], tk['seconds'])})",
                ">= 1.00x", tk["seconds"] <= best["seconds"])
        raw = _one(summary, workload=T, op="load_into", contender="raw", cache=cache)
        if raw:
            add(f"load_into {cache}: fraction of the raw read limit" + (" (goal: cold >= 0.85)" if cache == "cold" else ""),
                f"{raw['seconds'] / tk['seconds']:.2f} of raw", ">= 0.85" if cache == "cold" else "(reported)",
                raw["seconds"] / tk["seconds"] >= 0.85 if cache == "cold" else None)
        if tk.get("extra_rss") is not None:
            frac = tk["extra_rss"] / tk["bytes"]
            add(f"load_into {cache}: extra peak RSS <= 0.10 of model bytes",
                f"{tk['extra_rss'] / MIB:.0f} MiB = {frac:.3f} of the model"
                + (f" (torch: {torch_['extra_rss'] / torch_['bytes']:.2f})" if torch_ and torch_.get("extra_rss") is not None else ""),
                "<= 0.10", frac <= 0.10)
    S = "small"
    n = len(wls[S].spec()) if S in wls else 0
    for op in ("load_into", "save"):
        kw = {"cache": "warm"} if op == "load_into" else {"fsync": False}
        tk = _one(summary, workload=S, op=op, contender="torchkeep", **kw)
        torch_ = _one(summary, workload=S, op=op, contender="torch", **kw)
        if tk and torch_ and n:
            add(f"many small tensors, {op.replace('_', ' ')}: no worse than torch per tensor",
                f"tk {tk['seconds'] / n * 1e6:.1f} us/tensor vs torch {torch_['seconds'] / n * 1e6:.1f} us/tensor",
                "<= torch", tk["seconds"] <= torch_["seconds"])
    for cache in ("cold", "warm"):
        ins = _one(summary, workload=T, op="inspect", contender="torchkeep", cache=cache)
        if ins:
            size = ins.get("file_size", 0)
            rb = ins.get("read_bytes", -1)
            add(f"tk.inspect of the {size / 2**30:.2f} GiB file, {cache}: header only, milliseconds",
                f"{ins['seconds'] * 1000:.1f} ms, {rb:,} bytes read", "< 100 ms and < 1 MiB read",
                ins["seconds"] < 0.1 and 0 <= rb < MIB)
    sync = _one(summary, op="checkpoint", contender="sync")
    asy = _one(summary, op="checkpoint", contender="async")
    if sync and asy:
        add("async Checkpointer: blocked time / sync save time", f"{asy['seconds'] / sync['seconds']:.2f} "
            f"({_fmt_s(asy['seconds'])} vs {_fmt_s(sync['seconds'])})", "a fraction (< 0.5)", asy["seconds"] < 0.5 * sync["seconds"])
    else:
        errs = [e for r in _rows(summary, op="checkpoint") for e in r.get("errors", [])]
        add("async Checkpointer: blocked time / sync save time",
            "not available" + (f" ({errs[0][:120]})" if errs else " (torchkeep.Checkpointer not measured)"), "a fraction", None)
    return out


def table(summary: list[dict[str, Any]], wls: dict[str, Any]) -> str:
    lines = []
    order = {"save": 0, "load_into": 1, "load": 2, "inspect": 3, "checkpoint": 4}
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in summary:
        groups.setdefault(group_key(r), []).append(r)
    for wname, wl in wls.items():
        keys = sorted((k for k in groups if k[0] == wname), key=lambda k: (order[k[1]], str(k[2]), not k[3]))
        if not keys:
            continue
        spec = wl.spec()
        from ._workloads import nbytes

        mb = nbytes(spec) * (3 if wl.kind == "train" else 1)
        lines += [f"### {wl.title}: {len(spec) * (4 if wl.kind == 'train' else 1):,} tensors, {mb / 2**30:.3f} GiB", ""]
        per_tensor = wname == "small"
        lines.append("| operation | contender | s (median) | GB/s | vs raw | vs torch | vs best rival | extra peak RSS | RSS / model |"
                     + (" us/tensor |" if per_tensor else "") + " runs |")
        lines.append("|---|---|---|---|---|---|---|---|---|" + ("---|" if per_tensor else "") + "---|")
        for k in keys:
            rows = groups[k]
            _, op, cache, fsync = k
            where = op.replace("_", " ") + (f", {cache}" if op in ("load", "load_into", "inspect") else "") + (
                (", fsync" if fsync else ", no fsync") if op == "save" else "")
            raw = next((r for r in rows if r["contender"] == "raw" and r.get("seconds")), None)
            tor = next((r for r in rows if r["contender"] == "torch" and r.get("seconds")), None)
            rv = [r for r in rows if r["contender"] in RIVALS.get(op, ()) and r.get("seconds")]
            best = min(rv, key=lambda r: r["seconds"]) if rv else None
            for r in rows:
                s = r.get("seconds")
                if s is None:
                    err = (r.get("errors") or ["no result"])[0][:80]
                    lines.append(f"| {where} | {LABEL.get((op, r['contender']), r['contender'])} | not available: {err} |"
                                 + " |" * (8 if per_tensor else 7))
                    continue
                rss = r.get("extra_rss")
                gbps = r.get("gbps") if op not in ("inspect", "checkpoint") else None
                gb = f"{gbps:.2f}" if gbps else ""
                lines.append(f"| {where} | {LABEL.get((op, r['contender']), r['contender'])} | {_fmt_s(s)} | {gb} |")
                cells = [
                    _x(raw["seconds"], s) if raw and op in RIVALS else "",
                    _x(tor["seconds"], s) if tor and op in RIVALS else "",
                    _x(best["seconds"], s) if best and op in RIVALS else "",
                    "" if rss is None else f"{rss / MIB:.0f} MiB",
                    "" if rss is None else f"{rss / r['bytes']:.2f}",
                ]
                if per_tensor:
                    cells.append(f"{s / len(spec) * 1e6:.1f}")
                cells.append(str(r["runs"]))
                lines[-1] += "".join(f" {c} |" for c in cells)
            if op == "checkpoint":
                for r in rows:
                    if r.get("total_s"):
                        lines.append(f"| (until written) | {LABEL.get((op, r['contender']))} | {_fmt_s(r['total_s'])} |"
                                     + " |" * (8 if per_tensor else 7))
        lines.append("")
    return "\n".join(lines)


def chart(summary: list[dict[str, Any]], wls: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for wname in wls:
        for op, kw in (("save", {"fsync": True}), ("save", {"fsync": False}), ("load_into", {"cache": "warm"}),
                       ("load_into", {"cache": "cold"}), ("load", {"cache": "warm"})):
            rows = [r for r in _rows(summary, workload=wname, op=op, **kw) if r.get("gbps")]
            if rows:
                panels.append((f"{wname}: {op.replace('_', ' ')} {next(iter(kw.values())) if op != 'save' else ('fsync' if kw['fsync'] else 'no fsync')}", rows, op))
    if not panels:
        return
    cols = 3
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 2.6 * nrows), squeeze=False)
    colors = {"torchkeep": "#d62728", "raw": "#7f7f7f", "torch": "#1f77b4", "torch_mmap": "#17becf", "safetensors": "#ff7f0e"}
    for ax, (title, rows, op) in zip(axes.flat, panels):
        names = [LABEL.get((op, r["contender"]), r["contender"]) for r in rows]
        vals = [r["gbps"] for r in rows]
        ax.barh(names, vals, color=[colors.get(r["contender"], "#999") for r in rows])
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("GB/s (median)", fontsize=7)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=7)
        ax.invert_yaxis()
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_md(m: dict[str, Any]) -> str:
    return (f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; disk {m['disk']}; Linux {m['kernel']}; "
            f"Python {m['python']}, torch {m['torch']}, safetensors {m['safetensors']}, torchkeep {m['torchkeep']}; "
            f"GPU: {m['gpu']}")


def write_all(out: str, *, machine: dict[str, Any], summary: list[dict[str, Any]], records: list[dict[str, Any]],
              wls: dict[str, Any], settings: dict[str, Any]) -> dict[str, str]:
    os.makedirs(out, exist_ok=True)
    gl = goals(summary, wls)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"machine": machine, "settings": settings, "goals": gl, "summary": summary, "runs": records},
                  f, indent=1, default=str)
    cache_methods = sorted({r.get("cache_method") for r in summary if r.get("cache") == "cold" and r.get("cache_method")})
    notes = [
        f"- Medians of {settings['reps']} repetitions; contenders alternate and their order rotates each repetition; "
        "every measurement runs in its own process (forked from a server that imported torch), so peak RSS is per run.",
        "- Extra peak RSS: the peak RSS during the operation above the RSS before it (and above the loaded tensors, for "
        "loads into fresh memory). mmap'd file pages that are touched count as RSS.",
        "- fsync: \"fsync\" rows include fsync of the file and its directory for every contender (torch.save and "
        "safetensors do not fsync by themselves; it is added after them); tk.save always fsyncs, its \"no fsync\" row "
        "uses the format writer's `fsync=False`.",
        f"- Cold page cache: {', '.join(cache_methods) or 'not measured'} (`sync; echo 3 > /proc/sys/vm/drop_caches`"
        " after posix_fadvise(DONTNEED) on the file), right before the timed operation. Warm: the file was read once first.",
        "- Fresh loads (\"load, warm\") touch one element per 4 KiB page of every result tensor inside the timed "
        "region. safetensors `load_file` returns tensors backed by a mmap of the file: warm, that is only page-table "
        "work (no copy), which is why it reads as tens of GB/s there; its load into a model pays the copy.",
        "- Raw limit: the same tensor bytes written with `os.write` straight from tensor memory (+ fsync), or read with "
        "`readinto` straight into preallocated tensors, sequentially, one call per tensor.",
    ]
    if settings.get("note"):
        notes.insert(0, f"- **{settings['note']}**")
    md = ["# torchkeep benchmark results", "", f"Machine: {machine_md(machine)}", "",
          f"Run: {settings['started']}, {settings['mode']} mode, {settings['wall_s']:.0f} s; "
          f"load average {machine.get('load_avg_at_start')} at start, {settings.get('load_avg_at_end')} at end.", "",
          *notes, "", "## Goals (issue 8)", "", "| goal | figure | target | result |", "|---|---|---|---|"]
    md += [f"| {g['goal']} | {g['figure']} | {g['target']} | {g['result']} |" for g in gl]
    md += ["", "## All figures", "", table(summary, wls), "![chart](chart.png)", ""]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(md))
    chart(summary, wls, os.path.join(out, "chart.png"))
    readme = readme_section(machine, summary, wls, gl, settings)
    with open(os.path.join(out, "..", "README_SECTION.md") if settings.get("readme_beside") else os.path.join(out, "README_SECTION.md"), "w") as f:
        f.write(readme)
    return {"md": os.path.join(out, "results.md")}


def readme_section(machine: dict[str, Any], summary: list[dict[str, Any]], wls: dict[str, Any],
                   gl: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    T = "transformer"
    lines = ["## Performance", "",
             f"Measured by `make bench` ({settings['mode']} mode) on: {machine_md(machine)}."]
    if settings.get("note"):
        lines += ["", f"_{settings['note']}_"]
    if T in wls:
        from ._workloads import nbytes

        gib = nbytes(wls[T].spec()) / 2**30
        lines += ["", f"A {gib:.2f} GiB transformer-like state dict, medians of {settings['reps']} runs, each in its own process:", "",
                  "| | torch | safetensors | torchkeep | raw I/O limit | torchkeep extra RSS |", "|---|---|---|---|---|---|"]
        for title, op, kw, rivals in (
            ("save, durable (fsync)", "save", {"fsync": True}, ("torch", "safetensors")),
            ("save, no fsync", "save", {"fsync": False}, ("torch", "safetensors")),
            ("load into a model, warm cache", "load_into", {"cache": "warm"}, ("torch", "safetensors")),
            ("load into a model, cold cache", "load_into", {"cache": "cold"}, ("torch", "safetensors")),
        ):
            cells = []
            for who in (*rivals, "torchkeep", "raw"):
                r = _one(summary, workload=T, op=op, contender=who, **kw)
                if who == "torch" and op == "load_into":
                    m = _one(summary, workload=T, op=op, contender="torch_mmap", **kw)
                    cells.append(f"{_fmt_s(r['seconds']) if r else 'n/a'} (mmap: {_fmt_s(m['seconds']) if m else 'n/a'})")
                else:
                    cells.append(f"{_fmt_s(r['seconds'])} ({r['gbps']:.2f} GB/s)" if r else "n/a")
            tk = _one(summary, workload=T, op=op, contender="torchkeep", **kw)
            rss = f"{tk['extra_rss'] / MIB:.0f} MiB" if tk and tk.get("extra_rss") is not None else "n/a"
            lines.append(f"| {title} | " + " | ".join(cells) + f" | {rss} |")
    lines += ["", "Goals from issue 8, same run:", "", "| goal | figure | result |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {g['figure']} | {g['result']} |" for g in gl]
    lines += ["", "Full tables, every contender and workload: `benchmarks/results/results.md`; re-run with `make bench` "
              "(`python -m benchmarks --quick` for a smoke run).", ""]
    return "\n".join(lines)
