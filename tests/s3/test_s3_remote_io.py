"""How bytes move to and from S3: parallel ranged reads, streaming multipart writes, bounded memory.

The requests are observed with botocore's event hooks on the s3fs client that torchkeep
uses (the same cached ``S3FileSystem`` instance), not with torchkeep's own counters.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import fsspec
import pytest
import torch
from _helpers import assert_tree_equal

import torchkeep as tk
from torchkeep._io.fs import resolve
from torchkeep.formats import safetensors

pytestmark = pytest.mark.s3
HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1 << 20


def _client():
    import s3fs

    fs = s3fs.S3FileSystem()
    fsspec.asyn.sync(fs.loop, fs.set_session)
    assert resolve("s3://any/key").fs is fs  # torchkeep gets this very instance
    return fs, fs.s3


class _Recorder:
    """Records every S3 call's API parameters; optionally holds the first ranged data GET
    until a second one has started (proof that two were in flight at once)."""

    def __init__(self, client, gate_after: int | None = None) -> None:  # noqa: ANN001
        self.client = client
        self.calls: list[tuple[str, dict]] = []
        self.gate_after = gate_after
        self.ranged = 0
        self.overlapped: bool | None = None
        self._event: asyncio.Event | None = None

    async def __call__(self, params, model, **kw):  # noqa: ANN001, ANN003
        self.calls.append((model.name, dict(params)))
        rng = params.get("Range")
        if model.name != "GetObject" or not rng or self.gate_after is None:
            return
        start = int(re.match(r"bytes=(\d+)-", rng).group(1))
        if start < self.gate_after:
            return  # header reads are not gated
        self.ranged += 1
        if self._event is None:
            self._event = asyncio.Event()
        if self.ranged == 1:
            try:  # hang guard only: a serial reader would never start a second GET
                await asyncio.wait_for(self._event.wait(), timeout=20)
                self.overlapped = True
            except asyncio.TimeoutError:
                self.overlapped = False
        else:
            self._event.set()

    def __enter__(self) -> "_Recorder":
        for op in ("GetObject", "PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload", "AbortMultipartUpload"):
            self.client.meta.events.register(f"provide-client-params.s3.{op}", self, unique_id=f"tk-test-{op}")
        return self

    def __exit__(self, *exc: object) -> None:
        for op in ("GetObject", "PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload", "AbortMultipartUpload"):
            self.client.meta.events.unregister(f"provide-client-params.s3.{op}", unique_id=f"tk-test-{op}")

    def ops(self, name: str) -> list[dict]:
        return [p for n, p in self.calls if n == name]


def _ranges(gets: list[dict]) -> list[tuple[int, int]]:
    out = []
    for p in gets:
        m = re.match(r"bytes=(\d+)-(\d+)$", p.get("Range", ""))
        assert m, f"a GET without a byte range: {p}"
        out.append((int(m.group(1)), int(m.group(2)) + 1))
    return sorted(out)


def test_load_uses_parallel_ranged_gets_into_place(s3_bucket, monkeypatch):
    monkeypatch.setenv("TORCHKEEP_REMOTE_RANGE_SIZE", str(2 * MiB))
    tensors = {"a": torch.randn(3 * MiB), "b": torch.arange(MiB // 2, dtype=torch.int64), "c": torch.randn(7)}  # ~16 MiB
    url = f"{s3_bucket}/ranged.safetensors"
    tk.save(tensors, url)
    with resolve(url).open_source() as src:
        data_start = safetensors.read_header(src).data_start
    fs, client = _client()
    size = fs.size(url)
    with _Recorder(client, gate_after=data_start) as rec:
        out = tk.load(url)
    assert_tree_equal(tensors, out)
    gets = rec.ops("GetObject")
    spans = _ranges(gets)
    data = [s for s in spans if s[0] >= data_start]
    # every data byte fetched exactly once, by ranges of at most 2 MiB, no whole-object GET
    assert data[0][0] == data_start and data[-1][1] == size
    assert all(b == c for (_, b), (c, _) in zip(data, data[1:]))
    assert all(e - s <= 2 * MiB for s, e in data) and len(data) >= 8
    assert len(spans) - len(data) <= 2  # headers: one small ranged GET for detection, one for the reader
    assert rec.overlapped is True, "the ranged GETs ran one after another"
    assert all(p.get("IfMatch") for p in gets), "reads are not pinned to the object version"


def test_save_streams_as_multipart_upload(s3_bucket, monkeypatch):
    monkeypatch.setenv("TORCHKEEP_REMOTE_PART_SIZE", str(5 * MiB))
    big = {"w": torch.randn(10 * MiB // 4 * 4)}  # 40 MiB
    url = f"{s3_bucket}/multi.safetensors"
    fs, client = _client()
    with _Recorder(client) as rec:
        tk.save(big, url)
    parts = rec.ops("UploadPart")
    assert len(rec.ops("CreateMultipartUpload")) == 1 and len(rec.ops("CompleteMultipartUpload")) == 1
    assert not rec.ops("PutObject")
    assert len(parts) == -(-fs.size(url) // (5 * MiB)) >= 8
    assert [p["PartNumber"] for p in parts] == list(range(1, len(parts) + 1))
    assert_tree_equal(big, tk.load(url))


def test_small_file_is_one_put(s3_bucket):
    fs, client = _client()
    with _Recorder(client) as rec:
        tk.save({"x": torch.ones(10)}, f"{s3_bucket}/small.safetensors")
    assert len(rec.ops("PutObject")) == 1 and not rec.ops("UploadPart")


def test_failed_multipart_upload_is_aborted(s3_bucket, monkeypatch):
    monkeypatch.setenv("TORCHKEEP_REMOTE_PART_SIZE", str(5 * MiB))
    url = f"{s3_bucket}/aborted.safetensors"
    tensors = {f"t{i}": torch.randn(MiB) for i in range(8)}  # 4 MiB each: parts go out before the failure

    def boom(name, mv):  # noqa: ANN001
        if name == "t6":
            raise OSError(28, "No space left on device")

    fs, client = _client()
    with _Recorder(client) as rec, pytest.raises(OSError):
        safetensors.write(resolve(url), tensors, hook=boom)
    assert rec.ops("UploadPart") and len(rec.ops("AbortMultipartUpload")) == 1
    fs.invalidate_cache()
    assert not fs.exists(url)
    bucket = s3_bucket.split("://", 1)[1]
    pending = fsspec.asyn.sync(fs.loop, fs._call_s3, "list_multipart_uploads", Bucket=bucket)
    assert not pending.get("Uploads"), "an aborted upload left parts behind"


def test_truncated_object_raises_naming_url(s3_bucket):
    url = f"{s3_bucket}/short.safetensors"
    tk.save({"w": torch.randn(MiB)}, url)
    fs, _ = _client()
    raw = fs.cat_file(url)
    fs.pipe_file(url, raw[: len(raw) // 2])
    with pytest.raises(tk.CorruptCheckpointError, match=re.escape(url)) as e:
        tk.load(url)
    assert "truncated" in str(e.value)


def test_object_replaced_mid_read_is_not_mixed(s3_bucket):
    """Header read, then the object is replaced by a shorter one: the ranged reads fail
    with CorruptCheckpointError naming the URL instead of returning a mix of two files."""
    url = f"{s3_bucket}/replaced.safetensors"
    tk.save({"w": torch.randn(MiB)}, url)
    fs, _ = _client()
    with resolve(url).open_source() as src:
        header = safetensors.read_header(src)
        fs.pipe_file(url, fs.cat_file(url)[:-4096])
        with pytest.raises(tk.CorruptCheckpointError, match=re.escape(url)):
            safetensors.read_tensors(src, header)


def test_reader_rejects_reads_past_the_end(s3_bucket):
    url = f"{s3_bucket}/tiny.safetensors"
    tk.save({"w": torch.ones(4)}, url)
    with resolve(url).open_source() as src:
        with pytest.raises(tk.CorruptCheckpointError, match=re.escape(url) + ".*truncated"):
            src.remote.read_jobs([(src.size - 8, torch.empty(4))])


def _child(op: str, url: str, mib: int, **env: str) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "_rss_child.py"), op, url, str(mib)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to measure peak RSS")
def test_memory_is_bounded_for_a_256_mib_checkpoint(s3_bucket):
    """Peak extra resident memory while saving 256 MiB stays far below 256 MiB (the file is
    never staged whole); loading needs the tensors themselves plus little more (ranges are
    read into place, not into an intermediate copy)."""
    mib = 256
    url = f"{s3_bucket}/rss/big.safetensors"
    part = {"TORCHKEEP_REMOTE_PART_SIZE": str(8 * MiB), "TORCHKEEP_REMOTE_UPLOADS": "4"}  # ~(4+1)*8 MiB by design
    save = _child("save", url, mib, **part)
    assert (save["peak_kib"] - save["base_kib"]) * 1024 < mib * MiB / 2, save
    default = _child("save", f"{s3_bucket}/rss/default.safetensors", mib)  # 16 MiB parts: about 100 MiB
    assert (default["peak_kib"] - default["base_kib"]) * 1024 < mib * MiB * 0.75, default
    run = _child("checkpointer", f"{s3_bucket}/rss/run", mib, **part)
    assert (run["peak_kib"] - run["base_kib"]) * 1024 < mib * MiB / 2, run
    load = _child("load", url, mib)
    assert (load["peak_kib"] - load["base_kib"]) * 1024 < mib * MiB * 1.25, load


class _BrokenBody:
    """A response body that delivers one chunk, then loses the connection."""

    def __init__(self, body) -> None:  # noqa: ANN001
        self.body = body
        self.sent = False

    async def read(self, n):  # noqa: ANN001, ANN201
        if self.sent:
            raise ConnectionResetError(104, "Connection reset by peer (injected)")
        self.sent = True
        return await self.body.read(min(n, 1000))

    def close(self) -> None:
        self.body.close()


def _flaky_gets(monkeypatch, fs, data_start: int, breaks: int) -> list[str]:  # noqa: ANN001
    """Break the body of the first ``breaks`` ranged data GETs; returns the ranges requested."""
    real = fs._call_s3
    seen: list[str] = []

    async def call(method, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        resp = await real(method, *a, **kw)
        rng = kw.get("Range", "")
        if method == "get_object" and rng and int(rng[6:].split("-")[0]) >= data_start:
            seen.append(rng)
            if len(seen) <= breaks:
                resp["Body"] = _BrokenBody(resp["Body"])
        return resp

    monkeypatch.setattr(fs, "_call_s3", call)
    return seen


def test_a_broken_range_is_fetched_again(s3_bucket, monkeypatch):
    tensors = {"w": torch.randn(MiB)}
    url = f"{s3_bucket}/flaky.safetensors"
    tk.save(tensors, url)
    with resolve(url).open_source() as src:
        data_start = safetensors.read_header(src).data_start
    fs, _ = _client()
    seen = _flaky_gets(monkeypatch, fs, data_start, breaks=1)
    assert_tree_equal(tensors, tk.load(url))
    assert len(seen) == 2 and seen[0] == seen[1]  # the same range, once more


def test_a_range_that_keeps_breaking_names_the_url(s3_bucket, monkeypatch):
    url = f"{s3_bucket}/broken.safetensors"
    tk.save({"w": torch.randn(MiB)}, url)
    with resolve(url).open_source() as src:
        data_start = safetensors.read_header(src).data_start
    fs, _ = _client()
    _flaky_gets(monkeypatch, fs, data_start, breaks=100)
    with pytest.raises(tk.TorchkeepError, match=re.escape(url) + ".*failed 3 times.*Check the connection"):
        tk.load(url)


def test_verify_hashes_with_parallel_ranges(s3_bucket):
    from torchkeep.manager import Checkpointer
    from torchkeep.manager._verify import verify_step

    run = f"{s3_bucket}/vrun"
    with Checkpointer(run) as ck:
        ck.save({"w": torch.randn(6 * MiB)}, 1)  # 24 MiB
    step = resolve(f"{run}/step_00000001")
    with resolve(f"{run}/step_00000001/state.safetensors").open_source() as src:
        data_start = safetensors.read_header(src).data_start
    fs, client = _client()
    with _Recorder(client, gate_after=data_start) as rec:
        check = verify_step(step, full=True, load=False)
    assert check.ok, check.problems
    gets = [p for p in rec.ops("GetObject") if p["Key"].endswith("state.safetensors")]  # (the manifest is one plain GET)
    data = [s for s in _ranges(gets) if s[0] >= data_start]
    assert len(data) >= 3 and rec.overlapped is True


def test_small_reads_share_cached_blocks(s3_bucket):
    """A torch zip (.pt) is read one storage at a time (a zip record header, then the data):
    200 small tensors must not cost 400 round trips."""
    sd = {f"t{i}": torch.randn(1000) for i in range(200)}  # ~800 KB in all
    url = f"{s3_bucket}/many.pt"
    tk.save(sd, url)
    fs, client = _client()
    with _Recorder(client) as rec:
        assert_tree_equal(sd, tk.load(url))
    assert len(rec.ops("GetObject")) <= 20, len(rec.ops("GetObject"))
