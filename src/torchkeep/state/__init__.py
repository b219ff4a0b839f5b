"""Training state: the Stateful protocol, RNG, optimizer/scheduler/scaler adapters, the
resumable DataLoader and TrainState."""

from __future__ import annotations

from ._loader import ResumableLoader
from ._rng import RNGState, capture_rng, restore_rng
from ._stateful import Stateful
from ._trainstate import TrainState

__all__ = ["Stateful", "TrainState", "ResumableLoader", "RNGState", "capture_rng", "restore_rng"]
