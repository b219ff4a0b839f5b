"""torchkeep diff / torchkeep average."""

from __future__ import annotations

import json

import pytest
import torch
from _keys_models import bit_equal

import torchkeep as tk
from torchkeep.cli import main


@pytest.fixture
def files(tmp_path):
    a = {"w": torch.randn(4, 3), "b": torch.zeros(3), "steps": torch.tensor([5]), "gone": torch.ones(1)}
    b = {"w": a["w"].clone(), "b": torch.full((3,), 0.25), "steps": torch.tensor([5]), "new": torch.ones(2)}
    b["w"][1, 2] += 2.0
    c = {"w": a["w"].clone(), "b": a["b"].clone(), "steps": torch.tensor([5]), "gone": torch.ones(2)}
    for name, sd in (("a", a), ("b", b), ("c", c)):
        tk.save(sd, tmp_path / f"{name}.safetensors")
    return tmp_path, a, b


def test_diff_identical_exits_0(files, capsys):
    d, _, _ = files
    assert main(["diff", str(d / "a.safetensors"), str(d / "a.safetensors")]) == 0
    assert "identical" in capsys.readouterr().out


def test_diff_lists_keys_shapes_and_largest_changes(files, capsys):
    d, a, b = files
    assert main(["diff", str(d / "a.safetensors"), str(d / "b.safetensors"), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["only_in_a"] == ["gone"] and out["only_in_b"] == ["new"]
    assert [r["key"] for r in out["value_changes"]] == ["w", "b"]  # largest first
    assert out["value_changes"][0]["max_abs"] == pytest.approx(2.0, rel=1e-6)
    assert out["value_changes"][1]["max_abs"] == 0.25 and out["value_changes"][1]["max_rel"] == float("inf")
    assert main(["diff", str(d / "a.safetensors"), str(d / "c.safetensors")]) == 1
    text = capsys.readouterr().out
    assert "shape/dtype" in text and "float32[1]" in text and "float32[2]" in text


def test_diff_unreadable_exits_2(files, capsys):
    d, _, _ = files
    assert main(["diff", str(d / "a.safetensors"), str(d / "nope.safetensors")]) == 2
    assert "nope.safetensors" in capsys.readouterr().err


def test_average(tmp_path, capsys):
    sds = [{"w": torch.randn(5, 5), "h": torch.randn(3).half(), "n": torch.tensor(3)} for _ in range(3)]
    paths = []
    for i, sd in enumerate(sds):
        tk.save({"state_dict": sd, "epoch": i}, tmp_path / f"{i}.safetensors")
        paths.append(str(tmp_path / f"{i}.safetensors"))
    out = tmp_path / "avg.safetensors"
    assert main(["average", *paths, "-o", str(out)]) == 0
    got = tk.load(out)
    for k in ("w", "h"):
        expected = (sum(sd[k].double() for sd in sds) / 3).to(sds[0][k].dtype)
        assert bit_equal(got[k], expected), k
    assert bit_equal(got["n"], torch.tensor(3))
    # never overwrites without --force; the output must not be an input
    assert main(["average", *paths, "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["average", *paths, "-o", paths[0], "--force"]) == 2


def test_average_refuses_mismatched_keys_and_unequal_ints(tmp_path, capsys):
    tk.save({"w": torch.ones(2), "x": torch.ones(1)}, tmp_path / "a.safetensors")
    tk.save({"w": torch.ones(3), "y": torch.ones(1)}, tmp_path / "b.safetensors")
    assert main(["average", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "-o", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "lacks 1 keys" in err and ": x" in err and ": y" in err and "w float32[2] vs float32[3]" in err
    tk.save({"n": torch.tensor(1)}, tmp_path / "c.safetensors")
    tk.save({"n": torch.tensor(2)}, tmp_path / "d.safetensors")
    args = ["average", str(tmp_path / "c.safetensors"), str(tmp_path / "d.safetensors"), "-o", str(tmp_path / "o.safetensors")]
    assert main(args) == 2
    assert "--ints first" in capsys.readouterr().err
    assert main(args + ["--ints", "first"]) == 0
    assert tk.load(tmp_path / "o.safetensors")["n"].item() == 1
