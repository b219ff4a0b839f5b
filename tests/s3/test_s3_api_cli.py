"""load_into, sharded folders and the inspect/convert commands on s3:// URLs (moto on 127.0.0.1)."""

from __future__ import annotations

import json

import pytest
import torch
from _helpers import assert_tree_equal

import torchkeep as tk
from torchkeep.cli import main

pytestmark = pytest.mark.s3


def _fs():
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    return fs


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def test_load_into_from_s3(s3_bucket):
    src = _model(1)
    url = f"{s3_bucket}/w/model.safetensors"
    tk.save({f"module.{k}": v for k, v in src.state_dict().items()}, url)  # a DDP-style prefix
    dst = _model(2)
    report = tk.load_into(dst, url)
    assert len(report.loaded) == 4 and not report.missing
    assert_tree_equal(src.state_dict(), dst.state_dict())


def test_sharded_folder_on_s3(s3_bucket):
    sd = {f"layer{i}.weight": torch.randn(64, 64) for i in range(6)}  # 16 KiB each
    url = f"{s3_bucket}/hf/model"
    tk.save(sd, url, max_shard_size="40KB", metadata={"note": "s3"})
    names = sorted(p.rsplit("/", 1)[-1] for p in _fs().ls(url, detail=False))
    assert names == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)] + ["model.safetensors.index.json"]
    assert_tree_equal(sd, tk.load(url))
    info = tk.inspect(url)
    assert info.format == "hf-sharded" and info.num_tensors == 6
    model = torch.nn.Module()
    for i in range(6):
        model.register_module(f"layer{i}", torch.nn.Linear(64, 64, bias=False))
    tk.load_into(model, url)
    assert_tree_equal(sd, model.state_dict())

    # saved again with bigger shards: the stale shards are gone, the folder reads as the new save
    _fs().pipe_file(f"{url}/config.json".split("://", 1)[1], b"{}")
    sd2 = {k: v + 1 for k, v in sd.items()}
    tk.save(sd2, url, max_shard_size="1MB")
    names = sorted(p.rsplit("/", 1)[-1] for p in _fs().ls(url, detail=False))
    assert names == ["config.json", "model-00001-of-00001.safetensors", "model.safetensors.index.json"]
    assert_tree_equal(sd2, tk.load(url))


def test_inspect_and_convert_cli_on_s3(s3_bucket, tmp_path, capsys):
    model = _model(3)
    src = f"{s3_bucket}/in/model.pt"
    tk.save(model, src)  # torch zip on S3
    assert main(["inspect", src, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "torch-zip" and len(info["tensors"]) == 4

    dst = f"{s3_bucket}/out/model.safetensors"
    assert main(["convert", src, dst, "--dtype", "bf16"]) == 0
    assert "verified bit-equal" in capsys.readouterr().out
    got = tk.load(dst)
    assert_tree_equal({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}, got)
    assert main(["convert", src, dst]) == 2  # never overwrites without --force
    assert "--force" in capsys.readouterr().err

    local = tmp_path / "local.safetensors"
    assert main(["convert", dst, str(local)]) == 0  # s3 -> local
    sharded = f"{s3_bucket}/out/sharded"
    assert main(["convert", str(local), sharded, "--max-shard-size", "5KB"]) == 0  # local -> s3 sharded
    capsys.readouterr()
    assert_tree_equal(got, tk.load(sharded))
    assert main(["inspect", sharded]) == 0
    assert "hf-sharded" in capsys.readouterr().out


def test_missing_s3_object_cli_message(s3_bucket, capsys):
    assert main(["inspect", f"{s3_bucket}/nope.safetensors"]) == 2
    err = capsys.readouterr().err
    assert "nope.safetensors" in err and "not found" in err


def test_diff_average_and_whole_model_on_s3(s3_bucket, capsys):
    a, b = _model(4), _model(5)
    ua, ub, avg = f"{s3_bucket}/d/a.safetensors", f"{s3_bucket}/d/b.safetensors", f"{s3_bucket}/d/avg.safetensors"
    tk.save(a, ua)
    tk.save(b, ub)
    assert main(["diff", ua, ua]) == 0
    assert main(["diff", ua, ub, "--json"]) == 1  # values differ
    capsys.readouterr()
    assert main(["average", ua, ub, "-o", avg]) == 0
    got = tk.load(avg)
    want = {k: (a.state_dict()[k] + b.state_dict()[k]) / 2 for k in got}
    for k in want:
        torch.testing.assert_close(got[k], want[k])

    url = f"{s3_bucket}/whole/model.safetensors"
    tk.save_model(a, url)
    rebuilt = tk.load_model(url)
    assert_tree_equal(a.state_dict(), rebuilt.state_dict())


def test_trailing_slash_url_saves_a_sharded_folder(s3_bucket):
    sd = {"a": torch.randn(10), "b": torch.randn(3)}
    url = f"{s3_bucket}/folder/"
    tk.save(sd, url)
    names = sorted(p.rsplit("/", 1)[-1] for p in _fs().ls(url, detail=False))
    assert names == ["model-00001-of-00001.safetensors", "model.safetensors.index.json"]
    assert_tree_equal(sd, tk.load(url))
