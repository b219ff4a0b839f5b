"""Checkpointer save/restore under an initialized process group, through torch.distributed.checkpoint.

A step written at world size N (local or shared filesystem)::

    step_00000100/
      dcp/shard-00001-model-00001-of-00001.safetensors   rank 0's chunks  } DCP's Hugging Face
      dcp/shard-00002-model-00001-of-00001.safetensors   rank 1's chunks  } layout: safetensors
      state.safetensors   rank 0: the tree's structure and non-tensor leaves, every rank's RNG
                          state, and (header key "torchkeep.dcp") the table of DCP tensors:
                          name -> path in the tree, global shape, dtype
      manifest.json       rank 0, last: sizes and xxh3 checksums of every file (each rank
                          hashes its own shard), env.world_size

Every rank writes its shards in parallel (``dcp.save`` with
``HuggingFaceStorageWriter(save_distributed=True)``: replicated tensors are written once, by
the rank DCP's planner picks; DTensor shards by their owners). Non-tensor leaves (learning
rates, epochs, scheduler state) cannot live in that layout (its reader rebuilds DCP's
metadata from safetensors headers, which hold tensors only), so they go into
``state.safetensors`` as JSON, from rank 0: they are the same on every rank of a data- or
fully-sharded-parallel run. RNG states differ per rank and are gathered to rank 0.

Commit: the folder is built under ``.tmp-step_…`` and renamed by rank 0 after its manifest
is written and fsynced, after every rank has reported its files; a rank that dies mid-save
makes the collectives fail, the others raise, rank 0 deletes the temporary folder, and the
run directory holds exactly the checkpoints it held before.

Restore: every rank checks a share of the step's files against the manifest (the ranks
agree on the newest step that verifies), optimizers are initialised
(``torch.distributed.checkpoint.state_dict._init_optim_state``, as ``get_state_dict`` does),
and ``dcp.load`` reads each rank's part of every tensor into the live parameters and
optimizer state (DTensor shards for FSDP2, whole tensors for DDP) at any world size. A step
written by a single process (no process group) restores under one too: each rank reads the
file and keeps its own shard. Optimizer state is keyed by parameter name as in every
torchkeep checkpoint (``state/_optim.py``), so it survives a change of sharding.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import torch
import xxhash

from .._api import to_tree
from .._io.fs import Location
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, FormatError, StateMismatchError, TorchkeepError
from ..formats import safetensors
from ._dcp_step import DCP_DIR, DCP_KEY, _fill, _is_dtensor, _split, dcp_table
from ._layout import MANIFEST, STATE_FILE, TMP_PREFIX, FileEntry, Manifest, environment, step_name
from ._verify import Hasher, _hash_file, _size_problem, read_manifest

if TYPE_CHECKING:
    from ._checkpointer import Checkpointer

__all__ = ["active", "owns_run_dir", "save", "restore"]

RANKS_KEY = "_ranks"  # per-rank state in the tree (ignored by TrainState checks: starts with "_")
RNG_KEY = "_rng"
_CHUNK = 8 << 20


def active() -> bool:
    """True under an initialized process group (then saves and restores go through DCP)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return False
    return dist.is_available() and dist.is_initialized()


def owns_run_dir() -> bool:
    """Whether this process locks and cleans the run directory (rank 0, or no process group)."""
    if not active():
        return True
    import torch.distributed as dist

    return dist.get_rank() == 0


# ---------------------------------------------------------------------------- files
def _file_entry(loc: Location) -> FileEntry:
    """Size and checksums of a finished safetensors file, as :class:`Hasher` records them
    while writing (header hash, data-region hash, one hash per tensor)."""
    with loc.open_source() as src:
        header = safetensors.read_header(src)
        head = src.pread(0, header.data_start)
        data = xxhash.xxh3_64()
        pos = header.data_start
        while pos < src.size:
            raw = src.pread(pos, min(_CHUNK, src.size - pos))
            if not raw:
                raise CorruptCheckpointError(f"{loc}: short read at byte {pos:,}; the file is truncated.")
            data.update(raw)
            pos += len(raw)
        per = {e.name: xxhash.xxh3_64_hexdigest(src.pread(header.data_start + e.begin, e.end - e.begin)) for e in header.entries.values()}
        return FileEntry(src.size, xxhash.xxh3_64_hexdigest(head), data.hexdigest(), header.data_start, per)


def _writer(path: str) -> Any:
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter

    class _Writer(HuggingFaceStorageWriter):
        """DCP's HF writer that remembers which files this rank wrote."""

        written: list[str] = []

        def write_data(self, plan: Any, planner: Any) -> Any:
            fut = super().write_data(plan, planner)
            self.written = sorted({wr.storage_data.relative_path for wr in fut.wait()})
            return fut

    return _Writer(path, save_distributed=True)


# ---------------------------------------------------------------------------- save
def save(ck: "Checkpointer", state: Any, step: int, metrics: dict[str, Any], created: float) -> None:
    """Write ``state`` at ``step`` from every rank; returns on every rank once committed."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    rank, world = dist.get_rank(), dist.get_world_size()
    run = ck.directory
    if ck.async_save and not getattr(ck, "_warned_dist_async", False):
        ck._warned_dist_async = True
        warnings.warn(
            "torchkeep: async_save=True is not supported under a process group yet; distributed saves are "
            "synchronous (save returns once every rank's shards are committed).",
            stacklevel=3,
        )
    if not run.is_local:
        raise TorchkeepError(
            f"{run}: under a process group torchkeep saves through torch.distributed.checkpoint, which writes to "
            f"local or shared filesystems only. Fix: give the Checkpointer a path on a shared filesystem."
        )
    st = ck._storage
    name = step_name(step)
    final = run.join(name)
    msg: list[Any] = [None, None]
    if rank == 0:
        try:
            ck._lock.renew()
            work = run.join(f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}")
            st.makedirs(work.join(DCP_DIR))
            msg = [work.name, None]
        except Exception as e:  # noqa: BLE001 - every rank must hear about it
            msg = [None, f"{type(e).__name__}: {e}"]
    dist.broadcast_object_list(msg, src=0)
    if msg[0] is None:
        raise TorchkeepError(f"{run}: rank 0 could not start the save of step {step}: {msg[1]}")
    work = run.join(msg[0])

    tree = to_tree(state)
    per_rank = (RNG_KEY,) if isinstance(tree, Mapping) and RNG_KEY in tree else ()
    try:
        skeleton, tensors, table = _split(tree, per_rank=per_rank)
        rngs: list[Any] = [None] * world if rank == 0 else []
        if per_rank:
            dist.gather_object(tree[RNG_KEY], rngs if rank == 0 else None, dst=0)
        writer = _writer(work.join(DCP_DIR).path)
        dcp.save(tensors, storage_writer=writer)
        mine = {f"{DCP_DIR}/{f}": _file_entry(work.join(DCP_DIR, f)) for f in writer.written}
        entries: list[Any] = [None] * world if rank == 0 else []
        dist.gather_object(mine, entries if rank == 0 else None, dst=0)
        status: list[Any] = [None]
        if rank == 0:
            try:
                _commit(ck, work, final, skeleton, table, rngs if per_rank else None, entries, step, metrics, created, world)
            except BaseException as e:  # noqa: BLE001 - reported to every rank, re-raised below
                status = [f"{type(e).__name__}: {e}"]
                dist.broadcast_object_list(status, src=0)
                raise
        dist.broadcast_object_list(status, src=0)
        if status[0] is not None:
            raise TorchkeepError(f"{run}: step {step} was not committed; rank 0 failed: {status[0]}")
    except BaseException as e:
        if rank == 0:
            _quietly(st.remove_tree, work)
        if isinstance(e, (TorchkeepError, KeyboardInterrupt, SystemExit)):
            raise
        raise TorchkeepError(
            f"{run}: step {step} was not saved; rank {rank} failed during the distributed save "
            f"({type(e).__name__}: {_first_line(e)}). Nothing was committed and earlier checkpoints are intact. "
            f"Fix: if another rank died, check its log, then restart and resume from the latest checkpoint."
        ) from e
    if rank == 0:
        ck._apply_retention()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


def _commit(
    ck: "Checkpointer",
    work: Location,
    final: Location,
    skeleton: Any,
    table: dict[str, dict[str, Any]],
    rngs: list[Any] | None,
    entries: list[dict[str, FileEntry]],
    step: int,
    metrics: dict[str, Any],
    created: float,
    world: int,
) -> None:
    st = ck._storage
    if rngs is not None:
        skeleton = dict(skeleton)
        skeleton[RNG_KEY] = rngs[0]
        skeleton[RANKS_KEY] = {"rng": list(rngs)}
    state_loc = work.join(STATE_FILE)
    hasher = Hasher()
    tensors, meta = safetensors.encode_tree(skeleton, None)
    meta[DCP_KEY] = json.dumps({"version": 1, "world_size": world, "dir": DCP_DIR, "tensors": table}, separators=(",", ":"))
    size = safetensors._write_checked(state_loc, tensors, meta, fsync=True, hook=hasher)
    files = {STATE_FILE: ck._file_entry(state_loc, hasher, size)}
    for e in entries:
        files.update(e or {})
    if ck._env is None:
        ck._env = environment()
    run_info = {"monitor": ck.monitor, "mode": ck.mode} if ck.monitor else {}
    env = dict(ck._env, world_size=world, checkpoint="torch.distributed.checkpoint (hf-safetensors layout)")
    man = Manifest(step, files, metrics, created, STATE_FILE, env, run=run_info)
    st.fsync_dir(work.join(DCP_DIR))
    st.write_file(work.join(MANIFEST), man.to_bytes())
    st.fsync_dir(work)
    ck._commit(work, final)


# ---------------------------------------------------------------------------- restore
def restore(ck: "Checkpointer", state: Any, step: int | None) -> int | None:
    """Load the newest step that verifies on every rank (or ``step``) into ``state``."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    steps = sorted(ck._committed_steps(), reverse=True)
    if step is not None:
        agreed = [steps if rank == 0 else None]
        dist.broadcast_object_list(agreed, src=0)
        if step not in (agreed[0] or []):
            avail = ", ".join(map(str, sorted(agreed[0] or [])[-10:])) or "none"
            raise CheckpointNotFoundError(
                f"{ck.directory}: no complete checkpoint for step {step} (available: {avail}). "
                f"Fix: pass one of these steps, or step=None for the newest."
            )
        candidates = [step]
    else:
        agreed = [steps if rank == 0 else None]
        dist.broadcast_object_list(agreed, src=0)  # every rank walks rank 0's list
        candidates = list(agreed[0] or [])
    for s in candidates:
        loc = ck.directory.join(step_name(s))
        problems = _verify_share(loc, rank, world)
        every: list[Any] = [None] * world
        dist.all_gather_object(every, problems)
        found = [p for ps in every for p in ps]
        if found:
            if step is not None:
                raise CorruptCheckpointError(f"{loc}: " + "; ".join(found[:10]) + ". Restore another step.")
            if rank == 0:
                warnings.warn(f"torchkeep: skipping checkpoint step {s} in {ck.directory}: {'; '.join(found[:5])}", stacklevel=3)
            continue
        try:
            _restore_step(loc, state, rank)
            dist.barrier()
        except BaseException as e:
            if isinstance(e, (TorchkeepError, KeyboardInterrupt, SystemExit)):
                raise
            raise TorchkeepError(
                f"{loc}: restore failed on rank {rank} ({type(e).__name__}: {_first_line(e)}). The state may be partly "
                f"loaded; do not train on it. Fix: if another rank died, check its log and restart all ranks."
            ) from e
        return s
    return None


def _verify_share(loc: Location, rank: int, world: int) -> list[str]:
    """This rank's share of the step's checks: manifest, then every world-th file's checksums."""
    try:
        man = read_manifest(loc)
    except (FormatError, OSError) as e:
        return [str(e)] if rank == 0 else []
    names = sorted(man.files)
    out = []
    for fname in names[rank::world]:
        floc = loc.join(fname)
        try:
            prob = _size_problem(floc, man.files[fname]) or _hash_file(floc, man.files[fname])
        except OSError as e:
            prob = f"{floc}: {e}"
        if prob:
            out.append(prob)
    return out


def _init_optimizers(state: Any) -> None:
    """Give lazily-initialised optimizers their state tensors, so there is something to load into."""
    from torch.distributed.checkpoint.state_dict import _init_optim_state

    adapters = getattr(state, "_adapters", None)
    opts = [a.obj for a in adapters.values() if a.kind == "optimizer"] if isinstance(adapters, Mapping) else []
    if isinstance(state, torch.optim.Optimizer):
        opts = [state]
    for opt in opts:
        _init_optim_state(opt)


def _restore_step(loc: Location, state: Any, rank: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader

    man = read_manifest(loc)
    sloc = loc.join(man.state_file)
    with sloc.open_source() as src:
        header = safetensors.read_header(src)
        small = safetensors.read_tensors(src, header)
    saved = safetensors.decode_tree(header, small)
    rec = dcp_table(header.metadata, str(sloc))
    fills_in_place = callable(getattr(state, "load_state_dict", None))
    if fills_in_place:
        _init_optimizers(state)
        target = to_tree(state)
        _, targets, ttable = _split(target, per_rank=(RNG_KEY,) if isinstance(target, Mapping) and RNG_KEY in target else ())
    else:
        targets, ttable = {}, {}
    if rec is None:  # a step written without a process group: every rank reads the whole file
        skeleton, full, table = _split(saved, per_rank=(RNG_KEY,) if isinstance(saved, Mapping) and RNG_KEY in saved else ())
    else:
        skeleton, table, full = saved, rec["tensors"], None
    if fills_in_place:
        _check_targets(str(loc), table, ttable)
        if full is not None:
            for name, t in targets.items():
                _copy_into(t, full[name])
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                dcp.load({k: targets[k] for k in table}, storage_reader=HuggingFaceStorageReader(loc.join(DCP_DIR).path))
        values: Mapping[str, Any] = targets
    else:
        if full is not None:
            values = full
        else:
            from ..formats import dcp as dcp_format

            values = dcp_format.read_flat(loc.join(DCP_DIR), names=list(table))
    tree = _fill(skeleton, table, values, str(loc))
    if isinstance(tree, MutableMapping) and RANKS_KEY in tree and RNG_KEY in tree:
        ranks = tree.pop(RANKS_KEY)
        rngs = ranks.get("rng") if isinstance(ranks, Mapping) else None
        if isinstance(rngs, list) and rank < len(rngs):
            tree[RNG_KEY] = rngs[rank]
        else:
            from ..state._rng import capture_rng

            warnings.warn(
                f"torchkeep: {loc} holds RNG states for {len(rngs) if isinstance(rngs, list) else 0} rank(s); rank {rank} "
                f"keeps its current generators (random numbers on this rank will not repeat the original run's).",
                stacklevel=4,
            )
            tree[RNG_KEY] = capture_rng()
    if fills_in_place:
        state.load_state_dict(tree)
    else:
        state.clear()
        state.update(tree)


def _check_targets(where: str, table: Mapping[str, Any], ttable: Mapping[str, Any]) -> None:
    missing = sorted(set(ttable) - set(table))
    extra = sorted(set(table) - set(ttable))
    shapes = [
        f"{n!r}: {ttable[n]['dtype']}{ttable[n]['shape']} here, {table[n]['dtype']}{list(table[n]['shape'])} in the checkpoint"
        for n in sorted(set(table) & set(ttable))
        if list(ttable[n]["shape"]) != list(table[n]["shape"]) or ttable[n]["dtype"] != table[n]["dtype"]
    ]
    problems = []
    if missing:
        problems.append(f"tensors of this state that the checkpoint lacks: {missing[:20]}")
    if extra:
        problems.append(f"tensors of the checkpoint that this state lacks: {extra[:20]}")
    if shapes:
        problems.append("different shape or dtype: " + "; ".join(shapes[:20]))
    if problems:
        raise StateMismatchError(
            f"{where}: the checkpoint does not fit the state being restored; nothing was loaded:\n  " + "\n  ".join(problems)
        )


def _copy_into(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a whole saved tensor into ``target``: its own shard when it is a DTensor."""
    with torch.no_grad():
        if _is_dtensor(target):
            from torch.distributed.tensor import distribute_tensor

            shard = distribute_tensor(full.to(target.to_local().device), target.device_mesh, target.placements, src_data_rank=None)
            target.to_local().copy_(shard.to_local())
        else:
            target.copy_(full)


def _quietly(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001
        pass

