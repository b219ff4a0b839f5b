"""TrainState round trips through tk.save/tk.load, name-keyed optimizer state, refusals."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import assert_tree_equal
from torch import nn
from torch.optim import lr_scheduler as L

import torchkeep as tk
from torchkeep.errors import StateMismatchError, UnsupportedTypeError


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))


def train(model: nn.Module, opt: torch.optim.Optimizer, sched=None, steps: int = 3) -> None:  # noqa: ANN001
    for _ in range(steps):
        loss = model(torch.randn(6, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()


def roundtrip(state: tk.TrainState, path: Path):  # noqa: ANN201
    tk.save(state, path)
    return tk.load(path)


def test_roundtrip_restores_everything_in_place(tmp_path: Path) -> None:
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = L.OneCycleLR(opt, max_lr=0.1, total_steps=20)
    extra = {"epoch": 3, "best_acc": 0.9, "history": [0.5, 0.7], "note": None}
    train(model, opt, sched)
    state = tk.TrainState(model=model, opt=opt, sched=sched, extra=extra)
    saved = {
        "model": copy.deepcopy(model.state_dict()),
        "opt": copy.deepcopy(opt.state_dict()),
        "sched": copy.deepcopy(sched.state_dict()),
    }
    tree = roundtrip(state, tmp_path / "s.safetensors")

    train(model, opt, sched)  # move everything on
    extra.update(epoch=9, best_acc=0.1, added_later=1)
    ptrs = [p.data_ptr() for p in model.parameters()] + [b.data_ptr() for b in model.buffers()]
    extra_obj = extra

    state.load_state_dict(tree)
    assert [p.data_ptr() for p in model.parameters()] + [b.data_ptr() for b in model.buffers()] == ptrs
    assert_tree_equal(dict(model.state_dict()), dict(saved["model"]))
    assert_tree_equal(opt.state_dict(), saved["opt"])
    assert_tree_equal(sched.state_dict(), saved["sched"])
    assert extra is extra_obj
    assert extra == {"epoch": 3, "best_acc": 0.9, "history": [0.5, 0.7], "note": None, "added_later": 1}


def test_resumed_training_continues_bitwise(tmp_path: Path) -> None:
    def build():  # noqa: ANN202
        torch.manual_seed(0)
        m = make_model()
        o = torch.optim.AdamW(m.parameters(), lr=1e-2)
        s = L.CosineAnnealingLR(o, T_max=10)
        return m, o, s

    m1, o1, s1 = build()
    train(m1, o1, s1, steps=2)
    tk.save(tk.TrainState(model=m1, opt=o1, sched=s1), tmp_path / "c.safetensors")
    train(m1, o1, s1, steps=3)

    m2, o2, s2 = build()
    torch.manual_seed(123)  # whatever the new process did before the restore
    tk.TrainState(model=m2, opt=o2, sched=s2).load_state_dict(tk.load(tmp_path / "c.safetensors"))
    train(m2, o2, s2, steps=3)
    assert_tree_equal(dict(m1.state_dict()), dict(m2.state_dict()))
    assert_tree_equal(o1.state_dict(), o2.state_dict())
    assert_tree_equal(s1.state_dict(), s2.state_dict())


def test_state_dict_is_names_and_plain_values() -> None:
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train(model, opt)
    tree = tk.TrainState(model=model, opt=opt).state_dict()
    names = ["model.0.weight", "model.0.bias", "model.1.weight", "model.1.bias", "model.4.weight", "model.4.bias"]
    assert tree["opt"]["type"] == "torch.optim.adamw.AdamW"
    assert list(tree["opt"]["state"]) == names
    assert tree["opt"]["param_groups"][0]["params"] == names
    assert tree["opt"]["param_shapes"]["model.0.weight"] == [8, 4]
    assert tree["_torchkeep"]["kinds"] == {"model": "module", "opt": "optimizer"}
    rng = tree["_rng"]
    assert all(t.dtype == torch.uint8 for t in (rng["torch"], rng["python"]["state"], rng["numpy"]["key"]))


def test_rng_continuity(tmp_path: Path) -> None:
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()  # and one in NumPy's
    state = tk.TrainState(extra={})
    tk.save(state, tmp_path / "r.safetensors")
    after_save = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], random.gauss(0, 1), np.random.standard_normal())
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    state.load_state_dict(tk.load(tmp_path / "r.safetensors"))
    after_restore = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], random.gauss(0, 1), np.random.standard_normal())
    assert torch.equal(after_save[0], after_restore[0])
    assert np.array_equal(after_save[1], after_restore[1])
    assert after_save[2:] == after_restore[2:]


def test_rng_false_leaves_generators_alone(tmp_path: Path) -> None:
    state = tk.TrainState(extra={"a": 1}, rng=False)
    tree = roundtrip(state, tmp_path / "x.safetensors")
    assert "_rng" not in tree
    torch.manual_seed(1)
    expected = torch.rand(2)
    torch.manual_seed(1)
    state.load_state_dict(tree)
    assert torch.equal(torch.rand(2), expected)
    with pytest.raises(StateMismatchError, match="rng=False"):
        tk.TrainState(extra={"a": 1}).load_state_dict(tree)


SCHEDULERS = {
    "StepLR": lambda o: L.StepLR(o, step_size=2, gamma=0.5),
    "CosineAnnealingLR": lambda o: L.CosineAnnealingLR(o, T_max=7),
    "OneCycleLR": lambda o: L.OneCycleLR(o, max_lr=0.1, total_steps=30),
    "LambdaLR-function": lambda o: L.LambdaLR(o, lambda e: 0.95**e),
    "SequentialLR": lambda o: L.SequentialLR(
        o, [L.LinearLR(o, start_factor=0.1, total_iters=3), L.CosineAnnealingLR(o, T_max=5)], milestones=[3]
    ),
    "ReduceLROnPlateau": lambda o: L.ReduceLROnPlateau(o, patience=1),
    "LinearLR": lambda o: L.LinearLR(o, start_factor=0.2, total_iters=4),
    "CosineAnnealingWarmRestarts": lambda o: L.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2),
    "ChainedScheduler": lambda o: L.ChainedScheduler([L.StepLR(o, 2), L.ExponentialLR(o, 0.9)]),
}


@pytest.mark.parametrize("kind", list(SCHEDULERS))
def test_common_schedulers_are_storable_and_resume(kind: str, tmp_path: Path) -> None:
    def build():  # noqa: ANN202
        p = nn.Parameter(torch.ones(2))
        o = torch.optim.SGD([p], lr=0.1, momentum=0.9)
        return p, o, SCHEDULERS[kind](o)

    def run(p, o, s, steps, start):  # noqa: ANN001, ANN202
        lrs = []
        for i in range(start, start + steps):
            o.zero_grad()
            (p * p).sum().backward()
            o.step()
            s.step(1.0) if isinstance(s, L.ReduceLROnPlateau) else s.step()
            lrs.append(o.param_groups[0]["lr"])
        return lrs

    p1, o1, s1 = build()
    run(p1, o1, s1, 4, 0)
    tk.save(tk.TrainState(p=nn.ParameterList([p1]), opt=o1, sched=s1), tmp_path / "s.safetensors")
    expected = run(p1, o1, s1, 6, 4)

    p2, o2, s2 = build()
    tk.TrainState(p=nn.ParameterList([p2]), opt=o2, sched=s2).load_state_dict(tk.load(tmp_path / "s.safetensors"))
    assert run(p2, o2, s2, 6, 4) == expected
    assert_tree_equal(s2.state_dict(), s1.state_dict()) if kind != "LambdaLR-function" else None


def test_lambda_callable_object_state_and_dropped_functions() -> None:
    class Warmup:
        def __init__(self) -> None:
            self.k = 0.9
            self.fn = lambda e: e  # not storable: dropped, stays as the code builds it

        def __call__(self, e: int) -> float:
            return self.k**e

    o = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    s = L.LambdaLR(o, Warmup())
    tree = tk.TrainState(s=s, rng=False).state_dict()["s"]
    assert tree["state"]["lr_lambdas"] == [{"k": 0.9}]
    assert tree["dropped"] == ["s.lr_lambdas[0].fn"]


def test_gradscaler_roundtrip(tmp_path: Path) -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    p = nn.Parameter(torch.ones(3))
    o = torch.optim.SGD([p], lr=0.1)
    for _ in range(4):  # the scale grows after 3 clean steps; the tracker counts on
        o.zero_grad()
        scaler.scale((p * p).sum()).backward()
        scaler.step(o)
        scaler.update()
    saved = scaler.state_dict()
    assert saved["scale"] == 2048.0 and saved["_growth_tracker"] == 1
    tree = roundtrip(tk.TrainState(scaler=scaler), tmp_path / "g.safetensors")
    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    tk.TrainState(scaler=fresh).load_state_dict(tree)
    assert fresh.state_dict() == saved
    assert fresh.get_scale() == scaler.get_scale()


def test_disabled_gradscaler(tmp_path: Path) -> None:
    off = torch.amp.GradScaler("cpu", enabled=False)
    tree = roundtrip(tk.TrainState(scaler=off), tmp_path / "g.safetensors")
    assert tree["scaler"]["state"] == {}
    tk.TrainState(scaler=torch.amp.GradScaler("cpu", enabled=False)).load_state_dict(tree)
    with pytest.raises(StateMismatchError, match="disabled"):
        tk.TrainState(scaler=torch.amp.GradScaler("cpu")).load_state_dict(tree)


class Counter:
    """A user object with its own state (a Stateful)."""

    def __init__(self) -> None:
        self.n = 0
        self.seen = torch.zeros(3)

    def state_dict(self) -> dict:
        return {"n": self.n, "seen": self.seen.clone()}

    def load_state_dict(self, sd: dict) -> None:
        self.n = sd["n"]
        self.seen.copy_(sd["seen"])


def test_user_stateful_object(tmp_path: Path) -> None:
    c = Counter()
    assert isinstance(c, tk.Stateful)
    c.n, c.seen[1] = 7, 2.5
    state = tk.TrainState(counter=c, extra={"x": 1})
    assert state.kinds()["counter"] == "stateful"
    tree = roundtrip(state, tmp_path / "c.safetensors")
    c.n, c.seen[1] = 0, 0.0
    state.load_state_dict(tree)
    assert c.n == 7 and c.seen.tolist() == [0.0, 2.5, 0.0]


def test_nested_trainstate(tmp_path: Path) -> None:
    inner = tk.TrainState(c=Counter(), rng=False)
    inner["c"].n = 4
    outer = tk.TrainState(inner=inner, extra={})
    tree = roundtrip(outer, tmp_path / "n.safetensors")
    inner["c"].n = 0
    outer.load_state_dict(tree)
    assert inner["c"].n == 4


def test_restore_into_a_different_model_names_every_difference_and_changes_nothing(tmp_path: Path) -> None:
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train(model, opt)
    tree = roundtrip(tk.TrainState(model=model, opt=opt, extra={"epoch": 1}), tmp_path / "a.safetensors")

    other = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2), nn.Linear(2, 2))
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    train(other, other_opt)
    extra = {"epoch": 5}
    before = (copy.deepcopy(other.state_dict()), copy.deepcopy(other_opt.state_dict()), torch.get_rng_state())
    with pytest.raises(StateMismatchError) as e:
        tk.TrainState(model=other, opt=other_opt, extra=extra).load_state_dict(tree)
    msg = str(e.value)
    for expected in [
        "nothing was restored",
        "model: keys in the model but not in the checkpoint: '2.bias', '2.weight', '3.bias', '3.weight'",
        "model: keys in the checkpoint but not in the model: '1.bias', '1.num_batches_tracked', '1.running_mean', "
        "'1.running_var', '1.weight', '4.bias', '4.weight'",
        "model: '0.weight' has shape [16, 4] in the model, [8, 4] in the checkpoint",
        "opt: saved from a torch.optim.adamw.AdamW, restoring into a torch.optim.sgd.SGD",
        "opt.param_groups[0]: parameters not in the checkpoint: 'model.2.bias'",
        "opt: parameter 'model.0.weight' has shape [16, 4] here, [8, 4] in the checkpoint",
    ]:
        assert expected in msg, f"{expected!r} not in:\n{msg}"
    assert_tree_equal(dict(other.state_dict()), dict(before[0]))
    assert_tree_equal(other_opt.state_dict(), before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
    assert extra == {"epoch": 5}


def test_missing_and_extra_entries_and_kinds() -> None:
    model = make_model()
    tree = tk.TrainState(model=model, extra={}).state_dict()
    with pytest.raises(StateMismatchError) as e:
        tk.TrainState(net=make_model(), extra={}).load_state_dict(tree)
    assert "entries in this TrainState but not in the checkpoint: ['net']" in str(e.value)
    assert "entries in the checkpoint but not in this TrainState: ['model']" in str(e.value)
    with pytest.raises(StateMismatchError, match="model: saved as a module, restoring into a dict"):
        tk.TrainState(model={}, extra={}).load_state_dict(tree)


def test_optimizer_state_follows_names_when_parameters_are_reordered(tmp_path: Path) -> None:
    class A(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(3, 4)
            self.dec = nn.Linear(4, 2)

    class B(nn.Module):  # same names, registered in the other order
        def __init__(self) -> None:
            super().__init__()
            self.dec = nn.Linear(4, 2)
            self.enc = nn.Linear(3, 4)

    a = A()
    opt_a = torch.optim.Adam(a.parameters(), lr=0.1)
    loss = a.dec(a.enc(torch.randn(5, 3))).pow(2).sum()
    loss.backward()
    opt_a.step()
    tree = roundtrip(tk.TrainState(m=a, opt=opt_a, rng=False), tmp_path / "o.safetensors")

    b = B()
    opt_b = torch.optim.Adam(b.parameters(), lr=0.1)  # positions: dec.weight first
    tk.TrainState(m=b, opt=opt_b, rng=False).load_state_dict(tree)
    for name in ("enc.weight", "enc.bias", "dec.weight", "dec.bias"):
        pa, pb = a.get_parameter(name), b.get_parameter(name)
        assert torch.equal(pa, pb)
        assert torch.equal(opt_a.state[pa]["exp_avg"], opt_b.state[pb]["exp_avg"])


def test_partly_frozen_model_and_two_param_groups(tmp_path: Path) -> None:
    def build():  # noqa: ANN202
        torch.manual_seed(0)
        m = make_model()
        for p in m[0].parameters():
            p.requires_grad_(False)
        o = torch.optim.AdamW(
            [{"params": m[1].parameters(), "lr": 1e-3}, {"params": m[4].parameters(), "lr": 1e-2}], weight_decay=0.0
        )
        return m, o

    m1, o1 = build()
    train(m1, o1)
    tree = roundtrip(tk.TrainState(model=m1, opt=o1, rng=False), tmp_path / "f.safetensors")
    assert tree["opt"]["param_groups"][1]["params"] == ["model.4.weight", "model.4.bias"]
    m2, o2 = build()
    tk.TrainState(model=m2, opt=o2, rng=False).load_state_dict(tree)
    assert_tree_equal(o2.state_dict(), o1.state_dict())

    # a different split into groups is a layout change: refused, naming both sides
    m3 = make_model()
    o3 = torch.optim.AdamW([{"params": list(m3[1].parameters()) + list(m3[4].parameters())}])
    with pytest.raises(StateMismatchError, match=r"saved with 2 param group\(s\), this optimizer has 1"):
        tk.TrainState(model=m3, opt=o3, rng=False).load_state_dict(tree)


def test_parameters_outside_every_module_fall_back_to_position(tmp_path: Path) -> None:
    p = nn.Parameter(torch.ones(2))
    o = torch.optim.Adam([p], lr=0.1)
    (p * p).sum().backward()
    o.step()
    with pytest.warns(UserWarning, match="belong to no module"):
        tree = roundtrip(tk.TrainState(opt=o, rng=False), tmp_path / "p.safetensors")
    assert list(tree["opt"]["state"]) == ["#0"]
    q = nn.Parameter(torch.ones(2))
    o2 = torch.optim.Adam([q], lr=0.1)
    tk.TrainState(opt=o2, rng=False).load_state_dict(tree)
    assert torch.equal(o2.state[q]["exp_avg"], o.state[p]["exp_avg"])


def test_wrappers_do_not_change_names(tmp_path: Path) -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, opt)
    tree = roundtrip(tk.TrainState(model=model, opt=opt, rng=False), tmp_path / "w.safetensors")
    wrapped = nn.DataParallel(make_model())
    opt2 = torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9)
    state = tk.TrainState(model=wrapped, opt=opt2, rng=False)
    assert "model.0.weight" in state.state_dict()["opt"]["param_shapes"]
    state.load_state_dict(tree)
    assert_tree_equal(dict(wrapped.module.state_dict()), dict(model.state_dict()))


def test_construction_errors() -> None:
    with pytest.raises(UnsupportedTypeError, match=r"extra=\{'value': 3\}"):
        tk.TrainState(extra=3)
    with pytest.raises(UnsupportedTypeError, match="identifiers not starting with '_'"):
        tk.TrainState(_x={})
    with pytest.raises(UnsupportedTypeError, match="cannot be stored without pickle: extra.fn"):
        tk.TrainState(extra={"fn": print}).state_dict()


def test_dtype_change_is_a_mismatch() -> None:
    tree = tk.TrainState(model=make_model(), rng=False).state_dict()
    with pytest.raises(StateMismatchError, match=r"torch.float64 in the model, torch.float32 in the checkpoint"):
        tk.TrainState(model=make_model().double(), rng=False).load_state_dict(tree)


def test_tk_save_writes_no_pickle(tmp_path: Path) -> None:
    model = make_model()
    opt = torch.optim.AdamW(model.parameters())
    train(model, opt)
    path = tmp_path / "t.safetensors"
    tk.save(tk.TrainState(model=model, opt=opt, sched=L.StepLR(opt, 3), scaler=torch.amp.GradScaler("cpu"), extra={}), path)
    assert tk.inspect(path).format == "safetensors"
    from safetensors.torch import load_file  # any safetensors reader sees the tensors

    names = set(load_file(path))
    assert {"model.0.weight", "opt.state.model.0.weight.exp_avg", "_rng.torch"} <= names


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_restore_onto_gpu_in_place(tmp_path: Path) -> None:
    model = make_model().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(torch.randn(6, 4, device="cuda")).sum().backward()
        opt.step()
    tree = roundtrip(tk.TrainState(model=model, opt=opt), tmp_path / "g.safetensors")
    assert len(tree["_rng"]["cuda"]) == torch.cuda.device_count()
    m2 = make_model().cuda()
    o2 = torch.optim.AdamW(m2.parameters(), lr=1e-2)
    ptr = m2[0].weight.data_ptr()
    tk.TrainState(model=m2, opt=o2).load_state_dict(tree)
    assert m2[0].weight.data_ptr() == ptr and m2[0].weight.is_cuda
    assert o2.state[m2[0].weight]["exp_avg"].is_cuda
    assert_tree_equal(o2.state_dict(), opt.state_dict())
    after = torch.rand(3, device="cuda")
    tk.TrainState(model=m2, opt=o2).load_state_dict(tree)
    assert torch.equal(torch.rand(3, device="cuda"), after)
