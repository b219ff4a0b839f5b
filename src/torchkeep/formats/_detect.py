"""Which format a path holds, decided from its bytes (never its suffix)."""

from __future__ import annotations

import re
import struct
import zipfile

from .._io.fs import ByteSource, Location
from ..errors import CorruptCheckpointError, FormatError
from . import safetensors

__all__ = ["detect", "INDEX_NAMES", "Format"]

Format = str  # one of the names below

SAFETENSORS = "safetensors"
TORCH_ZIP = "torch-zip"
TORCHSCRIPT = "torchscript"
TORCH_LEGACY = "torch-legacy"
PICKLE = "pickle"
HF_SHARDED = "hf-sharded"
DCP = "dcp"
TORCHKEEP_STEP = "torchkeep-step"

# Hugging Face index files, in order of preference when a folder holds several.
INDEX_NAMES = (
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
# single-file weights inside a folder, in order of preference
SINGLE_NAMES = ("model.safetensors", "pytorch_model.bin", "state.safetensors")

_RUN_STEP = re.compile(r"^step_\d{8,}$")  # a Checkpointer step folder (manager/_layout.py)
_DCP_HF_SHARD = re.compile(r"^shard-\d{5}-model-\d{5}-of-\d{5}\.safetensors$")
_PICKLE_PROTOS = {b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def detect_dir(loc: Location) -> Format:
    names = set(loc.listdir())
    if "manifest.json" in names:
        return TORCHKEEP_STEP
    if ".metadata" in names:
        return DCP
    if any(n.endswith(".index.json") for n in names):
        return HF_SHARDED
    if any(_DCP_HF_SHARD.match(n) for n in names):  # DCP's Hugging Face layout, written per rank
        return DCP
    if any(n in names for n in SINGLE_NAMES) or any(n.endswith(".safetensors") for n in names):
        return HF_SHARDED
    steps = sorted((n for n in names if _RUN_STEP.match(n)), reverse=True)
    if steps:
        done = [n for n in steps if loc.join(n, "manifest.json").exists()]
        newest = loc.join(done[0] if done else steps[0])
        raise FormatError(
            f"{loc}: a Checkpointer run directory ({len(steps)} step folder(s)), not one checkpoint. Load a step: "
            f"tk.load({str(newest)!r}); list them: torchkeep ls {loc}; or resume: tk.Checkpointer({str(loc)!r}).restore(state)."
        )
    raise FormatError(
        f"{loc}: folder holds no checkpoint torchkeep knows (no *.index.json, *.safetensors, "
        f"manifest.json or DCP .metadata). Point at the checkpoint file itself."
    )


def _zip_kind(src: ByteSource) -> Format:
    try:
        with src.fileobj() as f, zipfile.ZipFile(f) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError, struct.error) as e:
        raise CorruptCheckpointError(f"{src.loc}: looks like a zip archive but cannot be opened ({e}); truncated or damaged.") from None
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return TORCHSCRIPT
    if any(n.endswith("data.pkl") for n in names):
        return TORCH_ZIP
    raise FormatError(f"{src.loc}: a zip archive without data.pkl is not a torch checkpoint.")


def detect_bytes(src: ByteSource) -> Format:
    size = src.size
    if size == 0:
        raise CorruptCheckpointError(f"{src.loc}: file is empty (0 bytes); an interrupted save or download? Re-create it.")
    head = src.pread(0, 64)
    if safetensors.sniff(head, size):
        return SAFETENSORS
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return _zip_kind(src)
    if head[:2] in _PICKLE_PROTOS:
        # legacy torch files start with a pickled magic number (a long)
        if head[2:3] == b"\x8a" and len(head) > 3:
            n = head[3]
            if 4 + n <= len(head) and int.from_bytes(head[4 : 4 + n], "little", signed=True) == _LEGACY_MAGIC:
                return TORCH_LEGACY
        return PICKLE
    if len(head) >= 8:
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and n > size - 8:
            raise CorruptCheckpointError(
                f"{src.loc}: safetensors header claims {n:,} bytes but the file has {size:,}; truncated."
            )
    if head[:1] in (b"{", b"[") or head.strip()[:1] in (b"{",):
        raise FormatError(f"{src.loc}: this is a JSON/text file, not a checkpoint. For a sharded folder, pass the folder.")
    try:
        decoded = head.decode("utf-8")
        text = all(c.isprintable() or c in "\t\r\n" for c in decoded)
    except UnicodeDecodeError:
        text = False
    kind = "a text file" if text else "an unknown binary format"
    raise FormatError(
        f"{src.loc}: {kind}, not a checkpoint torchkeep can read (supported: safetensors, torch "
        f".pt/.pth/.bin zip and legacy files, pickle, TorchScript, Hugging Face sharded folders)."
    )


def detect(loc: Location) -> Format:
    loc.require()
    if loc.isdir():
        return detect_dir(loc)
    if loc.name.endswith(".index.json"):
        return HF_SHARDED
    with loc.open_source() as src:
        return detect_bytes(src)
