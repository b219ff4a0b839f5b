"""Small models for the keys tests."""

from __future__ import annotations

import torch
from torch import nn
from _helpers import tensor_bytes


class Net(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(tensor_bytes(a), tensor_bytes(b))


def assert_same(model: nn.Module, expected: dict[str, torch.Tensor], keys: list[str] | None = None) -> None:
    sd = model.state_dict()
    for k in keys if keys is not None else list(expected):
        assert bit_equal(sd[k], expected[k]), k


def perturbed(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict of the model's shape with different values (so a load is visible)."""
    out = {}
    for k, v in model.state_dict().items():
        out[k] = (v + torch.randn_like(v.float()).to(v.dtype) + 1) if v.is_floating_point() else v + 7
    return out
