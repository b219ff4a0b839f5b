"""torchkeep demo [--out DIR]: the whole story end to end on a small model, on CPU."""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch

from ._common import console


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole story end to end on a small model")
    p.add_argument("--out", default="torchkeep-demo", help="folder to write into (default ./torchkeep-demo)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torchkeep as tk

    c = console()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 200).unsqueeze(1)
    y = x.pow(2) + 0.2 * torch.rand(x.size())
    net = torch.nn.Sequential(torch.nn.Linear(1, 10), torch.nn.ReLU(), torch.nn.Linear(10, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(100):
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    c.print(f"[bold]1. trained[/bold] y = x^2 + noise, final loss {loss.item():.4f}")
    weights = os.path.join(out, "net_params.safetensors")
    tk.save(net, weights)
    ckpt = os.path.join(out, "checkpoint.safetensors")
    tk.save({"epoch": 100, "loss": loss.item(), "model_state_dict": net.state_dict(), "optimizer_state_dict": opt.state_dict()}, ckpt)
    c.print(f"[bold]2. saved[/bold] weights -> {weights}\n          general checkpoint -> {ckpt}")
    info = tk.inspect(ckpt)
    c.print(f"[bold]3. inspected[/bold] {info}")
    net2 = torch.nn.Sequential(torch.nn.Linear(1, 10), torch.nn.ReLU(), torch.nn.Linear(10, 1))
    net2.load_state_dict(tk.load(weights))
    same = torch.equal(net(x), net2(x))
    c.print(f"[bold]4. reloaded[/bold] into a fresh network: predictions bit-equal: {same}")
    legacy = os.path.join(out, "net_params.pt")
    tk.save(net, legacy)
    c.print(f"[bold]5. torch zip copy[/bold] {legacy} (torch.load(weights_only=True) reads it)")
    return 0 if same else 1
