"""inspect of a Checkpointer step written through DCP (one in-process gloo rank): the DCP
tensors are listed with their global shapes, and their places in the structure are not
shown as None values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchkeep as tk

dist = pytest.importorskip("torch.distributed")


@pytest.fixture
def one_rank():  # noqa: ANN201
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_inspect_dcp_step_lists_tensors_not_none_values(tmp_path, one_rank):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    state = tk.TrainState(model=model, opt=opt, progress={"epoch": 7})
    with tk.Checkpointer(tmp_path / "run") as ck:
        ck.save(state, step=5)
    info = tk.inspect(tmp_path / "run" / "step_00000005")
    shapes = {t.name: t.shape for t in info.tensors}
    assert shapes["model.0.weight"] == (8, 4) and shapes["model.2.bias"] == (2,)
    assert shapes["opt.state.model.0.weight.exp_avg"] == (8, 4)
    assert not [k for k, v in info.values.items() if v is None and k in shapes], "tensor places shown as None values"
    assert info.values["progress.epoch"] == 7 and info.values["opt.type"] == "torch.optim.adamw.AdamW"
    assert info.metadata["dcp_world_size"] == 1
