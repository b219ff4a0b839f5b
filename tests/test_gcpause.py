"""The public calls pause the cyclic collector while they run and always switch it back."""

from __future__ import annotations

import gc

import pytest
import torch

import torchkeep as tk


def test_collector_paused_during_the_call_and_restored_after(tmp_path, monkeypatch):
    seen = []
    real = tk.formats.safetensors.write_tree

    def spy(*a, **k):  # noqa: ANN002, ANN003, ANN202
        seen.append(gc.isenabled())
        return real(*a, **k)

    monkeypatch.setattr(tk.formats.safetensors, "write_tree", spy)
    assert gc.isenabled()
    tk.save({"w": torch.ones(3)}, tmp_path / "a.safetensors")
    assert seen == [False] and gc.isenabled()


def test_collector_restored_when_the_call_raises(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(tk.TorchkeepError):
        tk.load(tmp_path / "bad.safetensors")
    assert gc.isenabled()
    with pytest.raises(tk.TorchkeepError):
        tk.load_into(torch.nn.Linear(2, 2), tmp_path / "bad.safetensors")
    assert gc.isenabled()


def test_a_caller_that_disabled_the_collector_keeps_it_disabled(tmp_path):
    gc.disable()
    try:
        tk.save({"w": torch.ones(3)}, tmp_path / "a.safetensors")
        tk.load(tmp_path / "a.safetensors")
        assert not gc.isenabled()
    finally:
        gc.enable()
