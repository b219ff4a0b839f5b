"""load_into: every seed recipe, wrappers both ways, rename/suffix/partial/dry-run; bit-equal tensors."""

from __future__ import annotations

import pytest
import torch
from _keys_models import Backbone, Net, assert_same, bit_equal, perturbed, snapshot
from torch import nn

import torchkeep as tk
from torchkeep import KeyMismatchError


def test_dataparallel_file_into_plain_model(tmp_path):
    src = perturbed(Net())
    dp = {"module." + k: v for k, v in src.items()}
    model = Net()
    report = tk.load_into(model, dp)
    assert_same(model, src)
    assert report.ok and report.prefix == "stripped 'module.'"
    assert report.renamed == {"module." + k: k for k in src}
    # the same from a file (the lazy path: read straight into the parameters)
    tk.save(dp, tmp_path / "dp.safetensors")
    model2 = Net()
    ptrs = {k: v.data_ptr() for k, v in model2.state_dict().items()}
    tk.load_into(model2, tmp_path / "dp.safetensors")
    assert_same(model2, src)
    assert {k: v.data_ptr() for k, v in model2.state_dict().items()} == ptrs  # in place


def test_torch_saved_dataparallel_file(tmp_path):
    pytest.importorskip("torchkeep.formats.torchzip")
    src = perturbed(Net())
    torch.save({"module." + k: v for k, v in src.items()}, tmp_path / "dp.pth")
    model = Net()
    tk.load_into(model, tmp_path / "dp.pth", map_location="cpu")
    assert_same(model, src)


def test_plain_file_into_dataparallel_model():
    src = perturbed(Net())
    model = nn.DataParallel(Net())  # works on CPU: state_dict keys gain "module."
    assert all(k.startswith("module.") for k in model.state_dict())
    report = tk.load_into(model, src)
    assert report.prefix == "added 'module.'"
    assert_same(model.module, src)
    # and back: the DataParallel model's file into a plain model
    plain = Net()
    tk.load_into(plain, model.state_dict())
    assert_same(plain, src)


def test_multi_gpu_file_to_cpu(tmp_path):
    """Seed: trained on several GPUs (module. keys), loaded on a CPU-only machine."""
    src = perturbed(Net())
    tk.save({"module." + k: v for k, v in src.items()}, tmp_path / "multi.safetensors")
    model = Net()
    report = tk.load_into(model, tmp_path / "multi.safetensors", map_location="cpu")
    assert report.ok
    assert all(v.device.type == "cpu" for v in model.state_dict().values())
    assert_same(model, src)


@pytest.mark.gpu
def test_cuda_checkpoint_to_cpu_model_and_back():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    src = perturbed(Net())
    cuda_dp = {"module." + k: v.cuda() for k, v in src.items()}
    model = Net()
    tk.load_into(model, cuda_dp, map_location="cpu")
    assert_same(model, src)
    gpu_model = Net().cuda()
    tk.load_into(gpu_model, src)
    assert all(v.device.type == "cuda" for v in gpu_model.state_dict().values())
    assert_same(gpu_model.cpu(), src)


def _gan_checkpoint():
    G, D = Net(3), Backbone()
    optG, optD = torch.optim.Adam(G.parameters(), lr=1e-3), torch.optim.SGD(D.parameters(), lr=0.1, momentum=0.9)
    for model, opt in ((G, optG), (D, optD)):
        loss = sum(p.sum() for p in model.parameters())
        loss.backward()
        opt.step()
    return G, D, optG, optD, {
        "modelA_state_dict": G.state_dict(),
        "modelB_state_dict": D.state_dict(),
        "optimizerA_state_dict": optG.state_dict(),
        "optimizerB_state_dict": optD.state_dict(),
        "epoch": 7,
    }


def test_gan_two_models_two_optimizers(tmp_path, tree_equal):
    G, D, optG, optD, ckpt = _gan_checkpoint()
    tk.save(ckpt, tmp_path / "gan.safetensors")
    G2, D2 = Net(3), Backbone()
    fresh = snapshot(G2)
    with pytest.raises(KeyMismatchError) as e:
        tk.load_into(G2, tmp_path / "gan.safetensors")
    assert "'modelA_state_dict'" in str(e.value) and "'modelB_state_dict'" in str(e.value) and "key=" in str(e.value)
    assert_same(G2, fresh)
    rG = tk.load_into(G2, tmp_path / "gan.safetensors", key="modelA_state_dict")
    rD = tk.load_into(D2, tmp_path / "gan.safetensors", key="modelB_state_dict")
    assert rG.ok and rD.ok and rG.container == "modelA_state_dict"
    assert_same(G2, snapshot(G))
    assert_same(D2, snapshot(D))
    loaded = tk.load(tmp_path / "gan.safetensors")
    optG2, optD2 = torch.optim.Adam(G2.parameters(), lr=1e-3), torch.optim.SGD(D2.parameters(), lr=0.1, momentum=0.9)
    optG2.load_state_dict(loaded["optimizerA_state_dict"])
    optD2.load_state_dict(loaded["optimizerB_state_dict"])
    tree_equal(optG.state_dict(), optG2.state_dict())
    tree_equal(optD.state_dict(), optD2.state_dict())


def test_pretrained_dict_filtering_recipe():
    """Seed: pretrained_dict = {k: v for k, v in pretrained_dict.items() if k in model_dict}."""

    class Pretrained(Net):
        def __init__(self) -> None:
            super().__init__()
            self.aux = nn.Linear(4, 2)

    pretrained = Pretrained()
    for p in pretrained.parameters():
        p.data.add_(1)
    # the recipe, by hand
    ref = Net()
    model_dict = ref.state_dict()
    pretrained_dict = {k: v for k, v in pretrained.state_dict().items() if k in model_dict}
    model_dict.update(pretrained_dict)
    ref.load_state_dict(model_dict)
    # one call
    model = Net()
    report = tk.load_into(model, pretrained, strict=False)
    assert_same(model, snapshot(ref))
    assert sorted(report.unexpected) == ["aux.bias", "aux.weight"] and not report.missing


def test_strict_false_warm_start():
    """Seed: modelB.load_state_dict(torch.load(PATH), strict=False)."""
    src = perturbed(Net())

    class Bigger(Net):
        def __init__(self) -> None:
            super().__init__()
            self.extra = nn.Linear(10, 2)

    model = Bigger()
    before = snapshot(model)
    del src["bn.running_mean"]
    report = tk.load_into(model, src, strict=False)
    assert sorted(report.missing) == ["bn.running_mean", "extra.bias", "extra.weight"]
    assert_same(model, src)
    assert_same(model, before, ["bn.running_mean", "extra.weight", "extra.bias"])
    with pytest.raises(KeyMismatchError):
        tk.load_into(Bigger(), src)


def test_compiled_model_both_ways():
    src = perturbed(Net())
    compiled = torch.compile(Net())  # wrapping only; never run
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    r = tk.load_into(compiled, src)
    assert r.prefix == "added '_orig_mod.'"
    assert_same(compiled._orig_mod, src)
    plain = Net()
    r = tk.load_into(plain, compiled.state_dict())
    assert r.prefix == "stripped '_orig_mod.'"
    assert_same(plain, src)
    # compiled DataParallel: two wrappers stacked
    plain2 = Net()
    tk.load_into(plain2, {"module._orig_mod." + k: v for k, v in src.items()})
    assert_same(plain2, src)


def test_lightning_nested_checkpoint(tmp_path):
    src = perturbed(Net())
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.2.0",
        "state_dict": {"model." + k: v for k, v in src.items()},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "hyper_parameters": {"lr": 0.1},
    }
    tk.save(ckpt, tmp_path / "last.safetensors")
    report = tk.load_into(model, tmp_path / "last.safetensors")
    assert report.ok and report.container == "state_dict" and report.prefix == "stripped 'model.'"
    assert_same(model, src)


def test_new_head_strict_raises_and_skip_loads_the_rest():
    src = perturbed(Net(10))
    model = Net(5)
    before = snapshot(model)
    with pytest.raises(KeyMismatchError) as e:
        tk.load_into(model, src)
    msg = str(e.value)
    assert "fc.weight" in msg and "fc.bias" in msg and "[10, 4] -> [5, 4]" in msg and "on_mismatch" in msg
    assert_same(model, before)  # nothing changed
    report = tk.load_into(model, src, on_mismatch="skip")
    assert report.mismatched == [("fc.weight", (10, 4), (5, 4)), ("fc.bias", (10,), (5,))]
    assert_same(model, before, ["fc.weight", "fc.bias"])
    assert_same(model, src, [k for k in src if not k.startswith("fc.")])


def test_partial_copies_the_overlapping_slice():
    src = {"emb.weight": torch.randn(10, 4), "head.weight": torch.randn(10, 4), "head.bias": torch.randn(10)}
    model = nn.Module()
    model.emb = nn.Embedding(12, 4)  # vocabulary grew
    model.head = nn.Linear(4, 5)  # fewer classes
    before = snapshot(model)
    report = tk.load_into(model, src, on_mismatch="partial")
    assert sorted(report.partial) == ["emb.weight", "head.bias", "head.weight"]
    assert bit_equal(model.emb.weight[:10].detach(), src["emb.weight"])
    assert bit_equal(model.emb.weight[10:].detach(), before["emb.weight"][10:])
    assert bit_equal(model.head.weight.detach(), src["head.weight"][:5])
    assert bit_equal(model.head.bias.detach(), src["head.bias"][:5])


def test_partial_from_a_file(tmp_path):
    src = {"emb.weight": torch.randn(10, 4)}
    tk.save(src, tmp_path / "e.safetensors")
    model = nn.Module()
    model.emb = nn.Embedding(12, 4)
    tk.load_into(model, tmp_path / "e.safetensors", on_mismatch="partial")
    assert bit_equal(model.emb.weight[:10].detach(), src["emb.weight"])


@pytest.mark.parametrize(
    "rule",
    [
        {"backbone.": "encoder."},
        [(r"^backbone\.", "encoder.")],
        lambda k: k.replace("backbone.", "encoder.", 1),
    ],
    ids=["prefix-map", "regex-list", "callable"],
)
def test_rename_rules(rule):
    model = nn.Module()
    model.encoder = Backbone()
    model.head = nn.Linear(4, 2)
    src = {("backbone." + k[len("encoder."):] if k.startswith("encoder.") else k): v for k, v in perturbed(model).items()}
    report = tk.load_into(model, src, rename=rule)
    assert report.ok
    for k, v in src.items():
        new = k.replace("backbone.", "encoder.", 1)
        assert bit_equal(model.state_dict()[new], v)
        if new != k:
            assert report.renamed[k] == new and report.rename_reason[k] == "rule"


def test_prefix_map_rename_behind_a_wrapper():
    model = nn.Module()
    model.encoder = Backbone()
    src = perturbed(model)
    dp = {"module." + k.replace("encoder.", "backbone.", 1): v for k, v in src.items()}
    report = tk.load_into(model, dp, rename={"backbone.": "encoder."})
    assert report.ok
    assert_same(model, src)


def test_suffix_matching_and_an_ambiguous_case():
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.stem = nn.Conv2d(3, 4, 3)
    model.backbone.body = Backbone()
    model.head = nn.Module()
    model.head.a = nn.Module()
    model.head.b = nn.Module()
    model.head.a.proj = nn.Linear(4, 4)
    model.head.b.proj = nn.Linear(4, 4)
    before = snapshot(model)
    src = {
        "stem.weight": torch.randn(4, 3, 3, 3),
        "stem.bias": torch.randn(4),
        "body.conv1.weight": torch.randn(4, 3, 3, 3),
        "body.conv1.bias": torch.randn(4),
        "layers.0.weight": torch.randn(4, 4),  # -> backbone.body.layers.0.weight, the only one
        "proj.weight": torch.randn(4, 4),  # head.a.proj or head.b.proj: ambiguous, never taken
    }
    report = tk.load_into(model, src, strict=False)
    assert report.prefix == "added 'backbone.'"
    assert report.renamed["layers.0.weight"] == "backbone.body.layers.0.weight"
    assert report.rename_reason["layers.0.weight"] == "suffix"
    assert report.ambiguous == {"proj.weight": ["head.a.proj.weight", "head.b.proj.weight"]}
    assert "proj.weight" in report.unexpected
    sd = model.state_dict()
    for k in ("stem.weight", "stem.bias", "body.conv1.weight", "body.conv1.bias"):
        assert bit_equal(sd["backbone." + k], src[k])
    assert bit_equal(sd["backbone.body.layers.0.weight"], src["layers.0.weight"])
    assert_same(model, before, ["head.a.proj.weight", "head.b.proj.weight", "backbone.body.layers.1.weight"])
    with pytest.raises(KeyMismatchError, match="ambiguous suffix matches"):
        tk.load_into(model, src)


def test_include_exclude_globs():
    src = perturbed(Net())
    model = Net()
    before = snapshot(model)
    report = tk.load_into(model, src, exclude="fc.*")
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"] and not report.missing
    assert_same(model, before, ["fc.weight", "fc.bias"])
    assert_same(model, src, ["conv1.weight", "bn.running_var"])
    model2 = Net()
    report = tk.load_into(model2, src, include=["conv1.*", "bn.*"], exclude="bn.num_batches_tracked")
    assert "fc.weight" in report.skipped and "bn.num_batches_tracked" in report.skipped
    assert_same(model2, src, ["conv1.weight", "bn.weight"])


def test_dry_run_changes_nothing(tmp_path):
    src = perturbed(Net())
    tk.save(src, tmp_path / "w.safetensors")
    model = Net()
    before = snapshot(model)
    report = tk.load_into(model, tmp_path / "w.safetensors", dry_run=True)
    assert report.dry_run and report.ok and len(report.loaded) == len(src)
    assert_same(model, before)
    assert "would load" in str(report)


def test_nothing_changes_when_the_load_raises():
    src = perturbed(Net(10))
    src["stray.weight"] = torch.ones(3)
    model = Net(5)
    before = snapshot(model)
    for kwargs in ({}, {"on_mismatch": "skip"}, {"strict": False}):
        with pytest.raises(KeyMismatchError):
            tk.load_into(model, src, **kwargs)
        assert_same(model, before)


def test_assign_meta_model_keeps_parameter_ness():
    src = perturbed(Net())
    with torch.device("meta"):
        model = Net()
    model.conv1.weight.requires_grad_(False)
    with pytest.raises(tk.TorchkeepError, match="assign=True"):
        tk.load_into(model, src)
    report = tk.load_into(model, src, assign=True)
    assert report.ok
    assert isinstance(model.fc.weight, nn.Parameter) and model.fc.weight.requires_grad
    assert not model.conv1.weight.requires_grad and isinstance(model.conv1.weight, nn.Parameter)
    assert not isinstance(model.bn.running_mean, nn.Parameter)
    assert_same(model, src)


def test_assign_with_dtype_from_file(tmp_path):
    src = perturbed(Net())
    tk.save(src, tmp_path / "w.safetensors")
    with torch.device("meta"):
        model = Net()
    tk.load_into(model, tmp_path / "w.safetensors", assign=True, dtype=torch.float16)
    assert model.fc.weight.dtype == torch.float16 and model.bn.num_batches_tracked.dtype == torch.int64
    assert bit_equal(model.fc.weight.detach(), src["fc.weight"].half())


def test_container_precedence_and_ema_by_key():
    a, b = perturbed(Net()), perturbed(Net())
    ckpt = {"state_dict": a, "state_dict_ema": b, "epoch": 1}
    model = Net()
    report = tk.load_into(model, ckpt)
    assert report.container == "state_dict" and report.alternatives == ["state_dict_ema"]
    assert "state_dict_ema" in report.summary()
    assert_same(model, a)
    tk.load_into(model, ckpt, key="state_dict_ema")
    assert_same(model, b)
    for wrapper in ("model_state_dict", "model_state", "model", "net", "params"):
        m = Net()
        assert tk.load_into(m, {wrapper: a, "epoch": 2}).container == wrapper
        assert_same(m, a)


def test_missing_key_names_what_exists():
    with pytest.raises(KeyMismatchError, match="available: 'state_dict', 'epoch'"):
        tk.load_into(Net(), {"state_dict": perturbed(Net()), "epoch": 1}, key="model")


def test_tied_weights_count_as_loaded():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(6, 4)
            self.out = nn.Linear(4, 6, bias=False)
            self.out.weight = self.emb.weight

    src = {"emb.weight": torch.randn(6, 4)}
    model = Tied()
    report = tk.load_into(model, src)
    assert report.ok and "out.weight" in report.loaded
    assert bit_equal(model.out.weight.detach(), src["emb.weight"])


def test_dtype_follows_the_model():
    src = {k: v.double() if v.is_floating_point() else v for k, v in perturbed(Net()).items()}
    model = Net()
    tk.load_into(model, src)
    assert model.fc.weight.dtype == torch.float32
    assert bit_equal(model.fc.weight.detach(), src["fc.weight"].float())


def test_bad_options_are_refused():
    with pytest.raises(tk.TorchkeepError, match="on_mismatch"):
        tk.load_into(Net(), {}, on_mismatch="ignore")
    with pytest.raises(tk.TorchkeepError, match="rename"):
        tk.load_into(Net(), perturbed(Net()), rename=42)
    with pytest.raises(tk.TorchkeepError, match="collide|several checkpoint keys"):
        tk.load_into(Net(), perturbed(Net()), rename=lambda k: "x")
