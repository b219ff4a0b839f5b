"""torchkeep demo [--out DIR]: the seeds' story end to end on a small model, on CPU.

1. fit y = x^2 + noise by batch training over a ResumableLoader, checkpointed by a
   Checkpointer, once without interruption;
2. the same run in a child process, killed with SIGKILL part way, then resumed: its final
   state must be bitwise the uninterrupted run's;
3. save the weights, the whole model and a general checkpoint, reload each the way the seeds
   do, and check the predictions are bit-equal;
4. warm-start a network with a new head from the saved weights (and load weights saved
   with DataParallel's ``module.`` prefix), printing the load reports;
5. a PNG of the three reloaded fits and of the loss curve with the crash and the resume marked.

Exit 0 only when every check holds, 1 when one fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import TorchkeepError
from ._common import console, format_size

__all__ = ["register", "run"]

MARKER = ".torchkeep-demo"
CRASH_AT = 180  # the child is killed right after this step (its last checkpoint: step 175)
CHILD = "torchkeep.cli._demo_child"


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole story end to end on a small model (CPU, under a minute)")
    p.add_argument("--out", default="torchkeep-demo", help="folder to write into (default ./torchkeep-demo)")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- helpers
class Checks:
    def __init__(self, c: Any) -> None:
        self.c = c
        self.rows: list[tuple[str, bool, str]] = []

    def __call__(self, what: str, ok: bool, detail: str = "") -> bool:
        self.rows.append((what, bool(ok), detail))
        mark = "[green]ok[/green]" if ok else "[bold red]FAILED[/bold red]"
        self.c.print(f"   {mark}  {what}" + (f" [dim]({detail})[/dim]" if detail else ""))
        return bool(ok)

    @property
    def failed(self) -> list[str]:
        return [w for w, ok, _ in self.rows if not ok]


def _prepare(out: str) -> None:
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise TorchkeepError(f"{out} is a file; pass --out with a folder (new, empty, or an earlier demo's).")
        if os.listdir(out) and not os.path.exists(os.path.join(out, MARKER)):
            raise TorchkeepError(
                f"{out} is not empty and was not written by `torchkeep demo`; nothing was changed. "
                f"Fix: pass --out with a new or empty folder."
            )
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, MARKER), "w") as f:
        f.write("written by `torchkeep demo`; safe to delete\n")
    shutil.rmtree(os.path.join(out, "runs"), ignore_errors=True)  # the demo's own earlier runs


def _tree_diff(a: Any, b: Any, path: str = "") -> tuple[int, list[str]]:
    """(tensors compared, paths that differ) between two state trees."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
        return 1, [] if same else [path or "<root>"]
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        n, bad = 0, []
        if set(a) != set(b):
            bad.append(f"{path}: keys {sorted(map(str, set(a) ^ set(b)))}")
        for k in a:
            if k in b:
                m, d = _tree_diff(a[k], b[k], f"{path}.{k}" if path else str(k))
                n, bad = n + m, bad + d
        return n, bad
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        n, bad = 0, []
        for i, (x, y) in enumerate(zip(a, b)):
            m, d = _tree_diff(x, y, f"{path}.{i}")
            n, bad = n + m, bad + d
        return n, bad
    return 0, [] if a == b else [path or "<root>"]


def _progress(c: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("   {task.description:<28}"),
        BarColumn(bar_width=32),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.5f}"),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=c,
    )


def _child_env() -> dict[str, str]:
    import torchkeep

    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(torchkeep.__file__)))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def _crashed_run(c: Any, run_dir: str, total: int, cwd: str) -> tuple[list[float], list[int], int | None, str]:
    """Run the training in a child process and SIGKILL it right after step CRASH_AT.

    Returns (losses it printed, steps it reported saved, its return code, its stderr).
    """
    losses: list[float] = []
    saved: list[int] = []
    with tempfile.TemporaryFile("w+") as err, _progress(c) as prog:
        task = prog.add_task("run 2: child process", total=total, loss=float("nan"), note="")
        proc = subprocess.Popen(
            [sys.executable, "-m", CHILD, run_dir],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=cwd,
            env=_child_env(),
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for line in proc.stdout:
                kind, *rest = line.split()
                if kind == "saved":
                    saved.append(int(rest[0]))
                elif kind == "step":
                    step, loss = int(rest[0]), float(rest[1])
                    losses.append(loss)
                    prog.update(task, completed=step, loss=loss, note=f"last checkpoint: step {saved[-1]}" if saved else "")
                    if step >= CRASH_AT:
                        proc.kill()  # SIGKILL: no cleanup, no atexit, no flush
                        prog.update(task, note=f"[bold red]SIGKILL at step {step}[/bold red]")
                        break
                    try:
                        proc.stdin.write("go\n")
                        proc.stdin.flush()
                    except BrokenPipeError:  # the child died on its own: reported by the caller
                        break
        finally:
            if proc.poll() is None and not losses:
                proc.kill()
            rc = proc.wait()
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        err.seek(0)
        return losses, saved, rc, err.read()


def _plot(path: str, x: torch.Tensor, y: torch.Tensor, fits: list[tuple[str, torch.Tensor]],
          full: list[float], crashed: list[float], resumed: list[float], resume_step: int, crash_step: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 8), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, len(fits), height_ratios=[1, 1])
    xs, ys = x.squeeze(1).numpy(), y.squeeze(1).numpy()
    for i, (title, pred) in enumerate(fits):
        ax = fig.add_subplot(grid[0, i])
        ax.scatter(xs, ys, s=8, color="0.55", label="data: y = x² + noise")
        ax.plot(xs, pred.squeeze(1).numpy(), color="C3", lw=2.5, label="prediction")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x")
        if i == 0:
            ax.set_ylabel("y")
            ax.legend(loc="upper center", fontsize=8)
    ax = fig.add_subplot(grid[1, :])
    steps = range(1, len(full) + 1)
    ax.plot(steps, full, color="C0", lw=3, alpha=0.35, label="uninterrupted run")
    ax.plot(range(1, len(crashed) + 1), crashed, color="C3", lw=1, label="child process (killed)")
    ax.plot(range(resume_step + 1, resume_step + 1 + len(resumed)), resumed, color="C2", lw=1, ls="--",
            label=f"resumed from the checkpoint of step {resume_step}")
    ax.axvline(crash_step, color="C3", ls=":", lw=1.5)
    ax.axvline(resume_step, color="C2", ls=":", lw=1.5)
    top = max(full)
    ax.annotate(f"SIGKILL (step {crash_step})", (crash_step, top), xytext=(6, -12), textcoords="offset points",
                color="C3", fontsize=9)
    ax.annotate(f"resume (step {resume_step})", (resume_step, top), xytext=(-6, -26), textcoords="offset points",
                color="C2", fontsize=9, ha="right")
    ax.set_yscale("log")
    ax.set_xlabel("step (batch)")
    ax.set_ylabel("MSE loss (batch)")
    ax.set_title("training loss: the resumed run continues the uninterrupted one exactly", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.suptitle("torchkeep demo: y = x² + noise", fontsize=12)
    fig.tight_layout()
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the story
def run(args: argparse.Namespace) -> int:
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    try:
        return _run(args)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


def _run(args: argparse.Namespace) -> int:
    import torchkeep as tk
    from rich.panel import Panel

    from ..manager import list_checkpoints
    from . import _demo_child as child

    t0 = time.perf_counter()
    c = console()
    out = os.path.abspath(args.out)
    _prepare(out)
    check = Checks(c)
    child.deterministic()
    cfg = child.Config()
    total = cfg.total_steps
    full_dir = os.path.join(out, "runs", "uninterrupted")
    crash_dir = os.path.join(out, "runs", "crash-and-resume")
    c.print(
        Panel.fit(
            f"Fit y = x² + noise ({cfg.n_points} points) with a {cfg.hidden}-unit network: batch training "
            f"({cfg.batch_size} per batch, {cfg.batches_per_epoch} batches x {cfg.epochs} epochs = {total} steps) "
            f"over a tk.ResumableLoader,\nAdam + cosine LR schedule, a tk.Checkpointer every {cfg.save_every} steps "
            f"(keep_last={cfg.keep_last}). Writing into {out}",
            title="torchkeep demo",
        )
    )

    # 1. uninterrupted ---------------------------------------------------------------
    c.print("[bold]1. train without interruption[/bold]")
    with _progress(c) as prog:
        task = prog.add_task("run 1: uninterrupted", total=total, loss=float("nan"), note="")
        full, _ = child.train(full_dir, cfg, on_step=lambda s, l: prog.update(task, completed=s, loss=l))
    full_losses = list(full.history["losses"])
    c.print(f"   final loss {full_losses[-1]:.5f}; checkpoints in {full_dir}")

    # 2. crash and resume ------------------------------------------------------------
    c.print(f"[bold]2. the same run in a child process, killed with SIGKILL after step {CRASH_AT}[/bold]")
    crashed, saved, rc, err = _crashed_run(c, crash_dir, total, out)
    killed = rc == -getattr(signal, "SIGKILL", 9)
    if not check("the child was killed mid-run by SIGKILL", killed and len(crashed) == CRASH_AT,
                 f"return code {rc}, {len(crashed)} steps" + (f"; stderr: {err.strip()[-400:]}" if not killed else "")):
        return _finish(c, check, out, t0, {})
    on_disk = [r.step for r in list_checkpoints(crash_dir)]
    last_saved = max(saved) if saved else 0
    check("what it had saved survived the kill", on_disk and on_disk[-1] == last_saved,
          f"committed steps on disk: {on_disk}; lost work: steps {last_saved + 1}-{CRASH_AT}")
    check("its losses equal the uninterrupted run's (a second process computes the same numbers)",
          crashed == full_losses[:CRASH_AT])

    c.print("   resume: [cyan]start = ckpt.restore(state) or 0[/cyan]")
    with _progress(c) as prog:
        task = prog.add_task("run 2: resumed", total=total, loss=float("nan"), note="")
        resumed, start = child.train(crash_dir, cfg, on_step=lambda s, l: prog.update(task, completed=s, loss=l))
        prog.update(task, note=f"restored step {start}")
    check(f"restored the newest checkpoint (step {last_saved}), mid-epoch", start == last_saved,
          f"epoch {start // cfg.batches_per_epoch}, batch {start % cfg.batches_per_epoch} of {cfg.batches_per_epoch}")
    a = {k: v for k, v in full.state.state_dict().items() if not k.startswith("_")}
    b = {k: v for k, v in resumed.state.state_dict().items() if not k.startswith("_")}
    n, diffs = _tree_diff(a, b)
    equal = not diffs and n > 0
    c.print(
        f"   bitwise resume: {'EQUAL' if equal else 'DIFFERENT'} — the resumed run's final weights, optimizer, "
        f"scheduler, loader position and loss history vs the uninterrupted run's ({n} tensors"
        + (f"; differ: {diffs[:8]}" if diffs else "")
        + ")"
    )
    check("resumed run == uninterrupted run, bit for bit", equal)
    resumed_losses = list(resumed.history["losses"])[start:]

    # 3. save three ways, reload three ways -------------------------------------------
    c.print("[bold]3. save the trained network three ways, reload each the seeds' way[/bold]")
    net, opt = full.net, full.opt
    net.eval()
    x, y = child.make_data(cfg)
    with torch.no_grad():
        ref = net(x)
    weights = os.path.join(out, "net_params.safetensors")
    whole = os.path.join(out, "net_model.safetensors")
    general = os.path.join(out, "checkpoint.safetensors")
    tk.save(net, weights)
    tk.save_model(net, whole)
    tk.save({"epoch": cfg.epochs, "loss": full_losses[-1], "model": net.state_dict(), "optimizer": opt.state_dict()}, general)
    c.print(f"   [cyan]tk.save(net, ...)[/cyan]            -> {os.path.basename(weights)}  (the state_dict)")
    c.print(f"   [cyan]tk.save_model(net, ...)[/cyan]      -> {os.path.basename(whole)}  (architecture as data + weights)")
    c.print(f"   [cyan]tk.save({{epoch, loss, model, optimizer}}, ...)[/cyan] -> {os.path.basename(general)}")

    net_a = child.Net(1, cfg.hidden, 1)
    net_a.load_state_dict(tk.load(weights))
    net_b = tk.load_model(whole, allow=[CHILD])
    ck = tk.load(general)
    net_c = child.Net(1, cfg.hidden, 1)
    opt_c = torch.optim.Adam(net_c.parameters(), lr=cfg.lr)
    net_c.load_state_dict(ck["model"])
    opt_c.load_state_dict(ck["optimizer"])
    fits = []
    for title, m in (
        ("weights: net.load_state_dict(tk.load(...))", net_a),
        ("whole model: tk.load_model(..., allow=[...])", net_b),
        ("general checkpoint: model + optimizer restored", net_c),
    ):
        m.eval()
        with torch.no_grad():
            pred = m(x)
        check(f"{title.split(':')[0]}: predictions bit-equal to the trained network", torch.equal(pred, ref))
        fits.append((title, pred))
    _, odiff = _tree_diff(opt.state_dict(), opt_c.state_dict())
    check("general checkpoint: optimizer state restored exactly, epoch and loss as saved",
          not odiff and ck["epoch"] == cfg.epochs and ck["loss"] == full_losses[-1],
          f"epoch {ck['epoch']}, loss {ck['loss']!r}")

    # 4. warm start -------------------------------------------------------------------
    c.print("[bold]4. warm start: a network with a new head, Linear(%d, 3), from the saved weights[/bold]" % cfg.hidden)
    c.print('   [cyan]report = tk.load_into(new_net, "net_params.safetensors", strict=False, on_mismatch="skip")[/cyan]')
    torch.manual_seed(3)
    new = child.Net(1, cfg.hidden, 3)
    report = tk.load_into(new, weights, strict=False, on_mismatch="skip")
    c.print(report)
    check("body loaded, the new head left as initialised",
          sorted(report.loaded) == ["hidden.bias", "hidden.weight"]
          and sorted(k for k, *_ in report.mismatched) == ["predict.bias", "predict.weight"]
          and torch.equal(new.hidden.weight, net.hidden.weight))
    dp = os.path.join(out, "net_params_dataparallel.safetensors")
    tk.save({f"module.{k}": v for k, v in net.state_dict().items()}, dp)
    plain = child.Net(1, cfg.hidden, 1)
    r2 = tk.load_into(plain, dp)
    c.print(f"   weights saved from nn.DataParallel ('module.' prefix) into a plain network: {r2.summary()}")
    plain.eval()
    with torch.no_grad():
        check("DataParallel-prefixed weights load strictly into the plain network", r2.ok and torch.equal(plain(x), ref))
    pt = os.path.join(out, "net_params.pt")
    tk.save(net, pt)
    back = torch.load(pt, weights_only=True)
    check("net_params.pt is a torch zip file that plain torch.load(weights_only=True) reads",
          not _tree_diff(back, net.state_dict())[1])

    # 5. the picture --------------------------------------------------------------------
    png = os.path.join(out, "demo.png")
    try:
        _plot(png, x, y, fits, full_losses, crashed, resumed_losses, start, CRASH_AT)
        with open(png, "rb") as f:
            check("figure written (three reloaded fits, loss curve with crash and resume)",
                  f.read(8) == b"\x89PNG\r\n\x1a\n", png)
    except ImportError:
        c.print("   [yellow]matplotlib is not installed: no figure. pip install 'torchkeep[demo]'[/yellow]")
        png = ""

    files = {
        weights: "weights only (state_dict), safetensors",
        whole: "whole model: architecture as JSON + weights",
        general: "general checkpoint: epoch, loss, model, optimizer",
        dp: "the weights with DataParallel's module. prefix",
        pt: "the weights as a torch zip file, for torch.load",
    }
    if png:
        files[png] = "the fits and the loss curve"
    for d in (full_dir, crash_dir):
        for rec in list_checkpoints(d):
            files[rec.path] = f"Checkpointer step folder (loss {rec.metrics.get('loss', float('nan')):.4f})"
    return _finish(c, check, out, t0, files)


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def _finish(c: Any, check: Checks, out: str, t0: float, files: dict[str, str]) -> int:
    from rich.table import Table

    if files:
        t = Table(title=f"files in {out}", title_justify="left")
        t.add_column("path")
        t.add_column("size", justify="right")
        t.add_column("what")
        for p, what in files.items():
            p = p.removeprefix("file://")
            t.add_row(os.path.relpath(p, out), format_size(_size(p)), what)
        c.print(t)
    secs = time.perf_counter() - t0
    if check.failed:
        c.print(f"[bold red]{len(check.failed)} of {len(check.rows)} checks FAILED[/bold red] ({secs:.1f} s): "
                + "; ".join(check.failed))
        return 1
    c.print(f"[bold green]all {len(check.rows)} checks passed[/bold green] in {secs:.1f} s")
    return 0
