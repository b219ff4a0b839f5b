"""Hugging Face sharded folders: written by torchkeep and by transformers, read back exactly."""

from __future__ import annotations

import json
import os

import pytest
import safetensors.torch as st
import torch
from _helpers import assert_tree_equal

import torchkeep as tk


def _sd():
    return {f"layers.{i}.weight": torch.randn(64, 64) for i in range(6)} | {"head.bias": torch.randn(3)}


def test_write_shards_and_index(tmp_path):
    sd = _sd()
    out = tmp_path / "ckpt"
    tk.save(sd, out, max_shard_size="40KB")  # 16 KiB tensors: two per shard
    names = sorted(os.listdir(out))
    assert names[-1] == "model.safetensors.index.json"
    shards = [n for n in names if n.endswith(".safetensors")]
    assert shards == [f"model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in sd.values())
    assert set(index["weight_map"]) == set(sd)
    for shard in shards:  # each shard is a plain safetensors file within the limit
        part = st.load_file(out / shard)
        assert sum(t.numel() * 4 for t in part.values()) <= 40_000
    assert_tree_equal(sd, tk.load(out))
    assert_tree_equal(sd, tk.load(out / "model.safetensors.index.json"))
    info = tk.inspect(out)
    assert info.format == "hf-sharded" and info.num_tensors == len(sd)
    assert {t.file for t in info.tensors} == set(shards)


def test_overwrite_replaces_shards_and_keeps_other_files(tmp_path):
    out = tmp_path / "ckpt"
    tk.save(_sd(), out, max_shard_size="20KB")
    (out / "config.json").write_text("{}")
    sd2 = {"only": torch.ones(3)}
    tk.save(sd2, out, max_shard_size="1GB")
    assert sorted(os.listdir(out)) == ["config.json", "model-00001-of-00001.safetensors", "model.safetensors.index.json"]
    assert_tree_equal(sd2, tk.load(out))
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_saving_to_an_existing_folder_writes_shards_into_it(tmp_path):
    """A Hugging Face model folder (config.json, no weights yet) is a folder target without max_shard_size."""
    out = tmp_path / "hf-model"
    out.mkdir()
    (out / "config.json").write_text('{"hidden": 4}')
    sd = _sd()
    tk.save(sd, out)
    assert sorted(os.listdir(out)) == ["config.json", "model-00001-of-00001.safetensors", "model.safetensors.index.json"]
    assert_tree_equal(sd, tk.load(out))


def test_saving_into_a_checkpointer_step_is_refused(tmp_path):
    with tk.Checkpointer(tmp_path / "run") as ck:
        ck.save(torch.nn.Linear(2, 2), 1)
    step = tmp_path / "run" / "step_00000001"
    before = sorted(os.listdir(step))
    with pytest.raises(tk.TorchkeepError, match="Checkpointer step folder"):
        tk.save({"w": torch.ones(2)}, step)
    assert sorted(os.listdir(step)) == before


def test_missing_shard_is_named(tmp_path):
    out = tmp_path / "ckpt"
    tk.save(_sd(), out, max_shard_size="40KB")
    os.unlink(out / "model-00002-of-00003.safetensors")
    with pytest.raises(tk.CorruptCheckpointError, match="model-00002-of-00003.safetensors"):
        tk.load(out)


def test_index_pointing_outside_folder_is_refused(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../secret.safetensors"}}))
    with pytest.raises(tk.CorruptCheckpointError, match="outside the folder"):
        tk.load(out)


def test_bad_size_string(tmp_path):
    with pytest.raises(ValueError, match="cannot read size"):
        tk.save(_sd(), tmp_path / "x", max_shard_size="lots")


def _tiny_bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    return BertModel(cfg)


def test_reads_transformers_safetensors_shards(tmp_path):
    model = _tiny_bert()
    model.save_pretrained(tmp_path / "hf", max_shard_size="20KB", safe_serialization=True)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    back = tk.load(tmp_path / "hf")
    ref = model.state_dict()
    for k in back:
        assert torch.equal(back[k], ref[k]), k
    assert set(back) <= set(ref)


def test_transformers_reads_torchkeep_shards(tmp_path):
    from transformers import BertModel

    model = _tiny_bert()
    model.config.save_pretrained(tmp_path / "out")
    tk.save(model, tmp_path / "out", max_shard_size="20KB")
    again = BertModel.from_pretrained(tmp_path / "out")
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
