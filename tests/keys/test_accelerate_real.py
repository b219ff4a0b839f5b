"""A real Accelerate training state (Accelerator.save_state): every file in the folder
inspects and loads safely, and load_into takes the weights from the folder."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import torchkeep as tk

accelerate = pytest.importorskip("accelerate")


def test_accelerate_save_state_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    acc = accelerate.Accelerator(cpu=True)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    model, opt, sched = acc.prepare(model, opt, sched)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    acc.save_state("state")
    rng_at_save = torch.get_rng_state()
    assert sorted(os.listdir("state")) == ["model.safetensors", "optimizer.bin", "random_states_0.pkl", "scheduler.bin"]

    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    report = tk.load_into(plain, "state")  # the folder: its model.safetensors
    assert sorted(report.loaded) == sorted(plain.state_dict())
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in acc.unwrap_model(model).state_dict().items())

    optim = tk.load("state/optimizer.bin")  # torch zip, read by the restricted unpickler
    assert torch.equal(optim["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    rng = tk.load("state/random_states_0.pkl")
    assert torch.equal(rng["torch_manual_seed"], rng_at_save)
    assert tk.load("state/scheduler.bin")["last_epoch"] == 1
