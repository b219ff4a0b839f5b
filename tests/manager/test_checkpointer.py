"""Checkpointer: save/restore round trips, records, corruption fallback, layout, object stores."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from manager._toy import Toy

import torchkeep as tk
from torchkeep.errors import CheckpointNotFoundError, CorruptCheckpointError, UnsupportedTypeError
from torchkeep.manager import Checkpointer


def steps_on_disk(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_round_trip_and_layout(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path)
    toy = Toy().fill(5)
    ck.save(toy, 5, metrics={"loss": torch.tensor(0.5), "acc": 0.9})
    assert steps_on_disk(tmp_path) == [".lock", "step_00000005"]
    assert sorted(os.listdir(tmp_path / "step_00000005")) == ["manifest.json", "state.safetensors"]
    man = json.loads((tmp_path / "step_00000005" / "manifest.json").read_text())
    assert man["format"] == "torchkeep-step" and man["step"] == 5
    assert man["metrics"] == {"loss": 0.5, "acc": 0.9}
    f = man["files"]["state.safetensors"]
    assert f["size"] == (tmp_path / "step_00000005" / "state.safetensors").stat().st_size
    assert set(f["tensors_xxh3_64"]) >= {"model.0.weight", "model.2.bias"}
    assert {"torch", "torchkeep", "python", "world_size", "devices"} <= set(man["env"])
    other = Toy()
    assert ck.restore(other) == 5
    assert other.matches(5)


def test_new_run_restores_none(tmp_path: Path) -> None:
    assert Checkpointer(tmp_path / "new").restore(Toy()) is None


def test_module_and_plain_tree(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path)
    m = torch.nn.Linear(3, 2)
    ck.save(m, 1)
    m2 = torch.nn.Linear(3, 2)
    assert ck.restore(m2) == 1
    assert torch.equal(m2.weight, m.weight)
    tree = {"w": torch.arange(4.0), "n": 3, "nested": {"x": [1, 2]}}
    ck.save(tree, 2)
    out: dict = {}
    assert ck.restore(out) == 2
    assert torch.equal(out["w"], tree["w"]) and out["n"] == 3 and out["nested"] == {"x": [1, 2]}
    with pytest.raises(UnsupportedTypeError, match="load_state_dict"):
        ck.restore(42)


def test_restore_exact_step_and_errors(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path)
    for s in (1, 2, 3):
        ck.save(Toy().fill(s), s)
    t = Toy()
    assert ck.restore(t, step=2) == 2 and t.matches(2)
    with pytest.raises(CheckpointNotFoundError, match=r"no complete checkpoint for step 7 \(available: 1, 2, 3\)"):
        ck.restore(t, step=7)
    _flip_bit(tmp_path / "step_00000002" / "state.safetensors")
    with pytest.raises(CorruptCheckpointError, match="step_00000002.*checksum mismatch"):
        ck.restore(t, step=2)


def test_load_and_inspect_step_folder(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path)
    toy = Toy().fill(3)
    ck.save(toy, 3, {"loss": 1.5})
    tree = tk.load(tmp_path / "step_00000003")
    assert torch.equal(tree["model"]["0.weight"], toy.model[0].weight)
    assert tree["extra"] == toy.extra
    info = tk.inspect(tmp_path / "step_00000003")
    assert info.format == "torchkeep-step"
    assert info.metadata["step"] == 3 and info.metadata["metrics"] == {"loss": 1.5}
    assert info.num_tensors == 4


def test_records_latest_best(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, monitor="loss", mode="min")
    assert ck.checkpoints() == [] and ck.latest() is None and ck.best() is None
    for s, loss in [(1, 0.9), (2, 0.2), (3, 0.5)]:
        ck.save(Toy().fill(s), s, {"loss": loss})
    recs = ck.checkpoints()
    assert [r.step for r in recs] == [1, 2, 3]
    assert all(r.valid and r.size > 0 and r.created > 0 for r in recs)
    assert recs[1].metrics == {"loss": 0.2}
    assert recs[2].path.endswith("step_00000003")
    assert ck.latest().step == 3
    assert ck.best().step == 2
    assert Checkpointer(tmp_path / "other", monitor="acc", mode="max").best() is None


def test_retention_keeps_newest_and_best(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, keep_last=2, keep_best=1, monitor="loss")
    losses = {1: 0.5, 2: 0.1, 3: 0.4, 4: 0.3, 5: 0.6}
    for s, loss in losses.items():
        ck.save(Toy().fill(s), s, {"loss": loss})
    assert [r.step for r in ck.checkpoints()] == [2, 4, 5]
    ck2 = Checkpointer(tmp_path / "every", keep_every=3, keep_last=1)
    for s in range(1, 8):
        ck2.save({"x": torch.tensor([s])}, s)
    assert [r.step for r in ck2.checkpoints()] == [3, 6, 7]


def test_options_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep_best needs monitor"):
        Checkpointer(tmp_path, keep_best=1)
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        Checkpointer(tmp_path, monitor="loss", mode="down")
    with pytest.raises(ValueError, match="keep_last must be a positive int"):
        Checkpointer(tmp_path, keep_last=0)
    ck = Checkpointer(tmp_path)
    with pytest.raises(ValueError, match="step must be a non-negative int"):
        ck.save(Toy(), -1)
    with pytest.raises(UnsupportedTypeError, match="metrics must map str to numbers"):
        ck.save(Toy(), 1, {"loss": [1, 2]})
    assert ck.checkpoints() == []


def test_monitor_missing_warns_once(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, monitor="val_loss")
    with pytest.warns(UserWarning, match="monitor='val_loss' is not in the metrics"):
        ck.save(Toy(), 1, {"loss": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ck.save(Toy(), 2, {"loss": 1.0})


def _flip_bit(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    pos = len(data) - 3 if offset is None else offset
    data[pos] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["bitflip_data", "bitflip_header", "truncate", "no_manifest", "bad_manifest", "missing_file"])
def test_restore_falls_back_past_damage(tmp_path: Path, damage: str) -> None:
    ck = Checkpointer(tmp_path)
    for s in (10, 20):
        ck.save(Toy().fill(s), s)
    newest = tmp_path / "step_00000020"
    st = newest / "state.safetensors"
    if damage == "bitflip_data":
        _flip_bit(st)
    elif damage == "bitflip_header":
        _flip_bit(st, 20)
    elif damage == "truncate":
        os.truncate(st, st.stat().st_size - 100)
    elif damage == "no_manifest":
        (newest / "manifest.json").unlink()
    elif damage == "bad_manifest":
        (newest / "manifest.json").write_text("{not json")
    elif damage == "missing_file":
        st.unlink()
    t = Toy()
    if damage == "no_manifest":  # incomplete: silently not a checkpoint
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert ck.restore(t) == 10
    else:
        with pytest.warns(UserWarning, match=r"skipping checkpoint step 20 in .*: .*step_00000020"):
            assert ck.restore(t) == 10
    assert t.matches(10)
    valid = {r.step: r.valid for r in ck.checkpoints()}
    assert valid[10] is True
    if damage in ("truncate", "bad_manifest", "missing_file"):
        assert valid[20] is False  # the cheap check sees these; bit flips need checksums


def test_bitflip_names_the_tensor(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path)
    ck.save(Toy().fill(1), 1)
    st = tmp_path / "step_00000001" / "state.safetensors"
    man = json.loads((tmp_path / "step_00000001" / "manifest.json").read_text())
    off = man["files"]["state.safetensors"]["data_offset"]
    _flip_bit(st, off + 1)  # inside the first (largest-itemsize-first) tensor
    with pytest.raises(CorruptCheckpointError, match=r"checksum mismatch in tensor\(s\) 'model\.") as e:
        tk.load(tmp_path / "step_00000001")
    assert "state.safetensors" in str(e.value)


def test_resave_same_step_replaces_it(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path)
    ck.save(Toy().fill(1), 7)
    ck.save(Toy().fill(2), 7)
    assert steps_on_disk(tmp_path) == [".lock", "step_00000007"]
    t = Toy()
    assert ck.restore(t) == 7 and t.matches(2)


def test_leftovers_cleaned_at_start(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path)
    ck.save(Toy().fill(1), 1)
    ck.save(Toy().fill(2), 2)
    ck.close()
    # an interrupted save, an interrupted delete, and a replace that died between renames
    (tmp_path / ".tmp-step_00000003-abcd1234").mkdir()
    (tmp_path / ".tmp-step_00000003-abcd1234" / "state.safetensors").write_bytes(b"partial")
    os.rename(tmp_path / "step_00000001", tmp_path / ".del-step_00000001-00000000")
    os.rename(tmp_path / "step_00000002", tmp_path / ".old-step_00000002-11111111")
    ck = Checkpointer(tmp_path)
    assert steps_on_disk(tmp_path) == [".lock", "step_00000002"]
    t = Toy()
    assert ck.restore(t) == 2 and t.matches(2)


def test_trainstate_round_trip(tmp_path: Path) -> None:
    TrainState = pytest.importorskip("torchkeep").__dict__.get("TrainState")
    if TrainState is None:
        pytest.skip("tk.TrainState not available")
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    extra = {"epoch": 3}
    ck = Checkpointer(tmp_path, async_save=True)
    ck.save(TrainState(model=model, opt=opt, extra=extra), 3)
    after_save = torch.rand(3)
    model2 = torch.nn.Linear(4, 2)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    extra2 = {"epoch": 0}
    assert ck.restore(TrainState(model=model2, opt=opt2, extra=extra2)) == 3
    assert torch.equal(model2.weight, model.weight)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert extra2 == {"epoch": 3}
    assert torch.equal(torch.rand(3), after_save)  # RNG restored to the moment of save


def test_object_store_commit_marker(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    import fsspec

    url = f"memory://tk-test-{os.getpid()}-{tmp_path.name}/run"
    fs = fsspec.filesystem("memory")
    ck = Checkpointer(url, keep_last=2)
    for s in (1, 2, 3):
        ck.save(Toy().fill(s), s)
    root = url[len("memory://") :]
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/" + root.lstrip("/"), detail=False))
    assert names == [".lock", "step_00000002", "step_00000003"]
    # a save that died before its marker: not a checkpoint, cleaned at next start
    fs.makedirs(f"/{root}/step_00000004", exist_ok=True)
    fs.pipe(f"/{root}/step_00000004/state.safetensors", b"partial")
    t = Toy()
    assert ck.restore(t) == 3 and t.matches(3)
    ck.close()
    ck = Checkpointer(url)
    assert not fs.exists(f"/{root}/step_00000004")
    assert [r.step for r in ck.checkpoints()] == [2, 3]
    ck.close()
    fs.rm("/" + root.split("/")[0], recursive=True)


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_mixed_tensor_sizes_and_dtypes_verify(tmp_path: Path, async_save: bool) -> None:
    """Pins the writer-hook contract the checksums rely on: every tensor's bytes, in file order."""
    g = torch.Generator().manual_seed(0)
    tree = {
        "tiny": [torch.randn(i, generator=g) for i in range(0, 40)],
        "ints": torch.arange(7, dtype=torch.int16),
        "bools": torch.tensor([True, False, True]),
        "half": torch.randn(33, 3, generator=g).half(),
        "big": torch.randn(300_000, generator=g),
        "i64": torch.arange(5, dtype=torch.int64),
        "empty": torch.empty(0, 4),
        "view": torch.randn(10, 10, generator=g).t(),
    }
    ck = Checkpointer(tmp_path, async_save=async_save)
    ck.save(tree, 1)
    ck.wait()
    from torchkeep.manager import verify_step
    from torchkeep._io.fs import resolve

    assert verify_step(resolve(str(tmp_path / "step_00000001")), load=True).ok
    out: dict = {}
    assert ck.restore(out) == 1
    from _helpers import assert_tree_equal

    assert_tree_equal(tree, out)


def test_restore_into_the_wrong_kind_of_object_names_the_step_and_the_way_out(tmp_path):
    import torchkeep as tk

    model = torch.nn.Linear(4, 2)
    state = tk.TrainState(model=model, opt=torch.optim.SGD(model.parameters(), lr=0.1))
    with Checkpointer(tmp_path / "run") as ck:
        ck.save(state, 3)
        with pytest.raises(tk.StateMismatchError) as e:
            ck.restore(torch.nn.Linear(4, 2))  # the TrainState's checkpoint into a bare module
    msg = str(e.value)
    assert "step_00000003" in msg and "['model', 'opt']" in msg and "tk.load_into(model" in msg
    other = torch.nn.Linear(4, 2)
    tk.load_into(other, tmp_path / "run" / "step_00000003")  # the way out it names works
    assert torch.equal(other.weight, model.weight)


def test_loading_a_run_directory_points_at_its_steps(tmp_path):
    import torchkeep as tk

    with Checkpointer(tmp_path / "run") as ck:
        for s in (1, 2):
            ck.save(torch.nn.Linear(2, 2), s)
    with pytest.raises(tk.FormatError, match=r"Checkpointer run directory \(2 step folder\(s\)\).*step_00000002.*torchkeep ls"):
        tk.load(tmp_path / "run")
