"""Mutation fuzzing of every reader: only TorchkeepError comes out, quickly, with bounded
memory, and no code runs. Bounded here; `make fuzz` runs the same with many more examples.

Readers: safetensors (flat, tree, TrainState), torch zip, legacy, bare pickle, TorchScript,
save_model files (load_model), Hugging Face sharded folders (the index), Checkpointer steps
(the manifest). Each is fed byte-level mutations of a valid file (bit flips, truncation,
forged 32/64-bit size fields, copied stretches) and, where the format carries JSON,
structured mutations (valid JSON with hostile values).
"""

from __future__ import annotations

import json
import pickle
import resource
import shutil
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import hypothesis.strategies as hs
import pytest
import torch
from fuzz._mutate import byte_mutations, json_mutations, safetensors_json_mutations
from _reliability import record
from fuzz._guards import memory_guard
from hypothesis import given

import torchkeep as tk

SECONDS = 5.0  # per input, all readers together; files are a few KB
RSS_GROWTH_KIB = 256 * 1024


def _tree() -> dict[str, Any]:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    return {"epoch": 1, "model": model.state_dict(), "t": (1, 2.5), "k": {3: torch.arange(3)}, "s": "x", "none": None}


def _trainstate_file(p: Path) -> None:
    from torchkeep.state import TrainState  # noqa: F401 - import check: the public name

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    tk.save(tk.TrainState(model=model, optimizer=opt, scheduler=sched, progress={"step": 7, "metrics": {"loss": 0.5}}), p)


# name -> (builder writing the seed file at the given path, file suffix)
FILE_SEEDS: dict[str, tuple[Callable[[Path], None], str]] = {
    "safetensors-flat": (lambda p: tk.save(torch.nn.Linear(3, 4), p), ".safetensors"),
    "safetensors-tree": (lambda p: tk.save(_tree(), p), ".safetensors"),
    "trainstate": (_trainstate_file, ".safetensors"),
    "torch-zip": (lambda p: torch.save(_tree(), p), ".pt"),
    "torch-legacy": (lambda p: torch.save(_tree(), p, _use_new_zipfile_serialization=False), ".pt"),
    "bare-pickle": (lambda p: p.write_bytes(pickle.dumps(OrderedDict(a=1, b=[1.5, "x", (2, None)], c={"d": b"\x00"}), protocol=4)), ".pkl"),
    "bare-pickle-2": (lambda p: p.write_bytes(pickle.dumps({"a": [1, 2.0], "b": ("s", True)}, protocol=2)), ".pkl"),
    "torchscript": (lambda p: torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())), str(p)), ".pt"),
    "model-file": (lambda p: tk.save_model(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1)), p), ".safetensors"),
}
_SEED_BYTES: dict[str, bytes] = {}


def _seed(name: str, tmp: Path) -> bytes:
    if name not in _SEED_BYTES:
        build, suffix = FILE_SEEDS[name]
        p = tmp / f"{name}{suffix}"
        build(p)
        _SEED_BYTES[name] = p.read_bytes()
        tk.load(p)  # warm up: lazy imports of a clean read happen outside the auditor
        tk.inspect(p)
        if name == "model-file":
            tk.load_model(p)
    return _SEED_BYTES[name]


def _guarded(reader: str, calls: list[Callable[[], Any]], auditor, size: int) -> None:  # noqa: ANN001
    record("fuzz", reader)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in calls:
            with auditor, memory_guard():
                try:
                    fn()
                except tk.TorchkeepError:
                    pass
    took = time.perf_counter() - t0
    assert took < SECONDS, f"{reader}: readers took {took:.1f} s on a {size}-byte input"
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    assert grown < RSS_GROWTH_KIB, f"{reader}: peak RSS grew by {grown} KiB on a {size}-byte input"


def _file_calls(name: str, p: Path) -> list[Callable[[], Any]]:
    calls: list[Callable[[], Any]] = [lambda: tk.inspect(p), lambda: tk.load(p)]
    if name == "model-file":
        calls.append(lambda: tk.load_model(p))
    return calls


def _file_strategy(name: str, seed: bytes) -> hs.SearchStrategy[bytes]:
    if FILE_SEEDS[name][1] == ".safetensors":
        return hs.one_of(byte_mutations(seed), safetensors_json_mutations(seed))
    return byte_mutations(seed)


@pytest.mark.parametrize("reader", list(FILE_SEEDS))
def test_mutated_files_raise_only_torchkeep_errors(reader, tmp_path_factory, auditor):
    seed = _seed(reader, tmp_path_factory.mktemp("seeds"))
    p = tmp_path_factory.mktemp("fuzz") / f"fuzzed{FILE_SEEDS[reader][1]}"

    @given(data=_file_strategy(reader, seed))
    def run(data: bytes) -> None:
        p.write_bytes(data)
        _guarded(reader, _file_calls(reader, p), auditor, len(data))

    run()


def test_mutated_hf_index(tmp_path_factory, auditor):
    d = tmp_path_factory.mktemp("hf") / "sharded"
    tk.save({f"layer{i}.w": torch.randn(16) for i in range(6)}, d, max_shard_size="150B")
    index = d / "model.safetensors.index.json"
    seed = index.read_bytes()
    tk.load(d)
    shards = sorted(p.name for p in d.glob("*.safetensors"))
    assert len(shards) > 1

    @given(data=hs.one_of(byte_mutations(seed), json_mutations(json.loads(seed)).map(lambda j: json.dumps(j).encode())))
    def run(data: bytes) -> None:
        index.write_bytes(data)
        _guarded("hf-index", [lambda: tk.inspect(d), lambda: tk.load(d)], auditor, len(data))

    run()


def test_mutated_checkpointer_manifest(tmp_path_factory, auditor):
    """A damaged manifest never restores wrong data: restore gives step 2 intact or falls
    back to step 1, and every reader of the step raises only TorchkeepError."""
    from manager._toy import Toy

    from torchkeep.manager import Checkpointer
    from torchkeep.manager._layout import MANIFEST

    run_dir = tmp_path_factory.mktemp("ck") / "run"
    ck = Checkpointer(run_dir)
    ck.save(Toy().fill(1), 1)
    ck.save(Toy().fill(2), 2)
    ck.close()
    step2 = run_dir / "step_00000002"
    manifest = step2 / MANIFEST
    seed = manifest.read_bytes()
    state_bytes = (step2 / "state.safetensors").read_bytes()

    def restore() -> None:
        c = Checkpointer(run_dir)
        try:
            c.checkpoints()
            t = Toy()
            s = c.restore(t)
            assert s in (1, 2) and t.matches(s), f"restore returned step {s} with the wrong content"
        finally:
            c.close()

    @given(data=hs.one_of(byte_mutations(seed), json_mutations(json.loads(seed)).map(lambda j: json.dumps(j).encode())))
    def run(data: bytes) -> None:
        manifest.write_bytes(data)
        _guarded("checkpointer-manifest", [restore, lambda: tk.load(step2), lambda: tk.inspect(step2)], auditor, len(data))
        assert (step2 / "state.safetensors").read_bytes() == state_bytes  # readers never write
        for leftover in step2.iterdir():
            if leftover.name not in (MANIFEST, "state.safetensors"):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()

    run()


@given(header=hs.recursive(
    hs.one_of(hs.none(), hs.booleans(), hs.integers(-(2**70), 2**70), hs.floats(), hs.text(max_size=10)),
    lambda c: hs.one_of(hs.lists(c, max_size=4), hs.dictionaries(hs.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "w", "torchkeep.tree", "$t"]), c, max_size=4)),
    max_leaves=20,
))
def test_random_safetensors_headers(header, tmp_path_factory, auditor):
    raw = json.dumps(header).encode()
    data = len(raw).to_bytes(8, "little") + raw + b"\0" * 64
    p = tmp_path_factory.mktemp("hdr") / "h.safetensors"
    p.write_bytes(data)
    _guarded("safetensors-random-header", _file_calls("safetensors", p), auditor, len(data))


@given(tree=hs.recursive(
    hs.one_of(hs.none(), hs.integers(), hs.text(max_size=5), hs.fixed_dictionaries({"$t": hs.text(max_size=3)}),
              hs.fixed_dictionaries({"$dk": hs.lists(hs.lists(hs.integers(), max_size=3), max_size=3)}),
              hs.fixed_dictionaries({"$f": hs.text(max_size=4)}), hs.fixed_dictionaries({"$dtype": hs.text(max_size=8)}),
              hs.fixed_dictionaries({"$b": hs.text(max_size=8)}), hs.fixed_dictionaries({"$c": hs.lists(hs.integers(), max_size=3)})),
    lambda c: hs.one_of(hs.lists(c, max_size=3), hs.dictionaries(hs.text(max_size=4), c, max_size=3), hs.fixed_dictionaries({"$tu": hs.lists(c, max_size=3)})),
    max_leaves=15,
))
def test_random_tree_metadata(tree, tmp_path_factory, auditor):
    from torchkeep._io.fs import resolve
    from torchkeep.formats import safetensors

    p = tmp_path_factory.mktemp("tree") / "t.safetensors"
    safetensors.write(resolve(p), {"a": torch.zeros(2)}, {"torchkeep.tree": json.dumps(tree)})
    _guarded("tree-metadata-random", _file_calls("safetensors", p), auditor, p.stat().st_size)


@given(index=hs.recursive(hs.one_of(hs.none(), hs.integers(), hs.text(max_size=12)), lambda c: hs.one_of(hs.lists(c, max_size=3), hs.dictionaries(hs.sampled_from(["weight_map", "metadata", "w", "total_size"]), c, max_size=3)), max_leaves=10))
def test_random_index_files(index, tmp_path_factory, auditor):
    d = tmp_path_factory.mktemp("idx")
    tk.save({"w": torch.zeros(2)}, d / "model-00001-of-00001.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    _guarded("hf-index-random", [lambda: tk.load(d), lambda: tk.inspect(d)], auditor, len(json.dumps(index)))
