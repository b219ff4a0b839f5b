"""Checksums of a step: computed while writing, checked while reading (one pass each).

Writing: :class:`Hasher` is the ``hook`` given to the safetensors writer; it sees every
tensor's bytes in file order and keeps a running XXH3-64 of the data region plus one per
tensor. The header (small) is read back and hashed after the write.

Reading: :func:`read_verified` loads the state file and checks sizes, the header hash and
every tensor's hash on the loaded bytes, so a restore reads the data once.
:func:`verify_step` checks a step without building tensors (used by ``torchkeep verify``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import xxhash

from .._io.fastio import tensor_bytes
from .._io.fs import Location
from ..errors import CorruptCheckpointError, FormatError
from ..formats import safetensors
from ..formats._base import MapLocation, finish_tensor, resolve_device
from ._layout import MANIFEST, FileEntry, Manifest

__all__ = ["Hasher", "read_manifest", "read_verified", "verify_step", "StepCheck"]

_CHUNK = 8 << 20
_REMOTE_CHUNK = 64 << 20  # URLs: each read is cut into parallel ranged requests


class Hasher:
    """Hook for ``safetensors.write``: running data hash and per-tensor hashes."""

    def __init__(self) -> None:
        self.data = xxhash.xxh3_64()
        self.tensors: dict[str, str] = {}
        self.nbytes = 0

    def __call__(self, name: str, mv: memoryview) -> None:
        self.data.update(mv)
        self.tensors[name] = xxhash.xxh3_64_hexdigest(mv)
        self.nbytes += len(mv)

    def entry(self, head: bytes, size: int) -> FileEntry:
        return FileEntry(size, xxhash.xxh3_64_hexdigest(head), self.data.hexdigest(), len(head), dict(self.tensors))


def read_manifest(step_dir: Location, raw: bytes | None = None) -> Manifest:
    loc = step_dir.join(MANIFEST)
    if raw is None:
        try:
            raw = loc.read_bytes()
        except FileNotFoundError:
            raise CorruptCheckpointError(
                f"{step_dir}: no {MANIFEST}; the save never completed (interrupted). It is ignored by restore; delete it."
            ) from None
    return Manifest.from_bytes(raw, str(loc))


def _size_problem(loc: Location, entry: FileEntry) -> str | None:
    try:
        size = loc.size()
    except FileNotFoundError:
        return f"{loc}: missing (the manifest lists it)"
    if size != entry.size:
        kind = "truncated" if size < entry.size else "has extra bytes"
        return f"{loc}: {kind}: {size:,} bytes, the manifest says {entry.size:,}"
    if not 8 <= entry.data_offset <= size:  # checked before it sizes a read
        return f"{loc}: the manifest's data offset {entry.data_offset:,} is outside the file's {size:,} bytes"
    return None


def read_verified(
    step_dir: Location,
    *,
    map_location: MapLocation = "cpu",
    dtype: torch.dtype | None = None,
    manifest: Manifest | None = None,
) -> tuple[Manifest, Any]:
    """The step's state tree, every byte checked against the manifest; raises CorruptCheckpointError."""
    man = manifest or read_manifest(step_dir)
    entry = man.files[man.state_file]
    loc = step_dir.join(man.state_file)
    prob = _size_problem(loc, entry)
    if prob:
        raise CorruptCheckpointError(f"{prob}. The checkpoint is damaged; restore an older step.")
    device = resolve_device(map_location, "cpu", path=str(loc))
    with loc.open_source() as src:
        head = src.pread(0, entry.data_offset)
        if xxhash.xxh3_64_hexdigest(head) != entry.header_xxh3:
            raise CorruptCheckpointError(f"{loc}: header checksum mismatch (xxh3); the file is damaged. Restore an older step.")
        try:
            header = safetensors.read_header(src)
        except FormatError as e:
            raise CorruptCheckpointError(f"{loc}: {e}") from None
        if header.data_start != entry.data_offset:
            raise CorruptCheckpointError(f"{loc}: data starts at {header.data_start}, the manifest says {entry.data_offset}; damaged.")
        raw = safetensors.read_tensors(src, header, map_location="cpu", dtype=None)
    _check_tensors(loc, header, raw, entry)
    tensors = {k: finish_tensor(v, device, dtype) for k, v in raw.items()}
    tree = safetensors.decode_tree(header, tensors)
    from . import _dcp_step  # a step written by DCP under a process group: assemble its shards

    rec = _dcp_step.dcp_table(header.metadata, str(loc))
    if rec is not None:
        tree = _dcp_step.consolidate(step_dir, man, rec, tree, map_location=map_location, dtype=dtype)
    return man, tree


def _check_tensors(loc: Location, header: safetensors.Header, tensors: dict[str, torch.Tensor], entry: FileEntry) -> None:
    data = xxhash.xxh3_64()
    bad: list[str] = []
    for e in sorted(header.entries.values(), key=lambda e: (e.begin, e.end)):
        mv = tensor_bytes(tensors[e.name])
        data.update(mv)
        want = entry.tensors.get(e.name)
        if want is not None and xxhash.xxh3_64_hexdigest(mv) != want:
            bad.append(e.name)
    missing = sorted(set(entry.tensors) - set(header.entries))
    unlisted = sorted(set(header.entries) - set(entry.tensors))
    if bad or missing or data.hexdigest() != entry.data_xxh3:
        what = []
        if bad:
            what.append(f"checksum mismatch in tensor(s) {', '.join(map(repr, bad[:10]))}" + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))
        if missing:
            what.append(f"tensor(s) missing: {', '.join(map(repr, missing[:10]))}")
        if not what:
            what.append("data checksum mismatch" + (f" (tensors without a recorded checksum: {unlisted[:10]})" if unlisted else
                        " although every tensor's own checksum matches (the bytes changed while the checkpoint was written)"))
        raise CorruptCheckpointError(f"{loc}: {'; '.join(what)}. The file is damaged; restore an older step.")


@dataclass
class StepCheck:
    """Result of verifying one step folder: ``problems`` is empty when it verifies."""

    path: str
    manifest: Manifest | None
    problems: list[str] = field(default_factory=list)
    damaged_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_step(step_dir: Location, *, full: bool = True, load: bool = False) -> StepCheck:
    """Check a step: manifest, files present with their sizes, and (``full``) every checksum.

    ``load=True`` also decodes the tree (structure check) after the checksums pass.
    """
    try:
        man = read_manifest(step_dir)
    except CorruptCheckpointError as e:
        return StepCheck(str(step_dir), None, [str(e)], [str(step_dir.join(MANIFEST))])
    check = StepCheck(str(step_dir), man)
    for name, entry in man.files.items():
        loc = step_dir.join(name)
        prob = _size_problem(loc, entry)
        if prob is None and full:
            prob = _hash_file(loc, entry)
        if prob:
            check.problems.append(prob)
            check.damaged_files.append(str(loc))
    if check.ok and load:
        try:
            read_verified(step_dir, manifest=man)
        except (FormatError, OSError) as e:
            check.problems.append(str(e))
            check.damaged_files.append(str(step_dir.join(man.state_file)))
    return check


def _hash_file(loc: Location, entry: FileEntry) -> str | None:
    with loc.open_source() as src:
        head = src.pread(0, entry.data_offset)
        if xxhash.xxh3_64_hexdigest(head) != entry.header_xxh3:
            return f"{loc}: header checksum mismatch (xxh3); the file is damaged"
        h = xxhash.xxh3_64()
        pos = entry.data_offset
        buf = bytearray(min(_CHUNK if loc.is_local else _REMOTE_CHUNK, max(entry.size - pos, 1)))
        mv = memoryview(buf)
        while pos < entry.size:
            n = src.readinto(pos, mv[: min(len(buf), entry.size - pos)])
            if n <= 0:
                return f"{loc}: short read at byte {pos:,}; truncated"
            h.update(mv[:n])
            pos += n
        if h.hexdigest() == entry.data_xxh3:
            return None
        bad = _bad_tensors(src, entry)
    names = f" in tensor(s) {', '.join(map(repr, bad[:10]))}" if bad else ""
    return f"{loc}: data checksum mismatch (xxh3){names}; the file is damaged"


def _bad_tensors(src: Any, entry: FileEntry) -> list[str]:
    try:
        header = safetensors.read_header(src)
    except FormatError:
        return []
    bad = []
    for e in header.entries.values():
        want = entry.tensors.get(e.name)
        if want is None:
            continue
        raw = src.pread(header.data_start + e.begin, e.end - e.begin)
        if xxhash.xxh3_64_hexdigest(raw) != want:
            bad.append(e.name)
    return bad
