"""The filesystem operations a Checkpointer performs, as one small injectable object.

Every write, fsync, rename and delete of a save goes through a :class:`Storage` method, so a
test (or a fault-injection harness) can subclass it and fail any call site with ``ENOSPC`` or
``EIO``. Local directories use ``os`` (atomic directory rename); fsspec URLs use
:class:`ObjectStorage`, which has no rename: a step is written in place and its manifest,
uploaded last, is the commit marker.

Order of calls for one save (local)::

    makedirs(tmp) -> write_state(tmp/state.safetensors) -> read_head(...) ->
    write_file(tmp/manifest.json) -> fsync_dir(tmp) -> [rename(final, .del-)] ->
    rename(tmp, final) -> fsync_dir(run) -> [remove_tree(.del-)]
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from .._io.fs import Location, atomic_write, fsync_dir
from ..formats import safetensors
from ._layout import MANIFEST

__all__ = ["Storage", "ObjectStorage", "storage_for"]

Hook = Callable[[str, memoryview], None]


class Storage:
    """Local-disk operations (POSIX semantics: atomic rename, directory fsync)."""

    supports_rename = True

    # -- reads ------------------------------------------------------------------------
    def listdir(self, loc: Location) -> list[str]:
        try:
            return loc.listdir()
        except FileNotFoundError:
            return []

    def exists(self, loc: Location) -> bool:
        return loc.exists()

    def read_bytes(self, loc: Location) -> bytes:
        return loc.read_bytes()

    def read_head(self, loc: Location, n: int) -> bytes:
        with loc.open_source() as src:
            return src.pread(0, n)

    # -- writes -----------------------------------------------------------------------
    def makedirs(self, loc: Location) -> None:
        loc.makedirs()

    def write_state(self, loc: Location, tree: Any, hook: Hook) -> int:
        """Write the state tree as safetensors (fsynced); returns the file size."""
        return safetensors.write_tree(loc, tree, None, fsync=True, hook=hook)

    def write_file(self, loc: Location, data: bytes) -> None:
        """Write small bytes durably (temp file, fsync, rename)."""
        with atomic_write(loc, fsync=True) as f:
            f.write(data)

    def fsync_dir(self, loc: Location) -> None:
        fsync_dir(loc.path)

    def rename(self, src: Location, dst: Location) -> None:
        os.rename(src.path, dst.path)

    def remove_tree(self, loc: Location) -> None:
        """Delete a step folder: the manifest first (un-commit), then the rest."""
        try:
            os.unlink(os.path.join(loc.path, MANIFEST))
        except FileNotFoundError:
            pass
        shutil.rmtree(loc.path, ignore_errors=False)


class ObjectStorage(Storage):
    """fsspec filesystems (object stores, ``memory://``): no rename, commit by marker."""

    supports_rename = False

    def listdir(self, loc: Location) -> list[str]:
        # fsspec caches listings (names and sizes) per filesystem instance; another process
        # may have written, replaced or deleted steps since, so a run directory and every
        # listing below it are read afresh.
        fs = loc.fs
        prefix = loc.path.rstrip("/")
        fs.invalidate_cache(prefix)
        cache = getattr(fs, "dircache", None)
        if cache is not None:
            for key in [k for k in list(cache) if str(k).startswith(prefix + "/")]:
                cache.pop(key, None)
        return super().listdir(loc)

    def fsync_dir(self, loc: Location) -> None:
        return None

    def rename(self, src: Location, dst: Location) -> None:  # pragma: no cover - never called
        raise OSError(f"{src}: object stores have no atomic rename; torchkeep commits by marker there")

    def remove_tree(self, loc: Location) -> None:
        man = loc.join(MANIFEST)
        if loc.fs.exists(man.path):
            loc.fs.rm(man.path)
        if loc.fs.exists(loc.path):
            loc.fs.rm(loc.path, recursive=True)


def storage_for(loc: Location) -> Storage:
    return Storage() if loc.is_local else ObjectStorage()
