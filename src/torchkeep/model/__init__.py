"""Whole-model packaging: the architecture as data (class paths + constructor calls) and the
weights in one safetensors file; no pickle. See ``_spec`` for the format."""

from __future__ import annotations

from ._api import load_model, save_model
from ._capture import keep_args
from ._export import load_exported

__all__ = ["save_model", "load_model", "load_exported", "keep_args"]
