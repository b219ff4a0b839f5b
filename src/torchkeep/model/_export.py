"""``save_model(export=True)`` and :func:`load_exported`: a ``torch.export`` program beside the
weights, loadable with none of the model's Python code.

Storage: ``torch.export.save`` bytes in a sidecar file ``<path>.pt2`` (a standard PT2
archive; ``torch.export.load`` reads it too). The safetensors file stays a plain weights
file for every other reader; its header (``torchkeep.export``) records the sidecar's name,
size and SHA-256 so a stale or swapped sidecar is refused.

Safety: ``torch.export.load`` falls back to full pickle for some entries (tensor subclasses,
script/opaque objects, legacy weight files, sample inputs that the restricted loader rejects).
:func:`load_exported` scans the archive first and refuses any of those, so loading never
runs code from the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from typing import Any

import torch
from torch import nn

from .._io import jsonio
from .._io.fs import Location, atomic_write, resolve
from ..errors import ArchitectureError, CorruptCheckpointError, UnsafePickleError
from ..formats import safetensors as st

__all__ = ["EXPORT_KEY", "export_bytes", "sidecar", "write_sidecar", "load_exported"]

EXPORT_KEY = "torchkeep.export"
SUFFIX = ".pt2"


def sidecar(loc: Location) -> Location:
    return loc.parent.join(loc.name + SUFFIX)


def export_bytes(model: nn.Module, example_inputs: Any) -> bytes:
    """Trace ``model`` in eval mode with ``torch.export.export`` and serialize the program."""
    if example_inputs is None:
        raise ArchitectureError(
            "save_model(export=True) needs example_inputs: the inputs to trace with, e.g. "
            "example_inputs=(torch.randn(1, 3, 32, 32),)."
        )
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        program = torch.export.export(model, args)
    except Exception as e:
        raise ArchitectureError(
            f"torch.export could not trace {type(model).__qualname__}: {type(e).__name__}: {str(e)[:500]}. "
            f"Save without export=True (load_model still works), or make forward() exportable "
            f"(no data-dependent Python control flow)."
        ) from e
    finally:
        for m, t in modes.items():
            m.training = t
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def write_sidecar(loc: Location, blob: bytes) -> dict[str, Any]:
    with atomic_write(loc) as f:
        f.write(blob)
    return {"file": loc.name, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def _check_archive(blob: bytes, where: str) -> None:
    """Refuse every archive entry that torch.export.load would unpickle without restriction."""
    try:
        z = zipfile.ZipFile(io.BytesIO(blob))
    except zipfile.BadZipFile:
        raise CorruptCheckpointError(f"{where}: not a PT2 archive (zip); the file is damaged.") from None
    problems: list[str] = []
    names = z.namelist()
    if not any(n.endswith("/archive_format") for n in names):
        problems.append("old-format archive (loaded through pickle)")
    for n in names:
        inner = n.split("/", 1)[-1]
        if inner.startswith(("data/weights/", "data/constants/")) and inner.endswith(".pt"):
            problems.append(f"{n}: legacy pickled weights")
        elif inner.endswith(("_weights_config.json", "_constants_config.json")):
            try:
                config = jsonio.loads(z.read(n), what=n, path=where).get("config", {})
            except (CorruptCheckpointError, zipfile.BadZipFile, OSError, ValueError):
                problems.append(f"{n}: unreadable config")
                continue
            if not isinstance(config, dict) or not all(isinstance(m, dict) for m in config.values()):
                problems.append(f"{n}: malformed config")
                continue
            for fqn, meta in config.items():
                path_name = str(meta.get("path_name", ""))
                if meta.get("use_pickle") or path_name.startswith(("custom_obj_", "opaque_obj_")):
                    problems.append(f"{fqn}: pickled object")
        elif inner.startswith("data/sample_inputs/"):
            data = z.read(n)
            if data:
                try:
                    torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
                except Exception:  # noqa: BLE001 - anything the restricted loader refuses
                    problems.append(f"{n}: sample inputs need full pickle")
    if problems:
        raise UnsafePickleError(
            f"{where}: the exported program contains entries that torch.export.load would unpickle "
            f"(could run code): {'; '.join(problems[:10])}. Refused. Load the model with "
            f"torchkeep.load_model instead, or call torch.export.load yourself if you trust the file."
        )


def load_exported(path: str | os.PathLike[str]) -> nn.Module:
    """The ``torch.export`` program saved by ``save_model(path, export=True)``, as a callable
    module (``ExportedProgram.module()``). Needs none of the model's Python code.

    It computes what the model computed in eval mode for inputs like the example inputs
    (same ranks and dtypes; shapes are static as traced). It is an inference graph:
    ``.train()`` does not turn dropout back on. The program's own weights (in the sidecar)
    are used.
    """
    loc = resolve(path).require("model file")
    with loc.open_source() as src:
        header = st.read_header(src)
    raw = header.metadata.get(EXPORT_KEY)
    if raw is None:
        raise ArchitectureError(
            f"{loc}: no exported program was saved with this model. Re-save it with "
            f"torchkeep.save_model(model, path, export=True, example_inputs=(...)), or load it "
            f"with torchkeep.load_model."
        )
    info = jsonio.loads(raw, what="the export record", path=loc, fix="the file is damaged; save the model again with export=True")
    try:
        side = loc.parent.join(str(info["file"]))
        want = str(info["sha256"])
    except (ValueError, KeyError, TypeError):
        raise CorruptCheckpointError(f"{loc}: the export record in the header is damaged.") from None
    if "/" in str(info["file"]) or os.sep in str(info["file"]):
        raise CorruptCheckpointError(f"{loc}: the export record names a file outside the model's folder.")
    side.require("exported program (saved next to the model file)")
    blob = side.read_bytes()
    if hashlib.sha256(blob).hexdigest() != want:
        raise CorruptCheckpointError(
            f"{side}: does not match {loc} (SHA-256 differs): it is damaged or from another save. "
            f"Re-save the model with export=True."
        )
    _check_archive(blob, str(side))
    program = torch.export.load(io.BytesIO(blob))
    return program.module()
