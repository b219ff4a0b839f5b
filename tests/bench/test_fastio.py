"""fastio: every write/read path (packed small tensors, direct large ones, threads) is exact."""

from __future__ import annotations

import os

import pytest
import torch

from torchkeep._io import fastio
from torchkeep._io.fs import resolve
from torchkeep.errors import CorruptCheckpointError


def _tensors() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    sizes = [0, 1, 3, 100, 5000, 70_000, 300_000, 17, 2, 1 << 20, 9, 40_000, 33]
    dtypes = [torch.float32, torch.uint8, torch.bfloat16, torch.int64, torch.float16, torch.bool, torch.float64]
    for i, n in enumerate(sizes):
        dt = dtypes[i % len(dtypes)]
        t = torch.randint(0, 100, (n,), generator=g).to(dt) if dt != torch.bool else torch.rand(n, generator=g) > 0.5
        out.append((f"t{i}", t))
    out.append(("noncontig", torch.arange(600, dtype=torch.float32).view(20, 30).t()))
    out.append(("scalar", torch.tensor(3.5)))
    return out


def _expected(items: list[tuple[str, torch.Tensor]]) -> bytes:
    return b"".join(bytes(fastio.tensor_bytes(t)) for _, t in items)


def test_write_tensors_bytes_and_hook_order(tmp_path):
    items = _tensors()
    seen: list[tuple[str, bytes]] = []
    p = tmp_path / "f.bin"
    with open(p, "wb", buffering=0) as f:
        f.write(b"HEAD")
        n = fastio.write_tensors(f, items, hook=lambda k, mv: seen.append((k, bytes(mv))))
    data = p.read_bytes()
    assert data == b"HEAD" + _expected(items)
    assert n == len(data) - 4
    assert [k for k, _ in seen] == [k for k, _ in items]
    assert all(b == bytes(fastio.tensor_bytes(t)) for (_, b), (_, t) in zip(seen, items))


def test_write_tensors_to_a_file_without_fileno(tmp_path):
    import io

    items = _tensors()
    buf = io.BytesIO()
    fastio.write_tensors(buf, items)
    assert buf.getvalue() == _expected(items)


def test_many_small_tensors_cross_the_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(fastio, "_STAGE", 4096)
    items = [(f"s{i}", torch.full((7 + i % 50,), float(i))) for i in range(3000)]
    p = tmp_path / "s.bin"
    with open(p, "wb", buffering=0) as f:
        fastio.write_tensors(f, items)
    assert p.read_bytes() == _expected(items)
    outs = [torch.empty_like(t) for _, t in items]
    offs, pos = [], 0
    for _, t in items:
        offs.append(pos)
        pos += t.numel() * t.element_size()
    with resolve(str(p)).open_source() as src:
        fastio.read_jobs(src, list(zip(offs, outs))[::-1])  # any job order
    assert all(torch.equal(o, t) for o, (_, t) in zip(outs, items))


@pytest.mark.parametrize("threads", [1, 3])
def test_read_jobs_round_trip(tmp_path, monkeypatch, threads):
    monkeypatch.setattr(fastio, "_PARALLEL_MIN", 0)
    monkeypatch.setattr(fastio, "_RUN_MAX", 1 << 18)  # force huge-tensor splitting too
    items = [(k, t.contiguous()) for k, t in _tensors()]
    p = tmp_path / "r.bin"
    p.write_bytes(b"X" * 7 + _expected(items))
    offs, pos = [], 7
    for _, t in items:
        offs.append(pos)
        pos += t.numel() * t.element_size()
    outs = [torch.zeros_like(t) for _, t in items]
    # gaps between jobs: skip every third tensor
    jobs = [(o, d) for i, (o, d) in enumerate(zip(offs, outs)) if i % 3]
    with resolve(str(p)).open_source() as src:
        fastio.read_jobs(src, jobs, threads=threads)
    for i, ((_, t), d) in enumerate(zip(items, outs)):
        if i % 3:
            assert torch.equal(d, t), i


def test_read_jobs_truncated_file_raises(tmp_path):
    p = tmp_path / "t.bin"
    p.write_bytes(b"\0" * 1000)
    with resolve(str(p)).open_source() as src:
        with pytest.raises(CorruptCheckpointError, match="truncated"):
            fastio.read_jobs(src, [(0, torch.empty(100)), (400, torch.empty(200))])
        with pytest.raises(CorruptCheckpointError, match="truncated"):
            fastio.read_jobs(src, [(0, torch.empty(1 << 20))])


def test_env_threads_setting_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHKEEP_READ_THREADS", "2")
    monkeypatch.setattr(fastio, "_PARALLEL_MIN", 0)
    t = torch.arange(1 << 18, dtype=torch.float32)
    p = tmp_path / "e.bin"
    p.write_bytes(bytes(fastio.tensor_bytes(t)) * 2)
    a, b = torch.empty_like(t), torch.empty_like(t)
    with resolve(str(p)).open_source() as src:
        fastio.read_jobs(src, [(0, a), (os.path.getsize(p) // 2, b)])
    assert torch.equal(a, t) and torch.equal(b, t)
