"""torchkeep step folders (written by ``Checkpointer``): ``manifest.json`` + ``state.safetensors``.

Reading a step verifies it: sizes, the header checksum and every tensor's checksum recorded
in the manifest, in the same pass that loads the data. A damaged step raises
:class:`CorruptCheckpointError` naming the file and tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from .._io.fs import Location
from ..errors import CorruptCheckpointError, FormatError
from . import safetensors
from ._base import CheckpointInfo, MapLocation

__all__ = ["read", "inspect"]


def read(
    loc: Location,
    *,
    map_location: MapLocation = "cpu",
    dtype: torch.dtype | None = None,
    unsafe_pickle: bool = False,
) -> Any:
    from ..manager._verify import read_verified

    del unsafe_pickle  # nothing pickled in a step folder
    _, tree = read_verified(loc, map_location=map_location, dtype=dtype)
    return tree


def inspect(loc: Location) -> CheckpointInfo:
    from ..manager._verify import read_manifest

    man = read_manifest(loc)
    state = loc.join(man.state_file)
    try:
        with state.open_source() as src:
            header = safetensors.read_header(src)
            info = safetensors.header_info(header)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{state}: missing; the manifest lists it. The step is damaged.") from None
    except FormatError as e:
        raise CorruptCheckpointError(f"{state}: {e}") from None
    from ..manager._dcp_step import dcp_table, dcp_tensor_infos

    rec = dcp_table(header.metadata, str(state))  # a step written through DCP: its tensors live in dcp/ shards
    if rec is not None:
        info.tensors = [*info.tensors, *dcp_tensor_infos(rec)]
        # the tensors' places in the structure hold None in the state file: not values
        info.values = {k: v for k, v in info.values.items() if k not in rec["tensors"]}
        info.metadata = {**info.metadata, "dcp_world_size": rec.get("world_size")}
    info.path = str(loc)
    info.format = "torchkeep-step"
    info.file_size = man.size
    info.metadata = {
        **info.metadata,
        "step": man.step,
        "metrics": man.metrics,
        "created": man.created,
        "env": man.env,
        "files": {k: v.size for k, v in man.files.items()},
    }
    return info
