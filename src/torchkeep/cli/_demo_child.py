"""The demo's training run: y = x^2 + noise, batch training over a ResumableLoader, checkpointed.

Used in-process by ``torchkeep demo`` (the uninterrupted run and the resume) and as a child
process (``python -m torchkeep.cli._demo_child RUN_DIR``) that the demo kills with SIGKILL
part way. The child prints one line per step (``step N LOSS``, ``saved N`` after a
checkpoint) and waits for a line on stdin before the next step, so the parent decides
exactly when it dies.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..model import keep_args

__all__ = ["Net", "Config", "make_data", "Run", "build", "train"]


@keep_args
class Net(nn.Module):
    """The seeds' network: one hidden layer, ``predict`` is the output layer (the head)."""

    def __init__(self, n_feature: int, n_hidden: int, n_output: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(n_feature, n_hidden)
        self.predict = nn.Linear(n_hidden, n_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(torch.relu(self.hidden(x)))


@dataclass(frozen=True)
class Config:
    n_points: int = 200
    batch_size: int = 16  # 13 batches per epoch, the last one of 8
    epochs: int = 30
    hidden: int = 20
    lr: float = 0.02
    save_every: int = 25  # steps
    keep_last: int = 3

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.n_points // self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.batches_per_epoch


def deterministic() -> None:
    """What a bitwise-exact resume needs from the user (see README, "Exactness")."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def make_data(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeds' data: 200 points of y = x^2 + 0.2 * uniform noise, the same in every process."""
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-1, 1, cfg.n_points).unsqueeze(1)
    y = x.pow(2) + 0.2 * torch.rand(x.size(), generator=g)
    return x, y


@dataclass
class Run:
    net: Net
    opt: torch.optim.Optimizer
    sched: Any
    loader: Any
    history: dict[str, Any]
    state: Any


def build(cfg: Config) -> Run:
    import torchkeep as tk

    x, y = make_data(cfg)
    torch.manual_seed(1)
    net = Net(1, cfg.hidden, 1)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.total_steps)
    loader = tk.ResumableLoader(torch.utils.data.TensorDataset(x, y), batch_size=cfg.batch_size, shuffle=True, seed=2)
    history: dict[str, Any] = {"losses": []}
    state = tk.TrainState(model=net, opt=opt, sched=sched, loader=loader, history=history)
    return Run(net, opt, sched, loader, history, state)


def checkpointer(run_dir: str, cfg: Config) -> Any:
    from ..manager import Checkpointer

    return Checkpointer(run_dir, keep_last=cfg.keep_last)


def train(
    run_dir: str,
    cfg: Config,
    *,
    on_step: Callable[[int, float], None] | None = None,
    on_save: Callable[[int], None] | None = None,
) -> tuple[Run, int]:
    """Train to ``cfg.total_steps``, resuming from the newest checkpoint in ``run_dir``.

    Returns the run and the step it started from (0 for a fresh run).
    """
    run = build(cfg)
    with checkpointer(run_dir, cfg) as ckpt:
        start = ckpt.restore(run.state) or 0
        step = start
        while step < cfg.total_steps:
            for xb, yb in run.loader:  # after a restore: the interrupted epoch's next batch
                loss = nn.functional.mse_loss(run.net(xb), yb)
                run.opt.zero_grad()
                loss.backward()
                run.opt.step()
                run.sched.step()
                step += 1
                run.history["losses"].append(loss.item())
                if step % cfg.save_every == 0:
                    ckpt.save(run.state, step, metrics={"loss": loss.item()})
                    if on_save:
                        on_save(step)
                if on_step:
                    on_step(step, loss.item())
    return run, start


def _child(argv: list[str]) -> int:
    run_dir = argv[0]
    deterministic()

    def on_save(step: int) -> None:
        print(f"saved {step}", flush=True)

    def on_step(step: int, loss: float) -> None:
        print(f"step {step} {loss!r}", flush=True)
        if not sys.stdin.readline():  # the parent closed the pipe: stop quietly
            raise SystemExit(3)

    train(run_dir, Config(), on_step=on_step, on_save=on_save)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(_child(sys.argv[1:]))
