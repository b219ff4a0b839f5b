"""What every format module shares: tensor/checkpoint descriptions, dtype names, devices."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import torch

from ..errors import FormatError, TorchkeepError, UnsupportedTypeError

__all__ = [
    "TensorInfo",
    "CheckpointInfo",
    "ST_DTYPES",
    "ST_NAMES",
    "MapLocation",
    "resolve_device",
    "finish_tensor",
    "dtype_name",
]

MapLocation = Union[str, torch.device, Mapping[str, str], Callable[..., Any], None]

# safetensors dtype names <-> torch dtypes (the set both sides share).
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "C64": torch.complex64,
}
for _name, _attr in (
    ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
    ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
    ("F8_E8M0", "float8_e8m0fnu"),
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
):
    if isinstance(getattr(torch, _attr, None), torch.dtype):
        ST_DTYPES[_name] = getattr(torch, _attr)
ST_NAMES: dict[torch.dtype, str] = {v: k for k, v in ST_DTYPES.items()}


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as described by a file header, without its data."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name, e.g. "float32"
    nbytes: int
    file: str | None = None  # shard or entry holding it, when not the checkpoint itself

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "nbytes": self.nbytes}
        if self.file:
            d["file"] = self.file
        return d


@dataclass
class CheckpointInfo:
    """What ``tk.inspect`` returns: format, tensors, metadata and totals."""

    path: str
    format: str
    tensors: list[TensorInfo] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)  # non-tensor leaves by dotted path
    placeholders: list[str] = field(default_factory=list)  # "path: class.path" of inert objects
    file_size: int = 0

    @property
    def num_tensors(self) -> int:
        return len(self.tensors)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def total_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def dtypes(self) -> dict[str, int]:
        return dict(Counter(t.dtype for t in self.tensors))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "file_size": self.file_size,
            "num_tensors": self.num_tensors,
            "total_bytes": self.total_bytes,
            "total_params": self.total_params,
            "dtypes": self.dtypes,
            "metadata": self.metadata,
            "values": self.values,
            "placeholders": self.placeholders,
            "tensors": [t.to_dict() for t in self.tensors],
        }

    def __str__(self) -> str:  # rich table lives in the CLI; this is the plain summary
        return (
            f"{self.format} checkpoint {self.path}: {self.num_tensors} tensors, "
            f"{self.total_params:,} elements, {self.total_bytes:,} bytes"
        )


def resolve_device(map_location: MapLocation, saved: str, *, path: str = "") -> torch.device | None:
    """Where a tensor saved on ``saved`` goes; None means: leave it where it is built (CPU).

    Semantics follow ``torch.load``: a device or string moves everything there; a dict maps
    saved locations to new ones (others stay on the saved location, which must exist); a
    callable gets ``(storage, location)`` and returns a storage whose device is used.
    """
    if map_location is None:
        target = saved
    elif isinstance(map_location, (str, torch.device)):
        target = str(map_location)
    elif isinstance(map_location, Mapping):
        target = str(map_location.get(saved, saved))
    elif callable(map_location):
        res = map_location(torch.UntypedStorage(0), saved)
        target = "cpu" if res is None else str(getattr(res, "device", "cpu"))
    else:
        raise TypeError(f"map_location must be a str, torch.device, dict or callable, not {type(map_location).__name__}")
    try:
        dev = torch.device(target)
    except (RuntimeError, TypeError) as e:
        raise FormatError(f"{path}: bad map_location target {target!r}: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TorchkeepError(
                f"{path}: tensors saved on {saved!r} would be loaded on {dev}, but CUDA is not "
                f"available. Fix: pass map_location='cpu' (the default) or a device that exists."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TorchkeepError(
                f"{path}: map_location asks for {dev}, but only {torch.cuda.device_count()} CUDA "
                f"device(s) exist. Fix: map_location={{'{saved}': 'cuda:0'}}."
            )
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise TorchkeepError(f"{path}: map_location asks for mps, which is not available here. Fix: map_location='cpu'.")
    return dev


def finish_tensor(t: torch.Tensor, device: torch.device | None, dtype: torch.dtype | None) -> torch.Tensor:
    """Apply ``dtype=`` (floating tensors only) and move to ``device``."""
    if dtype is not None and t.is_floating_point() and t.dtype != dtype:
        t = t.to(dtype)
    if device is not None and t.device != device:
        t = t.to(device, non_blocking=device.type == "cuda" and t.is_pinned())
    return t


def check_dtype_for_safetensors(t: torch.Tensor, where: str) -> None:
    if t.dtype not in ST_NAMES:
        alt = "complex64" if t.is_complex() else "a supported dtype"
        raise UnsupportedTypeError(
            f"tensor {where!r} has dtype {dtype_name(t.dtype)}, which safetensors cannot store. "
            f"Fix: convert it to {alt} before saving, or save to a .pt file (torch zip)."
        )


def local_name(path: str) -> str:
    return os.path.basename(path.rstrip("/"))
