"""``file://`` and ``memory://`` URLs work wherever a path does: API, Checkpointer and CLI."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import torch
from _helpers import assert_tree_equal

import torchkeep as tk
from torchkeep.cli import main
from torchkeep.manager import Checkpointer


def _url(p) -> str:  # noqa: ANN001
    return "file://" + os.path.abspath(p)


def test_api_on_file_urls(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 2))
    url = _url(tmp_path / "m.safetensors")
    tk.save(model, url)
    assert (tmp_path / "m.safetensors").exists()  # the URL names the local file itself
    assert_tree_equal(model.state_dict(), tk.load(url))
    assert tk.inspect(url).num_tensors == 4
    other = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 2))
    tk.load_into(other, url)
    assert_tree_equal(model.state_dict(), other.state_dict())
    tk.save(model, _url(tmp_path / "m.pt"))
    assert_tree_equal(model.state_dict(), tk.load(_url(tmp_path / "m.pt")))
    tk.save(model, _url(tmp_path / "sharded"), max_shard_size="1KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert_tree_equal(model.state_dict(), tk.load(_url(tmp_path / "sharded")))


def test_checkpointer_and_cli_on_file_urls(tmp_path, capsys):
    run = _url(tmp_path / "run")
    with Checkpointer(run, keep_last=2) as ck:
        for s in (1, 2, 3):
            ck.save({"w": torch.full((4,), float(s))}, s, {"loss": 1.0 / s})
    assert sorted(os.listdir(tmp_path / "run")) == [".lock", "step_00000002", "step_00000003"]
    with Checkpointer(run) as ck:
        out: dict = {}
        assert ck.restore(out) == 3
    assert torch.equal(out["w"], torch.full((4,), 3.0))
    assert main(["ls", run, "--json"]) == 0
    assert [r["step"] for r in json.loads(capsys.readouterr().out)] == [2, 3]
    assert main(["verify", run]) == 0
    assert "2 verified" in capsys.readouterr().out
    assert main(["inspect", run + "/step_00000003"]) == 0
    assert "torchkeep-step" in capsys.readouterr().out
    dst = _url(tmp_path / "out.safetensors")
    assert main(["convert", run + "/step_00000003", dst]) == 0
    assert torch.equal(tk.load(dst)["w"], torch.full((4,), 3.0))


def test_checkpointer_on_memory_fs(capsys):
    pytest.importorskip("fsspec")
    run = f"memory://tk-{uuid.uuid4().hex[:8]}/run"
    with Checkpointer(run, keep_last=1) as ck:
        for s in (1, 2):
            ck.save({"w": torch.full((3,), float(s))}, s)
        assert [r.step for r in ck.checkpoints()] == [2]
        out: dict = {}
        assert ck.restore(out) == 2
    assert torch.equal(out["w"], torch.full((3,), 2.0))
    assert main(["verify", run]) == 0
    assert "1 verified" in capsys.readouterr().out
