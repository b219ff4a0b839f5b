"""A small Stateful used by the manager tests and the kill-trial child process."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Toy:
    """A module plus a dict of plain values: the smallest realistic training state."""

    def __init__(self, width: int = 16, big: int = 0) -> None:
        torch.manual_seed(0)
        layers: list[nn.Module] = [nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 4)]
        self.model = nn.Sequential(*layers)
        self.buf = torch.zeros(big) if big else None  # extra bytes to make saves take time
        self.extra: dict[str, Any] = {"epoch": 0, "lr": 0.1, "tags": ["a", "b"]}

    def state_dict(self) -> dict[str, Any]:
        sd: dict[str, Any] = {"model": self.model.state_dict(), "extra": dict(self.extra)}
        if self.buf is not None:
            sd["buf"] = self.buf
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        if self.buf is not None:
            self.buf.copy_(sd["buf"])
        self.extra = dict(sd["extra"])

    def fill(self, step: int) -> "Toy":
        """Deterministic content for ``step``: every value is a function of the step."""
        g = torch.Generator().manual_seed(step)
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            if self.buf is not None:
                self.buf.fill_(float(step))
        self.extra = {"epoch": step, "lr": 0.1 / (1 + step), "tags": ["a", str(step)]}
        return self

    def matches(self, step: int) -> bool:
        ref = Toy(width=self.model[0].out_features, big=0 if self.buf is None else self.buf.numel()).fill(step)
        same = all(torch.equal(a, b) for a, b in zip(self.model.state_dict().values(), ref.model.state_dict().values()))
        if self.buf is not None:
            same = same and bool((self.buf == float(step)).all())
        return same and self.extra == ref.extra
