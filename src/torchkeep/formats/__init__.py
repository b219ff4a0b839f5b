"""One module per format: detect, read, write. This module dispatches by detected format.

Pickle-based formats (torch zip, legacy, bare pickle, TorchScript) are read by the
restricted unpickler in ``_unpickler``; nothing in a file is imported or called unless
``unsafe_pickle=True``.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from .._io.fs import Location
from ..errors import FormatError
from . import _detect
from ._base import CheckpointInfo, MapLocation, TensorInfo
from ._detect import detect
from ._lazy import LazyTensor, materialize, open_lazy, read_many_into
from . import legacy, torchzip  # noqa: E402,F401 - eager, so reading a file never imports code

__all__ = [
    "detect",
    "read_any",
    "inspect_any",
    "read_pickled_raw",
    "open_lazy",
    "LazyTensor",
    "read_many_into",
    "materialize",
    "CheckpointInfo",
    "TensorInfo",
]

# format -> (module, reader, inspector); file formats get a ByteSource, folders a Location
_FILE_READERS: dict[str, tuple[str, str, str]] = {
    _detect.SAFETENSORS: ("safetensors", "read", "inspect"),
    _detect.TORCH_ZIP: ("torchzip", "read", "inspect"),
    _detect.TORCHSCRIPT: ("torchzip", "read_torchscript", "inspect_torchscript"),
    _detect.TORCH_LEGACY: ("legacy", "read", "inspect"),
    _detect.PICKLE: ("legacy", "read_pickle", "inspect_pickle"),
}
_DIR_READERS: dict[str, tuple[str, str, str]] = {
    _detect.HF_SHARDED: ("sharded", "read", "inspect"),
    _detect.DCP: ("dcp", "read", "inspect"),
    _detect.TORCHKEEP_STEP: ("step", "read", "inspect"),
}
_PICKLED = {_detect.TORCH_ZIP, _detect.TORCHSCRIPT, _detect.TORCH_LEGACY, _detect.PICKLE}


def _handler(fmt: str, which: int, loc: Location) -> Any:
    table = _FILE_READERS if fmt in _FILE_READERS else _DIR_READERS
    mod_name, *fns = table[fmt]
    try:
        mod = importlib.import_module(f"{__name__}.{mod_name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{mod_name}":
            raise
        raise FormatError(f"{loc}: {fmt} checkpoints are not supported by this torchkeep version.") from None
    return getattr(mod, fns[which])


def read_any(
    loc: Location,
    *,
    map_location: MapLocation = "cpu",
    dtype: torch.dtype | None = None,
    unsafe_pickle: bool = False,
) -> Any:
    fmt = detect(loc)
    fn = _handler(fmt, 0, loc)
    if fmt in _DIR_READERS:
        return fn(loc, map_location=map_location, dtype=dtype, unsafe_pickle=unsafe_pickle)
    with loc.open_source() as src:
        if fmt in _PICKLED:
            return fn(src, map_location=map_location, dtype=dtype, unsafe_pickle=unsafe_pickle)
        return fn(src, map_location=map_location, dtype=dtype)


def inspect_any(loc: Location) -> CheckpointInfo:
    fmt = detect(loc)
    fn = _handler(fmt, 1, loc)
    if fmt in _DIR_READERS:
        return fn(loc)
    with loc.open_source() as src:
        return fn(src)


# format -> (module, raw reader) for files whose pickled modules a caller wants unconverted
_RAW_READERS: dict[str, tuple[str, str]] = {
    _detect.TORCH_ZIP: ("torchzip", "read_raw"),
    _detect.TORCHSCRIPT: ("torchzip", "read_raw"),
    _detect.TORCH_LEGACY: ("legacy", "read_raw"),
    _detect.PICKLE: ("legacy", "read_pickle_raw"),
}


def read_pickled_raw(loc: Location, *, map_location: MapLocation = "cpu") -> Any:
    """The unpickled tree of a pickle-based file with module placeholders NOT converted.

    Tensors are decoded; a pickled ``nn.Module`` stays a :class:`Placeholder` whose ``state``
    holds ``_parameters`` / ``_buffers`` / ``_modules`` (for rebuilding models from old
    whole-model pickles). Same restricted unpickler: nothing is imported or run.
    """
    fmt = detect(loc)
    if fmt not in _RAW_READERS:
        raise FormatError(f"{loc}: is a {fmt} checkpoint, not a pickle-based one (torch .pt/.pth/.bin, legacy, .pkl, TorchScript).")
    mod_name, fn = _RAW_READERS[fmt]
    mod = importlib.import_module(f"{__name__}.{mod_name}")
    with loc.open_source() as src:
        return getattr(mod, fn)(src, map_location=map_location)
