"""Deterministic workloads: tensor specs, filled state dicts, models that match them.

Values are cheap to make and to check: each tensor is filled with its own constant and its
first element holds ``-(index + 1)``; :func:`verify` checks both ends of every tensor.
File I/O cost does not depend on the values (no compression anywhere in the path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Spec = list[tuple[str, tuple[int, ...], torch.dtype]]


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    kind: str  # "flat" (a state dict) or "train" (model + AdamW state)
    params: dict[str, int]

    def spec(self) -> Spec:
        p = self.params
        if self.name.startswith("transformer") or self.kind == "train":
            return transformer_spec(p["d"], p["layers"], p["vocab"])
        return small_spec(p["n"])


def workloads(quick: bool) -> dict[str, Workload]:
    if quick:
        t = Workload("transformer", "transformer-like state dict", "flat", {"d": 256, "layers": 4, "vocab": 2048})
        s = Workload("small", "many small tensors", "flat", {"n": 2000})
        r = Workload("train", "training state (model + AdamW)", "train", {"d": 128, "layers": 4, "vocab": 1024})
    else:
        t = Workload("transformer", "transformer-like state dict", "flat", {"d": 1024, "layers": 20, "vocab": 8192})
        s = Workload("small", "many small tensors", "flat", {"n": 20000})
        r = Workload("train", "training state (model + AdamW)", "train", {"d": 768, "layers": 8, "vocab": 8192})
    return {w.name: w for w in (t, s, r)}


def transformer_spec(d: int, layers: int, vocab: int) -> Spec:
    f = torch.float32
    spec: Spec = [("embed.weight", (vocab, d), f), ("pos.weight", (512, d), f)]
    for i in range(layers):
        b = f"blocks.{i}."
        spec += [
            (b + "ln1.weight", (d,), f), (b + "ln1.bias", (d,), f),
            (b + "attn.qkv.weight", (3 * d, d), f), (b + "attn.qkv.bias", (3 * d,), f),
            (b + "attn.proj.weight", (d, d), f), (b + "attn.proj.bias", (d,), f),
            (b + "ln2.weight", (d,), f), (b + "ln2.bias", (d,), f),
            (b + "mlp.fc1.weight", (4 * d, d), f), (b + "mlp.fc1.bias", (4 * d,), f),
            (b + "mlp.fc2.weight", (d, 4 * d), f), (b + "mlp.fc2.bias", (d,), f),
        ]
    spec += [("ln_f.weight", (d,), f), ("ln_f.bias", (d,), f)]
    return spec


def small_spec(n: int) -> Spec:
    """n tensors of 1-8 KB (256..2048 float32), 100 per group."""
    return [(f"g{i // 100}.t{i % 100}", (256 * (1 + i % 8),), torch.float32) for i in range(n)]


def nbytes(spec: Spec) -> int:
    return sum(_numel(s) * torch.empty((), dtype=d).element_size() for _, s, d in spec)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _fill(t: torch.Tensor, i: int) -> torch.Tensor:
    t.fill_(((i * 7919) % 997 + 1) / 1000.0)
    if t.numel():
        t.view(-1)[0] = -(i + 1)
    return t


def make_state_dict(spec: Spec, salt: int = 0) -> dict[str, torch.Tensor]:
    return {name: _fill(torch.empty(shape, dtype=dt), i + salt) for i, (name, shape, dt) in enumerate(spec)}


def verify(spec: Spec, tensors: dict[str, torch.Tensor], salt: int = 0) -> None:
    """Raise unless every tensor holds the values :func:`make_state_dict` put there."""
    bad = []
    for i, (name, shape, dt) in enumerate(spec):
        t = tensors.get(name)
        c = ((i + salt) * 7919 % 997 + 1) / 1000.0
        if t is None or tuple(t.shape) != tuple(shape) or t.dtype != dt:
            bad.append(name)
            continue
        flat = t.detach().reshape(-1)
        if flat.numel() and (flat[0].item() != -(i + salt + 1) or (flat.numel() > 1 and abs(flat[-1].item() - c) > 1e-6)):
            bad.append(name)
    if bad:
        raise AssertionError(f"{len(bad)} tensors differ after the round trip, e.g. {bad[:5]}")


def build_model(spec: Spec) -> nn.Module:
    """A module whose state_dict has exactly ``spec``'s names; parameters zeroed (pages touched)."""
    root = nn.Module()
    for name, shape, dt in spec:
        *path, leaf = name.split(".")
        m = root
        for p in path:
            nxt = m._modules.get(p)
            if nxt is None:
                nxt = nn.Module()
                m.add_module(p, nxt)
            m = nxt
        m.register_parameter(leaf, nn.Parameter(torch.zeros(shape, dtype=dt), requires_grad=False))
    return root


# ------------------------------------------------------------------ training state
def make_train_tree(spec: Spec) -> dict[str, Any]:
    """{"model", "optimizer" (torch AdamW state_dict layout), "step"}: 3x the model bytes."""
    model = make_state_dict(spec)
    state = {
        i: {
            "step": torch.tensor(1000.0),
            "exp_avg": _fill(torch.empty(shape, dtype=dt), i + 100_000),
            "exp_avg_sq": _fill(torch.empty(shape, dtype=dt), i + 200_000),
        }
        for i, (_, shape, dt) in enumerate(spec)
    }
    groups = [{"lr": 3e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False,
               "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
               "fused": None, "params": list(range(len(spec)))}]
    return {"model": model, "optimizer": {"state": state, "param_groups": groups}, "step": 1000}


def flatten_train_tree(tree: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The flat safetensors form of a training tree (what users of save_file write by hand)."""
    import json

    flat = {f"model.{k}": v for k, v in tree["model"].items()}
    for pid, st in tree["optimizer"]["state"].items():
        for k, v in st.items():
            flat[f"optimizer.state.{pid}.{k}"] = v
    meta = {"param_groups": json.dumps(tree["optimizer"]["param_groups"]), "step": str(tree["step"])}
    return flat, meta


def train_tensors(tree: dict[str, Any]) -> list[torch.Tensor]:
    """Every tensor of a training tree in a fixed order (the raw contender's file order)."""
    out = list(tree["model"].values())
    for pid in sorted(tree["optimizer"]["state"]):
        st = tree["optimizer"]["state"][pid]
        out += [st["step"], st["exp_avg"], st["exp_avg_sq"]]
    return out


def verify_train(spec: Spec, tree: dict[str, Any]) -> None:
    verify(spec, dict(tree["model"]))
    state = tree["optimizer"]["state"]
    verify(spec, {name: state[i]["exp_avg"] for i, (name, _, _) in enumerate(spec)}, salt=100_000)
    verify(spec, {name: state[i]["exp_avg_sq"] for i, (name, _, _) in enumerate(spec)}, salt=200_000)
