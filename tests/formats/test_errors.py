"""Bad input: a clear TorchkeepError naming the path and the fix, quickly, never a crash."""

from __future__ import annotations

import json
import resource
import struct
import time

import pytest
import torch

import torchkeep as tk


def _good(tmp_path):
    p = tmp_path / "good.safetensors"
    tk.save({"w": torch.randn(64, 64), "b": torch.randn(64)}, p)
    return p


def test_missing_path_names_it(tmp_path):
    p = tmp_path / "nope.pt"
    with pytest.raises(tk.NotFoundError) as e:
        tk.load(p)
    assert str(p) in str(e.value) and "Check the path" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(tk.NotFoundError):
        tk.inspect(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    with pytest.raises(tk.CorruptCheckpointError, match=r"empty \(0 bytes\)"):
        tk.load(p)


def test_text_file(tmp_path):
    p = tmp_path / "notes.pt"
    p.write_text("hello, this is not a checkpoint\n")
    with pytest.raises(tk.FormatError, match="text file"):
        tk.load(p)


def test_unknown_binary(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(tk.FormatError, match="unknown binary format"):
        tk.load(p)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.99])
def test_truncated_safetensors(tmp_path, keep):
    p = _good(tmp_path)
    raw = p.read_bytes()
    p.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(tk.CorruptCheckpointError) as e:
        tk.load(p)
    assert str(p) in str(e.value)


def test_absurd_header_size_allocates_nothing(tmp_path):
    p = tmp_path / "evil.safetensors"
    p.write_bytes(struct.pack("<Q", 2**62) + b'{"w":' + b" " * 100)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(tk.CorruptCheckpointError, match="header claims"):
        tk.load(p)
    assert time.perf_counter() - t0 < 5  # a hang guard, not a speed target
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB


@pytest.mark.parametrize(
    "entry, msg",
    [
        ({"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}, "outside"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}, "needs 16 bytes"),
        ({"dtype": "X99", "shape": [1], "data_offsets": [0, 4]}, "unknown dtype"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "bad shape"),
        ({"dtype": "F32", "shape": [1]}, "lacks"),
    ],
)
def test_damaged_header_entries(tmp_path, entry, msg):
    header = json.dumps({"w": entry}).encode()
    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(tk.CorruptCheckpointError, match=msg):
        tk.load(p)


def test_overlapping_offsets(tmp_path):
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    p = tmp_path / "overlap.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 12)
    with pytest.raises(tk.CorruptCheckpointError, match="overlap"):
        tk.load(p)


def test_damaged_tree_metadata(tmp_path):
    p = tmp_path / "t.safetensors"
    from torchkeep.formats import safetensors as fs
    from torchkeep._io.fs import resolve

    fs.write(resolve(p), {"a": torch.zeros(1)}, {"torchkeep.tree": '{"x": {"$t": "missing"}}'})
    with pytest.raises(tk.FormatError, match="missing"):
        tk.load(p)
    fs.write(resolve(p), {"a": torch.zeros(1)}, {"torchkeep.tree": "{not json"})
    with pytest.raises(tk.CorruptCheckpointError, match="not valid JSON"):
        tk.load(p)


def test_every_error_is_a_torchkeep_error():
    for name in tk.errors.__all__ if hasattr(tk, "errors") else []:
        assert issubclass(getattr(tk, name), tk.TorchkeepError)
    assert issubclass(tk.FormatError, ValueError)
    assert issubclass(tk.NotFoundError, FileNotFoundError)


def test_bad_dtype_argument(tmp_path):
    p = _good(tmp_path)
    with pytest.raises(tk.TorchkeepError, match="torch.dtype"):
        tk.load(p, dtype="float16")
