"""Fine-tuning helpers on locally built models: a small ResNet-like CNN and a transformer classifier."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import torchkeep as tk
from _helpers import tensor_bytes


# ---------------------------------------------------------------- models


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetLike(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(Block(4, 4))
        self.layer2 = nn.Sequential(Block(4, 8, 2))
        self.layer3 = nn.Sequential(Block(8, 8))
        self.layer4 = nn.Sequential(Block(8, 16, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TransformerClassifier(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.embed(tokens))).mean(1))


class VGGLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Dropout(0.0), nn.Linear(12, 7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8)


def tokens(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 50, (n, 6))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def bitequal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(tensor_bytes(a), tensor_bytes(b))


def frozen_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if not p.requires_grad]


STEM = ["conv1.weight", "bn1.weight", "bn1.bias"]
LAYER1 = [
    "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias",
    "layer1.0.conv2.weight", "layer1.0.bn2.weight", "layer1.0.bn2.bias",
]
LAYER2 = [
    "layer2.0.conv1.weight", "layer2.0.bn1.weight", "layer2.0.bn1.bias",
    "layer2.0.conv2.weight", "layer2.0.bn2.weight", "layer2.0.bn2.bias",
    "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight", "layer2.0.downsample.1.bias",
]


# ---------------------------------------------------------------- freeze / unfreeze: selection


def test_freeze_up_to_exact_names():
    m = ResNetLike()
    r = tk.freeze(m, up_to="layer2")
    assert r.changed == STEM + LAYER1 + LAYER2
    assert frozen_names(m) == STEM + LAYER1 + LAYER2
    assert r.count == len(r) == 18
    assert r.numel == sum(m.get_parameter(n).numel() for n in r.changed)
    assert r.frozen == r.numel and r.trainable == sum(p.numel() for p in m.parameters()) - r.numel
    assert r.unchanged == [] and r.batchnorms == []


def test_freeze_first_k_children_counts_every_child():
    m = ResNetLike()
    assert tk.freeze(m, first=2).changed == STEM  # conv1, bn1
    m = ResNetLike()
    assert tk.freeze(m, first=4).changed == STEM + LAYER1  # conv1, bn1, relu, layer1
    assert tk.freeze(ResNetLike(), first=0).changed == []


def test_freeze_dotted_up_to():
    m = TransformerClassifier()
    r = tk.freeze(m, up_to="encoder.layers.0")
    assert r.changed[0] == "embed.weight"
    assert all(n == "embed.weight" or n.startswith("encoder.layers.0.") for n in r.changed)
    assert "encoder.layers.0.norm2.bias" in r.changed
    assert not any(n.startswith("encoder.layers.1.") for n in frozen_names(m))


def test_freeze_globs_and_module_paths_union():
    m = ResNetLike()
    r = tk.freeze(m, "layer1", "*.bias")
    biases = [n for n, _ in m.named_parameters() if n.endswith(".bias")]
    expected = [n for n, _ in m.named_parameters() if n.startswith("layer1.") or n in biases]
    assert r.changed == expected
    assert "fc.bias" in r.changed and "fc.weight" not in r.changed


def test_freeze_glob_plus_region():
    m = ResNetLike()
    r = tk.freeze(m, "fc.*", first=2)
    assert r.changed == STEM + ["fc.weight", "fc.bias"]
    assert r.selector == "'fc.*' + first=2 (conv1, bn1)"


def test_freeze_whole_model_then_unfreeze_part():
    m = TransformerClassifier()
    r = tk.freeze(m)
    assert r.selector == "whole model" and r.trainable == 0
    assert frozen_names(m) == [n for n, _ in m.named_parameters()]
    again = tk.freeze(m, "head")
    assert again.changed == [] and again.unchanged == ["head.weight", "head.bias"]
    u = tk.unfreeze(m, "head", "norm")
    assert u.changed == ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    assert u.action == "unfreeze"
    assert tk.unfreeze(m).changed == [n for n, p in m.named_parameters()][: -4]


def test_root_parameters_only_by_pattern():
    class WithToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(4))
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

    m = WithToken()
    assert tk.freeze(m, first=1).changed == ["a.weight", "a.bias"]
    assert tk.freeze(m, "cls_token").changed == ["cls_token"]


def test_freeze_clears_grads_of_frozen():
    m = ResNetLike()
    m(images()).sum().backward()
    tk.freeze(m, up_to="layer1")
    assert all(m.get_parameter(n).grad is None for n in STEM + LAYER1)
    assert m.fc.weight.grad is not None


# ---------------------------------------------------------------- errors


def test_unknown_pattern_error_snapshot():
    m = ResNetLike()
    with pytest.raises(tk.ArchitectureError) as e:
        tk.freeze(m, "layer9.*", "*.bias", "laye1")
    assert isinstance(e.value, ValueError)
    assert str(e.value) == (
        "freeze: 2 patterns match no parameter of ResNetLike: 'layer9.*', 'laye1'.\n"
        "Top-level children of ResNetLike: conv1 (Conv2d), bn1 (BatchNorm2d), relu (ReLU), "
        "layer1 (Sequential), layer2 (Sequential), layer3 (Sequential), layer4 (Sequential), "
        "avgpool (AdaptiveAvgPool2d), fc (Linear).\n"
        "Hint: 'laye1' -> did you mean 'layer1'?\n"
        "Fix: use globs on parameter names ('layer1.*', '*.bias') or module paths ('layer1'); "
        "list them with model.named_parameters()."
    )
    assert frozen_names(m) == []  # nothing changed on error


def test_bad_up_to_and_first():
    m = ResNetLike()
    with pytest.raises(tk.ArchitectureError, match=r"up_to='layer5' is not a module of ResNetLike\. Did you mean 'layer4'\?"):
        tk.unfreeze(m, up_to="layer5")
    with pytest.raises(tk.ArchitectureError, match=r"first=12, but ResNetLike has only 9 top-level children"):
        tk.freeze(m, first=12)
    with pytest.raises(tk.ArchitectureError, match="non-negative int"):
        tk.freeze(m, first=-1)
    with pytest.raises(tk.ArchitectureError, match="not both"):
        tk.freeze(m, first=1, up_to="layer1")


# ---------------------------------------------------------------- training only touches trainable


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
], ids=["sgd", "adamw"])
@pytest.mark.parametrize("kind", ["resnet", "transformer"])
def test_training_changes_only_trainable(make_opt, kind):
    m, x = (ResNetLike(), images) if kind == "resnet" else (TransformerClassifier(), tokens)
    # an optimizer built before freezing still holds every parameter, some with stale grads
    opt = make_opt(m.parameters())
    m(x()).sum().backward()
    opt.step()
    tk.freeze(m, up_to="layer2" if kind == "resnet" else "encoder.layers.0")
    frozen = set(frozen_names(m))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for _ in range(2):
        opt.zero_grad()
        m(x()).pow(2).mean().backward()
        opt.step()
    for n, p in m.named_parameters():
        if n in frozen:
            assert bitequal(p, before[n]), n
        else:
            assert not torch.equal(p, before[n]), n


def test_training_with_param_groups_changes_only_trainable():
    m = ResNetLike()
    tk.replace_head(m, 5)
    tk.freeze(m, up_to="layer3", bn_eval=True)
    before = snapshot(m)
    opt = torch.optim.AdamW(tk.param_groups(m, lr=1e-2, backbone_lr_mult=0.1, weight_decay=0.05))
    m.train()
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(m(images()), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
    after = m.state_dict()
    for k, v in before.items():
        still = k.split(".")[0] in {"conv1", "bn1", "layer1", "layer2", "layer3"}
        assert bitequal(after[k], v) == still, k  # params and BN stats alike


# ---------------------------------------------------------------- BatchNorm in eval mode


def test_bn_eval_survives_train():
    m = ResNetLike()
    r = tk.freeze(m, up_to="layer2", bn_eval=True)
    assert r.batchnorms == ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer2.0.bn1", "layer2.0.bn2", "layer2.0.downsample.1"]
    frozen_stats = {k: v.clone() for k, v in m.state_dict().items() if k.split(".")[0] in {"bn1", "layer1", "layer2"} and not k.endswith(("weight", "bias"))}
    other_stats = {k: v.clone() for k, v in m.state_dict().items() if k.startswith("layer3") and "running_mean" in k}
    assert len(frozen_stats) == 18 and other_stats
    m.train()
    assert m.bn1.training  # .train() flips the flag ...
    for _ in range(3):
        m(images() * 3 + 1)
    assert not m.bn1.training and m.layer3[0].bn1.training  # ... the forward puts it back
    sd = m.state_dict()
    for k, v in frozen_stats.items():
        assert bitequal(sd[k], v), k
    for k, v in other_stats.items():
        assert not torch.equal(sd[k], v), k
    # frozen BN normalises with its running statistics, as in eval mode
    x = torch.randn(4, 4, 8, 8) * 5
    ref = nn.functional.batch_norm(x, m.bn1.running_mean, m.bn1.running_var, m.bn1.weight, m.bn1.bias, False, 0.0, m.bn1.eps)
    m.train()
    assert torch.allclose(m.bn1(x), ref)


def test_bn_eval_copies_pickles_and_unfreeze_releases():
    m = ResNetLike()
    tk.freeze(m, "layer1", bn_eval=True)
    assert tk.freeze(m, "layer1", bn_eval=True).batchnorms == []  # idempotent: one hook each
    assert len(m.layer1[0].bn1._forward_pre_hooks) == 1
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        mean = clone.layer1[0].bn1.running_mean.clone()
        clone.train()
        clone(images())
        assert bitequal(clone.layer1[0].bn1.running_mean, mean)
    m.train()
    u = tk.unfreeze(m, "layer1.*")
    assert u.batchnorms == ["layer1.0.bn1", "layer1.0.bn2"]
    assert m.layer1[0].bn1.training and len(m.layer1[0].bn1._forward_pre_hooks) == 0
    mean = m.layer1[0].bn1.running_mean.clone()
    m(images())
    assert not torch.equal(m.layer1[0].bn1.running_mean, mean)


def test_bn_without_eval_flag_keeps_updating():
    m = ResNetLike()
    tk.freeze(m, up_to="layer1")
    mean = m.bn1.running_mean.clone()
    m.train()
    m(images())
    assert not torch.equal(m.bn1.running_mean, mean)


# ---------------------------------------------------------------- heads


def test_replace_head_fc_keeps_dtype_and_device():
    m = ResNetLike().to(torch.float64)
    tk.freeze(m)
    old = m.fc
    r = tk.replace_head(m, 5)
    assert r.path == "fc" and r.old is old and m.fc is r.new
    assert (r.in_features, r.num_outputs) == (16, 5)
    assert m.fc.weight.dtype == torch.float64 and m.fc.weight.device == old.weight.device
    assert m.fc.weight.requires_grad and m.fc.bias is not None
    assert m(images().double()).shape == (4, 5)
    assert str(r) == "replaced fc: Linear(16 -> 10) with Linear(16 -> 5), float64 on cpu"


def test_replace_head_sequential_classifier():
    m = VGGLike()
    r = tk.replace_head(m, 2)
    assert r.path == "classifier.3" and isinstance(m.classifier[3], nn.Linear)
    assert m.classifier[3].out_features == 2 and m.classifier[0].out_features == 12
    assert m(images()).shape == (4, 2)


def test_replace_head_transformer_head_and_no_bias():
    m = TransformerClassifier()
    assert tk.find_head(m) == "head"
    assert tk.replace_head(m, 9).path == "head"
    assert m(tokens()).shape == (4, 9)
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    r = tk.replace_head(seq, 6)
    assert r.path == "2" and seq[2].bias is None and seq(torch.randn(2, 4)).shape == (2, 6)


def test_replace_head_ambiguous_names_snapshot():
    m = ResNetLike()
    m.classifier = nn.Linear(16, 4)
    with pytest.raises(tk.ArchitectureError) as e:
        tk.replace_head(m, 2)
    assert str(e.value) == (
        "replace_head: cannot decide which module of ResNetLike is the classifier head; "
        "2 candidates: 'fc' (Linear 16->10), 'classifier' (Linear 16->4).\n"
        "Fix: name it, e.g. path='fc' (head='fc' for param_groups)."
    )
    assert tk.replace_head(m, 2, path="classifier").path == "classifier"


def test_replace_head_parallel_heads_and_none():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 8)
            self.cls = nn.Linear(8, 3)
            self.reg = nn.Linear(8, 1)

    with pytest.raises(tk.ArchitectureError, match=r"2 candidates: 'cls' \(Linear 8->3\), 'reg' \(Linear 8->1\)"):
        tk.replace_head(TwoHeads(), 2)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1, enable_nested_tensor=False)
    with pytest.raises(tk.ArchitectureError, match=r"found no classifier head in TransformerEncoder.*'layers\.0\.norm2' \(LayerNorm\)"):
        tk.replace_head(enc, 2)
    with pytest.raises(tk.ArchitectureError, match="not a module"):
        tk.replace_head(ResNetLike(), 2, path="nope")
    with pytest.raises(tk.ArchitectureError, match="positive int"):
        tk.replace_head(ResNetLike(), 0)


def test_feature_extractor_shapes_and_isolation():
    m = ResNetLike()
    fx = tk.feature_extractor(m)
    assert isinstance(fx.fc, nn.Identity) and isinstance(m.fc, nn.Linear)
    assert all(not p.requires_grad for p in fx.parameters())
    assert all(p.requires_grad for p in m.parameters())
    with torch.no_grad():
        assert fx(images(5)).shape == (5, 16)
    mean = fx.bn1.running_mean.clone()
    fx.train()
    fx(images())
    assert bitequal(fx.bn1.running_mean, mean)
    t = TransformerClassifier()
    assert tk.feature_extractor(t, inplace=True) is t and isinstance(t.head, nn.Identity)
    assert t(tokens(3)).shape == (3, 16)
    v = tk.feature_extractor(VGGLike(), frozen=False)
    assert v(images(2)).shape == (2, 12) and all(p.requires_grad for p in v.parameters())


# ---------------------------------------------------------------- param_groups


def check_once(model: nn.Module, groups: list[dict]) -> None:
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


def test_param_groups_resnet():
    m = ResNetLike()
    tk.freeze(m, first=2)
    groups = tk.param_groups(m, lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.05)
    check_once(m, groups)
    by = {g["name"]: g for g in groups}
    assert list(by) == ["backbone.decay", "backbone.no_decay", "head.decay", "head.no_decay"]
    names = {id(p): n for n, p in m.named_parameters()}
    assert [names[id(p)] for p in by["head.decay"]["params"]] == ["fc.weight"]
    assert [names[id(p)] for p in by["head.no_decay"]["params"]] == ["fc.bias"]
    assert by["backbone.decay"]["lr"] == pytest.approx(1e-4) and by["head.decay"]["lr"] == 1e-3
    assert by["head.no_decay"]["weight_decay"] == 0.0 and by["backbone.decay"]["weight_decay"] == 0.05
    no_decay = {names[id(p)] for p in by["backbone.no_decay"]["params"]}
    assert no_decay == {n for n, p in m.named_parameters() if ".bn" in n or "downsample.1" in n} - set(STEM)
    assert all(p.ndim == 4 for p in by["backbone.decay"]["params"])  # only conv weights decay
    torch.optim.AdamW(groups)  # any optimizer takes them
    torch.optim.SGD(groups, lr=0.5)


def test_param_groups_transformer_norms_and_biases():
    m = TransformerClassifier()
    groups = tk.param_groups(m, lr=1e-3, weight_decay=0.01)
    check_once(m, groups)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    names = {id(p): n for n, p in m.named_parameters()}
    nd = sorted(names[id(p)] for p in groups[1]["params"])
    assert "encoder.layers.0.self_attn.in_proj_bias" in nd and "encoder.layers.1.norm2.weight" in nd
    assert "norm.weight" in nd and "head.bias" in nd
    assert all("norm" in n or n.endswith("bias") for n in nd)
    decay = {names[id(p)] for p in groups[0]["params"]}
    assert decay == {n for n in names.values() if n not in nd}
    assert "embed.weight" in decay and "encoder.layers.0.self_attn.in_proj_weight" in decay


def test_param_groups_custom_head_and_no_decay():
    m = TransformerClassifier()
    groups = tk.param_groups(m, lr=1.0, backbone_lr_mult=0.5, head=["norm", "head"], no_decay=())
    check_once(m, groups)
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [("backbone.decay", 0.5, len(list(m.parameters())) - 4), ("head.decay", 1.0, 4)]
    groups = tk.param_groups(m, lr=1.0, no_decay=["embed"])
    assert [len(g["params"]) for g in groups] == [len(list(m.parameters())) - 1, 1]
    with pytest.raises(tk.ArchitectureError, match=r"param_groups\(head=\.\.\.\): 1 pattern matches no parameter"):
        tk.param_groups(m, lr=1.0, head="classifier")
    tk.freeze(m)
    with pytest.raises(tk.ArchitectureError, match="no trainable parameters"):
        tk.param_groups(m, lr=1.0)


def test_param_groups_needs_a_head_only_to_split():
    enc = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    assert [g["name"] for g in tk.param_groups(enc, lr=0.1)] == ["decay", "no_decay"]
    with pytest.raises(tk.ArchitectureError, match="param_groups: found no classifier head"):
        tk.param_groups(enc, lr=0.1, backbone_lr_mult=0.1)


# ---------------------------------------------------------------- summary and reports


@pytest.mark.parametrize("depth", [1, 2, None])
def test_summary_totals(depth):
    m = ResNetLike()
    tk.freeze(m, up_to="layer2", bn_eval=True)
    s = tk.summary(m, depth=depth)
    params = list(m.parameters())
    assert s.total == sum(p.numel() for p in params)
    assert s.frozen == sum(p.numel() for p in params if not p.requires_grad)
    assert s.bytes == sum(p.numel() * p.element_size() for p in params)
    assert sum(r.total for r in s.rows) == s.total
    assert s.dtypes == {"float32": len(params)}
    d = s.to_dict()
    assert d["total"] == s.total and d["rows"][0]["module"] == "conv1"
    if depth == 1:
        assert [r.module for r in s.rows] == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
        assert s.rows[3].frozen == s.rows[3].total and s.rows[4].frozen == 0
        assert s.rows[1].note == "bn eval"


def test_summary_mixed_dtypes_tied_and_str_without_terminal():
    m = TransformerClassifier()
    m.head.to(torch.float16)
    m.extra = nn.Linear(16, 50, bias=False)
    m.extra.weight = m.embed.weight  # tied: counted once
    s = tk.summary(m, depth=1)
    assert s.total == sum(p.numel() for p in m.parameters())
    assert s.dtypes == {"float32": len(list(m.parameters())) - 2, "float16": 2}
    text = str(s)
    assert "TransformerClassifier (train mode)" in text and "float16" in text
    assert "\x1b[" not in text  # no terminal codes
    assert text.splitlines()[-1] == (
        f"{s.total:,} parameters: {s.total:,} trainable (100.0%), 0 frozen; "
        f"{s.bytes / 1000:.1f} KB of parameters, 0 B of buffers"
    )


def test_summary_snapshot():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    tk.freeze(m, first=2, bn_eval=True)
    assert str(tk.summary(m)) == (
        "Sequential (train mode)\n"
        "┏━━━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━━┳━━━━━━━━┳━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━┓\n"
        "┃ module ┃ type        ┃ trainable ┃ frozen ┃ bytes ┃ dtypes     ┃ note    ┃\n"
        "┡━━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━━╇━━━━━━━━╇━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━┩\n"
        "│ 0      │ Linear      │         0 │     16 │  64 B │ float32    │         │\n"
        "│ 1      │ BatchNorm1d │         0 │      8 │  32 B │ float32    │ bn eval │\n"
        "│ 2      │ Linear      │        10 │      0 │  40 B │ float32    │         │\n"
        "├────────┼─────────────┼───────────┼────────┼───────┼────────────┼─────────┤\n"
        "│ total  │             │        10 │     24 │ 136 B │ float32 x6 │         │\n"
        "└────────┴─────────────┴───────────┴────────┴───────┴────────────┴─────────┘\n"
        "34 parameters: 10 trainable (29.4%), 24 frozen; 136 B of parameters, 40 B of buffers\n"
    )


def test_freeze_report_snapshot():
    m = ResNetLike()
    r = tk.freeze(m, first=2, bn_eval=True)
    assert repr(r) == (
        "FreezeReport(froze 3 parameter tensors (116 elements), selected by first=2 (conv1, bn1)\n"
        "  conv1: weight\n"
        "  bn1: weight, bias\n"
        "  BatchNorm kept in eval mode (frozen statistics): 1 (bn1)\n"
        f"  model now: {r.trainable:,} trainable, 116 frozen elements)"
    )
    assert r.to_dict()["changed"] == STEM


def test_public_names():
    for name in ("freeze", "unfreeze", "replace_head", "find_head", "param_groups", "summary",
                 "feature_extractor", "FreezeReport", "HeadReplacement", "ModelSummary"):
        assert name in tk.__all__ and getattr(tk, name) is getattr(tk.finetune, name)
    buf = io.StringIO()
    from rich.console import Console

    Console(file=buf, width=100).print(tk.summary(ResNetLike()))  # renders via __rich__
    assert "layer1.0" in buf.getvalue()
