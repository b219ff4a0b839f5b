"""User model classes live in real module files under tmp_path (importable by path, movable)."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

MODELS = '''
import dataclasses
import enum

import torch
from torch import nn
import torchkeep as tk


class Act(enum.Enum):
    RELU = "relu"
    GELU = "gelu"


@dataclasses.dataclass
class BlockConfig:
    width: int
    act: Act = Act.RELU
    dropout: float = 0.1


class LeNet(nn.Module):
    """Auto-captured: its only constructor parameter is an attribute of the same name."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@tk.keep_args
class Block(nn.Module):
    def __init__(self, cfg: BlockConfig, *, norm: bool = True):
        super().__init__()
        self.lin = nn.Linear(cfg.width, cfg.width)
        self.norm = nn.BatchNorm1d(cfg.width) if norm else nn.Identity()
        self.act = nn.GELU() if cfg.act is Act.GELU else nn.ReLU()
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.act(self.norm(self.lin(x))))


@tk.keep_args
class Nested(nn.Module):
    """Nested submodules, keyword arguments, a dataclass, an enum and a module argument."""

    def __init__(self, stem, width, depth=2, *, act=Act.GELU, head_bias=True, sizes=(3, 4)):
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*[Block(BlockConfig(width, act), norm=i % 2 == 0) for i in range(depth)])
        self.head = nn.Linear(width, sizes[0] * sizes[1], bias=head_bias)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class Lists(nn.Module):
    """Auto-captured: ModuleList and ModuleDict children."""

    def __init__(self, dims, heads):
        super().__init__()
        self.dims = dims
        self.heads = heads
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims, dims[1:])])
        self.out = nn.ModuleDict({name: nn.Linear(dims[-1], n) for name, n in heads.items()})

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return {name: head(x) for name, head in self.out.items()}


@tk.keep_args
class Tagger(nn.Module):
    def __init__(self, vocab, dim, hidden, tags):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, num_layers=2, batch_first=True, bidirectional=True, dropout=0.2)
        self.out = nn.Linear(2 * hidden, tags)

    def forward(self, tokens):
        h, _ = self.lstm(self.embed(tokens))
        return self.out(h)


@tk.keep_args
class TiedLM(nn.Module):
    def __init__(self, vocab, dim):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.decoder = nn.Linear(dim, vocab, bias=False)
        self.decoder.weight = self.embed.weight

    def forward(self, tokens):
        return self.decoder(self.embed(tokens))


class Opaque(nn.Module):
    """Not capturable: the constructor parameter is not kept."""

    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, 2)


class Liar(nn.Module):
    """An attribute named like the parameter holds a changed value: caught at save."""

    def __init__(self, hidden):
        super().__init__()
        self.lin = nn.Linear(4, hidden)
        self.hidden = hidden * 2

    def forward(self, x):
        return self.lin(x)


@tk.keep_args
class HoldsOpaque(nn.Module):
    """Its constructor makes the uncapturable child, so the child needs no capture."""

    def __init__(self, width):
        super().__init__()
        self.inner = Opaque(width)

    def forward(self, x):
        return self.inner.lin(x)
'''


def write_module(directory: Path, name: str, source: str) -> ModuleType:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    importlib.invalidate_caches()
    return importlib.import_module(name)


def forget_module(name: str, directory: Path) -> None:
    """Make a module unimportable: remove its file and every trace of it."""
    (directory / f"{name}.py").unlink(missing_ok=True)
    sys.modules.pop(name, None)
    importlib.invalidate_caches()


@pytest.fixture
def forget(tmp_path: Path) -> Callable[[str], None]:
    return lambda name: forget_module(name, tmp_path)


@pytest.fixture
def usermod(tmp_path: Path) -> Iterator[ModuleType]:
    """A fresh, uniquely named module with the user model classes above."""
    name = f"tk_user_models_{uuid.uuid4().hex[:8]}"
    mod = write_module(tmp_path, name, MODELS)
    yield mod
    sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


@pytest.fixture
def make_module(tmp_path: Path) -> Iterator[Callable[[str, str], ModuleType]]:
    made: list[str] = []

    def make(name: str, source: str) -> ModuleType:
        made.append(name)
        return write_module(tmp_path, name, source)

    yield make
    for name in made:
        sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))
