"""Mutation fuzzing of every reader: only TorchkeepError comes out, quickly, with bounded
memory, and no code runs. Bounded here; `make fuzz` runs the same with many more examples."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import hypothesis.strategies as hs
import pytest
import torch
from hypothesis import given

import torchkeep as tk

SEEDS: dict[str, bytes] = {}


def _seed_files(tmp: Path) -> dict[str, bytes]:
    """One valid file per readable single-file format."""
    if SEEDS:
        return SEEDS
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    tree = {"epoch": 1, "model": model.state_dict(), "t": (1, 2.5), "k": {3: torch.arange(3)}}
    tk.save(model, tmp / "flat.safetensors")
    tk.save(tree, tmp / "tree.safetensors")
    SEEDS["safetensors-flat"] = (tmp / "flat.safetensors").read_bytes()
    SEEDS["safetensors-tree"] = (tmp / "tree.safetensors").read_bytes()
    try:  # pickle-based readers, when present
        torch.save(tree, tmp / "zip.pt")
        SEEDS["torch-zip"] = (tmp / "zip.pt").read_bytes()
        torch.save(tree, tmp / "legacy.pt", _use_new_zipfile_serialization=False)
        SEEDS["torch-legacy"] = (tmp / "legacy.pt").read_bytes()
    except Exception:  # noqa: BLE001
        pass
    return SEEDS


@hs.composite
def mutations(draw, data: bytes):  # noqa: ANN001, ANN201
    buf = bytearray(data)
    for _ in range(draw(hs.integers(1, 6))):
        kind = draw(hs.sampled_from(["flip", "byte", "truncate", "insert", "delete", "int64", "header"]))
        if not buf:
            break
        pos = draw(hs.integers(0, len(buf) - 1))
        if kind == "flip":
            buf[pos] ^= 1 << draw(hs.integers(0, 7))
        elif kind == "byte":
            buf[pos] = draw(hs.integers(0, 255))
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = draw(hs.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del buf[pos : pos + draw(hs.integers(1, 16))]
        elif kind == "int64":  # size fields are where allocations come from
            v = draw(hs.sampled_from([0, 1, 2**31 - 1, 2**32, 2**62, 2**64 - 1, len(buf) * 2]))
            buf[pos : pos + 8] = v.to_bytes(8, "little")
        else:  # mutate inside the first 1 KiB (headers, pickle opcodes, zip directory)
            p = draw(hs.integers(0, min(len(buf), 1024) - 1))
            buf[p] = draw(hs.integers(0, 255))
    return bytes(buf)


def _check_one(tmp_path: Path, data: bytes, auditor) -> None:  # noqa: ANN001
    p = tmp_path / "fuzzed.bin"
    p.write_bytes(data)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for fn in (tk.inspect, tk.load):
        with auditor:
            try:
                fn(p)
            except tk.TorchkeepError:
                pass
    assert time.perf_counter() - t0 < 5, "a reader took more than 5 s on a small file"
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    assert grown < 256 * 1024, f"peak RSS grew by {grown} KiB on a {len(data)}-byte file"


@pytest.mark.parametrize("fmt", ["safetensors-flat", "safetensors-tree", "torch-zip", "torch-legacy"])
def test_mutated_files_raise_only_torchkeep_errors(fmt, tmp_path_factory, auditor):
    seeds = _seed_files(tmp_path_factory.mktemp("seeds"))
    if fmt not in seeds:
        pytest.skip(f"{fmt} seed unavailable")
    tmp = tmp_path_factory.mktemp("fuzz")

    @given(data=mutations(seeds[fmt]))
    def run(data: bytes) -> None:
        _check_one(tmp, data, auditor)

    run()


@given(header=hs.recursive(
    hs.one_of(hs.none(), hs.booleans(), hs.integers(-(2**70), 2**70), hs.floats(), hs.text(max_size=10)),
    lambda c: hs.one_of(hs.lists(c, max_size=4), hs.dictionaries(hs.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "w", "torchkeep.tree", "$t"]), c, max_size=4)),
    max_leaves=20,
))
def test_random_safetensors_headers(header, tmp_path_factory, auditor):
    raw = json.dumps(header).encode()
    data = len(raw).to_bytes(8, "little") + raw + b"\0" * 64
    _check_one(tmp_path_factory.mktemp("hdr"), data, auditor)


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
    _check_one(p.parent, p.read_bytes(), auditor)


@given(index=hs.recursive(hs.one_of(hs.none(), hs.integers(), hs.text(max_size=12)), lambda c: hs.one_of(hs.lists(c, max_size=3), hs.dictionaries(hs.sampled_from(["weight_map", "metadata", "w", "total_size"]), c, max_size=3)), max_leaves=10))
def test_random_index_files(index, tmp_path_factory, auditor):
    d = tmp_path_factory.mktemp("idx")
    tk.save({"w": torch.zeros(2)}, d / "model-00001-of-00001.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with auditor:
        try:
            tk.load(d)
        except tk.TorchkeepError:
            pass
