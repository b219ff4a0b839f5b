"""A small training run that checkpoints every k steps and can SIGKILL itself at a given step.

Run by tests/state/test_kill_trials.py as ``python _train_child.py --dir D ...``. Every run
in the same directory resumes from ``D/ckpt.safetensors`` when it exists. Each attempt logs
``<step> <loss.hex()>`` lines to ``D/losses.<attempt>.txt``; a finished run writes its
whole TrainState to ``D/final.safetensors``.

``--plan 7:after_step,11:mid_step,end`` runs several attempts one after another, each in a
process forked from this one after torch is imported (a real process, really SIGKILLed,
without paying torch's import time again); it prints one line per attempt,
``attempt <i> signal <n>`` or ``attempt <i> exit <code>``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import torchkeep as tk


class Augmented(torch.utils.data.Dataset):
    """Fixed data; every __getitem__ draws from torch, NumPy and Python's generators."""

    def __init__(self, n: int, dim: int, classes: int) -> None:
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(n, dim, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):  # noqa: ANN204
        x = self.x[i] + 0.1 * torch.randn(self.x.shape[1])
        x = x * float(np.random.uniform(0.9, 1.1)) + random.uniform(-0.05, 0.05)
        return x, self.y[i]


def kill_self() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def classifier(args: argparse.Namespace, log) -> tk.TrainState:  # noqa: ANN001
    ds = Augmented(44, 8, 3)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-2, total_steps=args.steps)
    loader = tk.ResumableLoader(ds, batch_size=8, shuffle=True, num_workers=args.workers)
    extra = {"step": 0}
    state = tk.TrainState(model=model, opt=opt, sched=sched, loader=loader, extra=extra)

    def step(batch) -> list[float]:  # noqa: ANN001
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if extra["step"] + 1 == args.kill_at and args.kill_point == "mid_step":
            kill_self()
        opt.step()
        sched.step()
        return [loss.item()]

    return train(args, state, loader, extra, step, log)


def gan(args: argparse.Namespace, log) -> tk.TrainState:  # noqa: ANN001
    ds = Augmented(40, 8, 2)
    gen = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 8))
    disc = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Dropout(0.2), nn.Linear(16, 1))
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=2e-3, betas=(0.5, 0.999))
    sched_g = torch.optim.lr_scheduler.StepLR(opt_g, step_size=5, gamma=0.7)
    loader = tk.ResumableLoader(ds, batch_size=8, shuffle=True, num_workers=args.workers)
    extra = {"step": 0}
    state = tk.TrainState(gen=gen, disc=disc, opt_g=opt_g, opt_d=opt_d, sched_g=sched_g, loader=loader, extra=extra)
    bce = nn.functional.binary_cross_entropy_with_logits

    def step(batch) -> list[float]:  # noqa: ANN001
        real, _ = batch
        n = real.shape[0]
        fake = gen(torch.randn(n, 4))
        d_loss = bce(disc(real), torch.ones(n, 1)) + bce(disc(fake.detach()), torch.zeros(n, 1))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = bce(disc(fake), torch.ones(n, 1))
        opt_g.zero_grad()
        g_loss.backward()
        if extra["step"] + 1 == args.kill_at and args.kill_point == "mid_step":
            kill_self()
        opt_g.step()
        sched_g.step()
        return [d_loss.item(), g_loss.item()]

    return train(args, state, loader, extra, step, log)


def train(args, state, loader, extra, step, log):  # noqa: ANN001, ANN201
    ckpt = Path(args.dir) / "ckpt.safetensors"
    manager = None
    if args.saver == "file":
        if ckpt.exists():
            state.load_state_dict(tk.load(ckpt))
            print(f"resumed at step {extra['step']}", flush=True)
    else:
        from torchkeep.manager import Checkpointer

        manager = Checkpointer(Path(args.dir) / "run", keep_last=2, async_save=args.saver == "checkpointer-async")
        restored = manager.restore(state)
        if restored is not None:
            assert restored == extra["step"], (restored, extra)
            print(f"resumed at step {extra['step']}", flush=True)
    while extra["step"] < args.steps:
        for batch in loader:
            losses = step(batch)
            extra["step"] += 1
            s = extra["step"]
            log.write(f"{s} {' '.join(v.hex() for v in losses)}\n")
            log.flush()
            if s == args.kill_at and args.kill_point == "after_step":
                kill_self()
            if s % args.every == 0:
                if manager is None:
                    tk.save(state, ckpt)  # atomic: a kill leaves the previous checkpoint
                else:
                    manager.save(state, s, metrics={"loss": losses[0]})
            if s >= args.steps:
                break
    if manager is not None:
        manager.close()
    return state


def attempt(args: argparse.Namespace) -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    with open(Path(args.dir) / f"losses.{args.attempt}.txt", "w") as log:
        state = (gan if args.scenario == "gan" else classifier)(args, log)
    tk.save(state, Path(args.dir) / "final.safetensors")


def run_plan(args: argparse.Namespace) -> None:
    for i, item in enumerate(args.plan.split(",")):
        if item == "end":
            args.kill_at, args.kill_point = -1, "after_step"
        else:
            step, args.kill_point = item.split(":")
            args.kill_at = int(step)
        args.attempt = i
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the attempt
            code = 0
            try:
                attempt(args)
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            print(f"attempt {i} signal {os.WTERMSIG(status)}", flush=True)
        else:
            print(f"attempt {i} exit {os.WEXITSTATUS(status)}", flush=True)
            if os.WEXITSTATUS(status):
                return


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--scenario", choices=["classifier", "gan"], default="classifier")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--kill-at", type=int, default=-1)
    p.add_argument("--kill-point", choices=["after_step", "mid_step"], default="after_step")
    p.add_argument("--attempt", type=int, default=0)
    p.add_argument("--saver", choices=["file", "checkpointer", "checkpointer-async"], default="file")
    p.add_argument("--plan", default=None, help="attempts in forked processes: 7:after_step,11:mid_step,end")
    args = p.parse_args()
    if args.plan:
        run_plan(args)
    else:
        attempt(args)


if __name__ == "__main__":
    main()
