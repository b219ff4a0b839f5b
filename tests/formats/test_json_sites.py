"""Every place torchkeep parses JSON from a file refuses deeply nested input with a
CorruptCheckpointError naming the file (json.loads alone raises RecursionError), and wrong
top-level types the same way. One test per site."""

from __future__ import annotations

import fcntl
import io
import json
import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch

import torchkeep as tk
from torchkeep._io import jsonio
from torchkeep._io.fs import resolve
from torchkeep.formats import safetensors, torchzip

DEEP = b"[" * 100_000  # json.loads: RecursionError
NEAR = "[" * 900 + "]" * 900  # parses, but any recursive walk over it is in trouble


@pytest.fixture(autouse=True)
def _count(request: pytest.FixtureRequest) -> None:
    from _reliability import record

    record("hostile", f"nested/mistyped JSON: {request.node.name.split('[')[0]}")


def _st_with_meta(p: Path, meta: dict[str, str]) -> Path:
    safetensors.write(resolve(p), {"a": torch.zeros(2)}, meta)
    return p


@pytest.mark.parametrize("raw", [DEEP, NEAR.encode(), b"[]", b"3", b"\xff\xfe", b'{"a": 1'], ids=["deep", "near-limit", "list", "int", "bytes", "cut"])
def test_helper_only_raises_corrupt_checkpoint_error(raw):
    with pytest.raises(tk.CorruptCheckpointError, match="/x/file: thing"):
        jsonio.loads(raw, what="thing", path="/x/file")


def test_helper_accepts_what_it_should():
    assert jsonio.loads(b'{"a": [1, {"b": 2}]}', what="t", path="p") == {"a": [1, {"b": 2}]}
    assert jsonio.loads("[[1]]", what="t", path="p", expect=None) == [[1]]
    assert isinstance(jsonio.loads(NEAR, what="t", path="p", expect=None, max_depth=None), list)
    with pytest.raises(tk.CorruptCheckpointError, match="nested more than 3 levels"):
        jsonio.loads("[[[[1]]]]", what="t", path="p", expect=None, max_depth=3)


def test_safetensors_header(tmp_path):
    p = tmp_path / "deep.safetensors"
    deep_obj = b'{"a":' * 30_000  # starts with "{" so detection sends it to the safetensors reader
    p.write_bytes(struct.pack("<Q", len(deep_obj)) + deep_obj)
    for fn in (tk.load, tk.inspect):
        with pytest.raises(tk.CorruptCheckpointError, match=f"{p}: safetensors header is nested too deeply"):
            fn(p)


def test_safetensors_header_value_near_the_recursion_limit(tmp_path):
    raw = ('{"w": {"dtype": "F32", "shape": ' + NEAR + ', "data_offsets": [0, 4]}}').encode()
    p = tmp_path / "near.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    with pytest.raises(tk.CorruptCheckpointError, match="bad shape"):
        tk.load(p)


def test_tree_metadata(tmp_path):
    p = _st_with_meta(tmp_path / "t.safetensors", {safetensors.TREE_KEY: DEEP.decode()})
    with pytest.raises(tk.CorruptCheckpointError, match=f"{p}: torchkeep tree metadata is nested too deeply"):
        tk.load(p)
    p2 = _st_with_meta(tmp_path / "t2.safetensors", {safetensors.TREE_KEY: NEAR})
    with pytest.raises(tk.CorruptCheckpointError, match="nested more than"):
        tk.load(p2)
    for q in (p, p2):  # inspect still shows the tensors
        assert [t.name for t in tk.inspect(q).tensors] == ["a"]


def test_alias_metadata(tmp_path):
    p = _st_with_meta(tmp_path / "a.safetensors", {safetensors.ALIAS_KEY: DEEP.decode()})
    with pytest.raises(tk.CorruptCheckpointError, match="alias metadata is nested too deeply"):
        tk.load(p)
    p2 = _st_with_meta(tmp_path / "a2.safetensors", {safetensors.ALIAS_KEY: '{"b": [1]}'})
    with pytest.raises(tk.CorruptCheckpointError, match="alias metadata must map names to names"):
        tk.load(p2)


def test_user_metadata_is_shown_raw(tmp_path):
    p = _st_with_meta(tmp_path / "u.safetensors", {safetensors.USER_KEY: DEEP.decode(), "note": "hi"})
    info = tk.inspect(p)
    assert info.metadata == {"note": "hi"}
    assert torch.equal(tk.load(p)["a"], torch.zeros(2))


def test_hf_index(tmp_path):
    d = tmp_path / "sharded"
    tk.save({"w": torch.zeros(2)}, d, max_shard_size="1KB")
    idx = d / "model.safetensors.index.json"
    for raw, msg in ((DEEP, "index is nested too deeply"), (b"[1, 2]", "index is not a JSON object"), (NEAR.encode(), "index is not a JSON object")):
        idx.write_bytes(raw)
        with pytest.raises(tk.CorruptCheckpointError, match=msg) as e:
            tk.load(d)
        assert str(idx) in str(e.value)
    idx.write_bytes(b'{"weight_map": ' + NEAR.encode() + b"}")
    with pytest.raises(tk.CorruptCheckpointError, match="nested more than"):
        tk.load(d)


def test_torchzip_metadata_record(tmp_path):
    p = tmp_path / "m.pt"
    tk.save({"w": torch.ones(3)}, p, metadata={"note": "x"})
    assert tk.inspect(p).metadata == {"note": "x"}
    q = tmp_path / "deep.pt"
    torch.save({"w": torch.ones(3)}, q)
    with open(q, "r+b") as f:
        torchzip._append_record(f, DEEP)
    info = tk.inspect(q)  # informational record: dropped, the tensors still inspect and load
    assert info.metadata == {} and [t.name for t in info.tensors] == ["w"]
    assert torch.equal(tk.load(q)["w"], torch.ones(3))


def test_model_spec(tmp_path):
    from torchkeep.model._spec import SPEC_KEY

    p = _st_with_meta(tmp_path / "m.safetensors", {SPEC_KEY: DEEP.decode()})
    with pytest.raises(tk.CorruptCheckpointError, match=f"{p}: the model spec is nested too deeply"):
        tk.load_model(p)
    p2 = _st_with_meta(tmp_path / "m2.safetensors", {SPEC_KEY: NEAR})
    with pytest.raises(tk.CorruptCheckpointError, match="nested more than"):
        tk.load_model(p2)


def test_export_record_and_archive_config(tmp_path):
    from torchkeep.model import _export

    p = _st_with_meta(tmp_path / "e.safetensors", {_export.EXPORT_KEY: DEEP.decode()})
    with pytest.raises(tk.CorruptCheckpointError, match="the export record is nested too deeply"):
        _export.load_exported(p)
    p2 = _st_with_meta(tmp_path / "e2.safetensors", {_export.EXPORT_KEY: "[1]"})
    with pytest.raises(tk.CorruptCheckpointError, match="the export record is not a JSON object"):
        _export.load_exported(p2)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("m/archive_format", "pt2")
        z.writestr("m/data/weights/model_weights_config.json", DEEP)
        z.writestr("m/data/constants/model_constants_config.json", b'{"config": [1, 2]}')
    with pytest.raises(tk.UnsafePickleError) as e:
        _export._check_archive(buf.getvalue(), "side.pt2")
    assert "unreadable config" in str(e.value) and "malformed config" in str(e.value)


def test_manifest(tmp_path):
    from manager._toy import Toy

    from torchkeep.manager import Checkpointer
    from torchkeep.manager._layout import MANIFEST, Manifest

    for raw in (DEEP, b"[]", NEAR.encode()):
        with pytest.raises(tk.CorruptCheckpointError, match="where: manifest"):
            Manifest.from_bytes(raw, "where")
    good = json.loads((_one_step(tmp_path / "ok", Toy) / MANIFEST).read_bytes())
    for field, value in (("env", [1]), ("user", "x"), ("created", 1e400), ("files", {"state.safetensors": {"size": 1e400}})):
        with pytest.raises(tk.CorruptCheckpointError, match="malformed"):
            Manifest.from_bytes(json.dumps(good | {field: value}).encode(), "where")
    run = tmp_path / "run"
    ck = Checkpointer(run)
    ck.save(Toy().fill(1), 1)
    ck.save(Toy().fill(2), 2)
    (run / "step_00000002" / MANIFEST).write_bytes(DEEP)
    recs = {r.step: r.valid for r in ck.checkpoints()}
    assert recs == {1: True, 2: False}
    t = Toy()
    with pytest.warns(UserWarning):
        assert ck.restore(t) == 1
    assert t.matches(1)
    ck.close()


def _one_step(run: Path, toy) -> Path:  # noqa: ANN001
    from torchkeep.manager import Checkpointer

    ck = Checkpointer(run)
    ck.save(toy().fill(1), 1)
    ck.close()
    return run / "step_00000001"


def test_lock_file_held_by_another_writer(tmp_path):
    from torchkeep.manager import Checkpointer
    from torchkeep.manager._layout import LOCK_FILE

    run = tmp_path / "run"
    run.mkdir()
    lock = run / LOCK_FILE
    for raw in (DEEP[:4096], b'{"pid": 7, "since": 1e300}', b"[1]"):
        lock.write_bytes(raw)
        fd = os.open(lock, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file description: a holder
        try:
            with pytest.raises(tk.LockError, match="being written by another process"):
                Checkpointer(run).save({"x": torch.zeros(1)}, 1)
        finally:
            os.close(fd)


def test_lease_file_on_an_object_store():
    import fsspec

    from torchkeep.manager import Checkpointer
    from torchkeep.manager._layout import LOCK_FILE

    fs = fsspec.filesystem("memory")
    for i, raw in enumerate((DEEP, b'{"expires": [1]}', b'{"expires": "soon"}')):
        fs.pipe(f"/tk-json-lease-{i}/{LOCK_FILE}", raw)
        ck = Checkpointer(f"memory://tk-json-lease-{i}")  # a damaged lease is no lease
        ck.save({"x": torch.zeros(1)}, 1)
        ck.close()
        fs.rm(f"/tk-json-lease-{i}", recursive=True)
