"""torchkeep inspect / convert: output, exit codes, verification, never overwriting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import safetensors.torch as st
import torch

import torchkeep as tk
from torchkeep.cli import main


def _ckpt(tmp_path):
    model = torch.nn.ModuleDict({"layers": torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)]), "head": torch.nn.Linear(4, 2)})
    p = tmp_path / "ckpt.safetensors"
    tk.save({"state_dict": model.state_dict(), "epoch": 5}, p, metadata={"run": "r1"})
    return p, model


def test_inspect_table_groups_layers(tmp_path, capsys):
    p, _ = _ckpt(tmp_path)
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "state_dict.layers.*" in out and "{0..2}" in out
    assert "epoch = 5" in out and "run: r1" in out
    assert "total: 8 tensors, 70 params" in out


def test_inspect_json(tmp_path, capsys):
    p, _ = _ckpt(tmp_path)
    assert main(["inspect", str(p), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["format"] == "safetensors" and d["num_tensors"] == 8 and d["values"] == {"epoch": 5}
    assert {"name": "state_dict.head.bias", "shape": [2], "dtype": "float32", "nbytes": 8} in d["tensors"]


def test_inspect_bad_input_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a checkpoint")
    r = subprocess.run([sys.executable, "-m", "torchkeep", "inspect", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and str(bad) in r.stderr and "Traceback" not in r.stderr


def test_convert_key_prefix_dtype_verified(tmp_path, capsys):
    p, model = _ckpt(tmp_path)
    dst = tmp_path / "out.safetensors"
    assert main(["convert", str(p), str(dst), "--key", "state_dict", "--add-prefix", "module.", "--dtype", "bf16"]) == 0
    assert "verified bit-equal" in capsys.readouterr().out
    out = st.load_file(dst)
    assert set(out) == {"module." + k for k in model.state_dict()}
    for k, v in model.state_dict().items():
        assert torch.equal(out["module." + k], v.to(torch.bfloat16))
    back = tmp_path / "back.safetensors"
    assert main(["convert", str(dst), str(back), "--strip-prefix", "module."]) == 0
    assert set(st.load_file(back)) == set(model.state_dict())


def test_convert_to_shards_and_refuses_overwrite(tmp_path, capsys):
    p, _ = _ckpt(tmp_path)
    out = tmp_path / "sharded"
    assert main(["convert", str(p), str(out), "--key", "state_dict", "--max-shard-size", "100"]) == 0
    assert len(list(out.glob("*.safetensors"))) > 1
    before = sorted(x.name for x in out.iterdir())
    assert main(["convert", str(p), str(out), "--key", "state_dict"]) == 2
    assert "--force" in capsys.readouterr().err
    assert sorted(x.name for x in out.iterdir()) == before


def test_convert_unknown_key_lists_choices(tmp_path, capsys):
    p, _ = _ckpt(tmp_path)
    assert main(["convert", str(p), str(tmp_path / "o.safetensors"), "--key", "model"]) == 2
    err = capsys.readouterr().err
    assert "no key 'model'" in err and "state_dict" in err and "epoch" in err


@pytest.mark.parametrize("argv", [[], ["bogus"]])
def test_bad_usage_exits_2(argv):
    with pytest.raises(SystemExit) as e:
        rc = main(argv)
        raise SystemExit(rc)
    assert e.value.code == 2
