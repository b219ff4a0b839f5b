"""save_model / load_model round trips, refusals and errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import torchkeep as tk
from torchkeep.errors import ArchitectureError, ForbiddenClassError


def outputs_equal(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(outputs_equal(a[k], b[k]) for k in a)  # type: ignore[union-attr,index]
    return torch.equal(a, b)  # type: ignore[arg-type]


def round_trip(model: nn.Module, x: object, path: object, **load_kw: object) -> nn.Module:
    model.eval()
    with torch.no_grad():
        before = model(x)
    tk.save_model(model, path)
    loaded = tk.load_model(path, **load_kw)
    assert type(loaded) is type(model)
    assert not loaded.training and not any(m.training for m in loaded.modules())
    with torch.no_grad():
        assert outputs_equal(before, loaded(x))
    sd, lsd = model.state_dict(), loaded.state_dict()
    assert list(sd) == list(lsd)
    assert all(torch.equal(sd[k], lsd[k]) and sd[k].dtype == lsd[k].dtype for k in sd)
    return loaded


def test_seed_sequential(tmp_path):
    model = nn.Sequential(nn.Linear(1, 10), nn.ReLU(), nn.Linear(10, 1))
    x = torch.unsqueeze(torch.linspace(-1, 1, 100), dim=1)
    path = tmp_path / "net.safetensors"
    loaded = round_trip(model, x, path)
    assert isinstance(loaded, nn.Sequential) and [type(m) for m in loaded] == [nn.Linear, nn.ReLU, nn.Linear]
    # any safetensors reader gets the weights alone
    weights = load_file(str(path))
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    meta = tk.inspect(path).metadata
    assert "torchkeep.model" not in meta or isinstance(meta, dict)


def test_spec_is_readable_json(tmp_path):
    from torchkeep._io.fs import resolve
    from torchkeep.formats.safetensors import read_header

    model = nn.Sequential(nn.Linear(1, 10), nn.ReLU(), nn.Linear(10, 1))
    tk.save_model(model, tmp_path / "m.safetensors")
    with resolve(str(tmp_path / "m.safetensors")).open_source() as src:
        spec = json.loads(read_header(src).metadata["torchkeep.model"])
    assert spec["format"] == "torchkeep.model/1"
    root = spec["root"]
    assert root["class"] == "torch.nn.Sequential" and root["container"] is True
    assert root["children"]["0"] == {
        "class": "torch.nn.Linear", "args": [], "kwargs": {"in_features": 1, "out_features": 10, "bias": True},
        "children": {}, "training": True,
    }


def test_train_eval_modes(tmp_path, usermod):
    model = usermod.Nested(nn.Linear(5, 8), 8, depth=2)
    model.train()
    model.blocks[1].eval()  # a per-module mode, restored with eval=False
    path = tmp_path / "m.safetensors"
    tk.save_model(model, path)
    ev = tk.load_model(path, allow=[usermod.__name__])
    assert not any(m.training for m in ev.modules())  # eval() by default
    tr = tk.load_model(path, allow=[usermod.__name__], eval=False)
    assert [m.training for m in tr.modules()] == [m.training for m in model.modules()]
    # train mode really is train mode: batch-norm statistics update, dropout is active
    x = torch.randn(16, 5)
    before = tr.blocks[0].norm.running_mean.clone()
    tr(x)
    assert not torch.equal(before, tr.blocks[0].norm.running_mean)


def test_lenet_auto_captured(tmp_path, usermod):
    model = usermod.LeNet(num_classes=7)
    round_trip(model, torch.randn(2, 1, 28, 28), tmp_path / "lenet.safetensors", allow=[usermod.__name__])


def test_nested_keyword_arguments(tmp_path, usermod):
    stem = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8))
    model = usermod.Nested(stem, 8, depth=3, act=usermod.Act.RELU, head_bias=False, sizes=(2, 5))
    loaded = round_trip(model, torch.randn(4, 5), tmp_path / "n.safetensors", allow=[usermod.__name__])
    assert loaded.head.bias is None and loaded.head.out_features == 10
    assert isinstance(loaded.blocks[0].act, nn.ReLU) and isinstance(loaded.blocks[1].norm, nn.Identity)
    assert loaded.stem is loaded._modules["stem"]


def test_module_list_and_dict(tmp_path, usermod):
    model = usermod.Lists([6, 12, 9], {"cls": 3, "reg": 1})
    loaded = round_trip(model, torch.randn(3, 6), tmp_path / "l.safetensors", allow=[usermod.__name__])
    assert list(loaded.out.keys()) == ["cls", "reg"] and len(loaded.layers) == 2


def test_lstm_model(tmp_path, usermod):
    model = usermod.Tagger(50, 16, 24, 5)
    tokens = torch.randint(0, 50, (3, 11))
    loaded = round_trip(model, tokens, tmp_path / "t.safetensors", allow=[usermod.__name__])
    assert loaded.lstm.batch_first and loaded.lstm.bidirectional and loaded.lstm.num_layers == 2
    assert loaded.lstm.dropout == 0.2


def test_plain_torch_layers_need_nothing(tmp_path):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect", bias=False), nn.BatchNorm2d(8), nn.GELU("tanh"),
        nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.1), nn.Linear(8 * 4 * 4, 16),
        nn.Unflatten(1, (2, 8)), nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2, enable_nested_tensor=False),
    )
    round_trip(model, torch.randn(2, 3, 8, 8), tmp_path / "m.safetensors")


def test_tied_weights_stay_tied(tmp_path, usermod):
    model = usermod.TiedLM(20, 6)
    path = tmp_path / "lm.safetensors"
    loaded = round_trip(model, torch.randint(0, 20, (2, 4)), path, allow=[usermod.__name__])
    assert loaded.decoder.weight is loaded.embed.weight
    assert len(load_file(str(path))) == 1  # stored once


def test_replaced_head_and_frozen_layers(tmp_path, usermod):
    model = usermod.LeNet()
    model.fc3 = nn.Sequential(nn.Dropout(0.5), nn.Linear(84, 3))  # fine-tuning: a new head
    for p in model.conv1.parameters():
        p.requires_grad_(False)
    loaded = round_trip(model, torch.randn(2, 1, 28, 28), tmp_path / "ft.safetensors", allow=[usermod.__name__])
    assert isinstance(loaded.fc3, nn.Sequential) and loaded.fc3[1].out_features == 3
    assert not any(p.requires_grad for p in loaded.conv1.parameters())
    assert all(p.requires_grad for p in loaded.fc1.parameters())


def test_dtype_and_map_location(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).to(torch.bfloat16)
    path = tmp_path / "bf16.safetensors"
    round_trip(model, torch.randn(3, 4, dtype=torch.bfloat16), path)
    loaded = tk.load_model(path, map_location="cpu")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_load_does_not_touch_rng(tmp_path, usermod):
    tk.save_model(usermod.LeNet(), tmp_path / "m.safetensors")
    state = torch.random.get_rng_state()
    tk.load_model(tmp_path / "m.safetensors", allow=[usermod.__name__])
    assert torch.equal(state, torch.random.get_rng_state())


def test_non_persistent_buffer_built_for_real(tmp_path, make_module):
    mod = make_module("tk_np_buf", '''
        import torch
        from torch import nn

        class Scaled(nn.Module):
            def __init__(self, n):
                super().__init__()
                self.n = n
                self.lin = nn.Linear(n, n)
                self.register_buffer("scale", torch.arange(n, dtype=torch.float32), persistent=False)

            def forward(self, x):
                return self.lin(x) * self.scale
    ''')
    round_trip(mod.Scaled(4), torch.randn(2, 4), tmp_path / "s.safetensors", allow=["tk_np_buf"])


# ------------------------------------------------------------------------------ refusals
def test_class_outside_allow_is_refused_before_import(tmp_path, usermod):
    path = tmp_path / "m.safetensors"
    tk.save_model(usermod.LeNet(), path)
    sys.modules.pop(usermod.__name__)
    with pytest.raises(ForbiddenClassError) as e:
        tk.load_model(path)
    msg = str(e.value)
    assert f"{usermod.__name__}.LeNet" in msg and f"allow=[{usermod.__name__!r}]" in msg
    assert usermod.__name__ not in sys.modules  # nothing was imported
    with pytest.raises(ForbiddenClassError):
        tk.load_model(path, allow=["tk_user_models"])  # a prefix must end at a dot
    assert isinstance(tk.load_model(path, allow=[usermod.__name__]), nn.Module)


def test_dataclass_and_enum_arguments_obey_allow(tmp_path, usermod, make_module):
    # a file naming an enum from an unallowed module is refused, even inside a torch class's args
    model = usermod.Nested(nn.Identity(), 4)
    path = tmp_path / "m.safetensors"
    tk.save_model(model, path)
    with pytest.raises(ForbiddenClassError):
        tk.load_model(path, class_map={f"{usermod.__name__}.Nested": f"{usermod.__name__}.Nested"})


def test_missing_class(tmp_path, make_module, forget):
    mod = make_module("tk_gone_mod", '''
        from torch import nn

        class Net(nn.Module):
            def __init__(self, n):
                super().__init__()
                self.n = n
                self.lin = nn.Linear(n, 1)
    ''')
    path = tmp_path / "m.safetensors"
    tk.save_model(mod.Net(3), path)
    forget("tk_gone_mod")
    with pytest.raises(ArchitectureError) as e:
        tk.load_model(path, allow=["tk_gone_mod"])
    assert "tk_gone_mod.Net" in str(e.value) and "class_map" in str(e.value)
    assert not isinstance(e.value, ForbiddenClassError)


def test_renamed_class_in_same_module(tmp_path, make_module, forget):
    make_module("tk_rename_mod", "from torch import nn\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.l = nn.Linear(2, 2)\n")
    mod = sys.modules["tk_rename_mod"]
    path = tmp_path / "m.safetensors"
    tk.save_model(mod.Net(), path)
    forget("tk_rename_mod")
    make_module("tk_rename_mod", "from torch import nn\nclass Net2(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.l = nn.Linear(2, 2)\n")
    with pytest.raises(ArchitectureError, match="has no Net"):
        tk.load_model(path, allow=["tk_rename_mod"])
    assert type(tk.load_model(path, allow=["tk_rename_mod"], class_map={"tk_rename_mod.Net": "tk_rename_mod.Net2"})).__name__ == "Net2"


OLD_SRC = '''
import enum
import torch
from torch import nn
import torchkeep as tk

class Mode(enum.Enum):
    FAST = 1
    SLOW = 2

@tk.keep_args
class Net(nn.Module):
    def __init__(self, width, mode=Mode.FAST):
        super().__init__()
        self.mode = mode
        self.body = nn.Sequential(nn.Linear(3, width), nn.ReLU())
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.head(self.body(x)) * (1 if self.mode is Mode.FAST else 2)
'''


def test_moved_class_loads_through_class_map(tmp_path, make_module, forget):
    old = make_module("tk_old_pkg_models", OLD_SRC)
    model = old.Net(6, mode=old.Mode.SLOW).eval()
    x = torch.randn(4, 3)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "m.safetensors"
    tk.save_model(model, path)
    # the refactor: the module is gone; the class is renamed in a new module
    forget("tk_old_pkg_models")
    make_module("tk_new_pkg_nets", OLD_SRC.replace("class Net(", "class Network("))
    with pytest.raises(ArchitectureError, match="class_map"):
        tk.load_model(path, allow=["tk_old_pkg_models"])
    loaded = tk.load_model(
        path,
        allow=["tk_new_pkg_nets"],
        class_map={"tk_old_pkg_models.Net": "tk_new_pkg_nets.Network", "tk_old_pkg_models.Mode": "tk_new_pkg_nets.Mode"},
    )
    assert type(loaded).__qualname__ == "Network" and loaded.mode.name == "SLOW"
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    # a module-prefix mapping and a callable work too
    by_prefix = tk.load_model(path, allow=["tk_new_pkg_nets"], class_map=lambda p: p.replace("tk_old_pkg_models.Net", "tk_new_pkg_nets.Network").replace("tk_old_pkg_models", "tk_new_pkg_nets"))
    with torch.no_grad():
        assert torch.equal(by_prefix(x), expected)
    # mapped targets still obey allow
    with pytest.raises(ForbiddenClassError, match=r"allow=\['tk_new_pkg_nets'\]"):
        tk.load_model(path, class_map={"tk_old_pkg_models": "tk_new_pkg_nets"})


def test_uncapturable_class_names_the_fix(tmp_path, usermod):
    path = tmp_path / "m.safetensors"
    with pytest.raises(ArchitectureError) as e:
        tk.save_model(nn.Sequential(usermod.Opaque(3)), path)
    msg = str(e.value)
    assert f"{usermod.__name__}.Opaque" in msg and "@torchkeep.keep_args" in msg and "'0'" in msg and "width" in msg
    assert not path.exists()


def test_child_made_by_captured_parent_needs_no_capture(tmp_path, usermod):
    round_trip(usermod.HoldsOpaque(5), torch.randn(2, 5), tmp_path / "m.safetensors", allow=[usermod.__name__])


def test_wrong_capture_fails_at_save(tmp_path, usermod):
    path = tmp_path / "m.safetensors"
    with pytest.raises(ArchitectureError) as e:
        tk.save_model(usermod.Liar(3), path)
    msg = str(e.value)
    assert "Liar" in msg and "{'hidden': 6}" in msg and "{'hidden': 12}" in msg and "keep_args" in msg
    assert not path.exists()


def test_local_class_is_refused_at_save(tmp_path):
    class Local(nn.Module):
        def __init__(self):
            super().__init__()

    with pytest.raises(ArchitectureError, match="inside a function"):
        tk.save_model(Local(), tmp_path / "m.safetensors")


def test_weights_only_file_explains(tmp_path):
    tk.save(nn.Linear(2, 2), tmp_path / "w.safetensors")
    with pytest.raises(ArchitectureError, match="load_into"):
        tk.load_model(tmp_path / "w.safetensors")


def test_keep_args_records_only_the_outermost_class(make_module):
    mod = make_module("tk_sub_mod", '''
        from torch import nn
        import torchkeep as tk

        @tk.keep_args
        class Base(nn.Module):
            def __init__(self, a):
                super().__init__()

        class Child(Base):
            def __init__(self, b):
                super().__init__(b + 1)
    ''')
    assert mod.Base(1)._torchkeep_init[1] == (1,)
    assert "_torchkeep_init" not in mod.Child(1).__dict__


def test_unwraps_compiled_and_data_parallel(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3))
    tk.save_model(nn.DataParallel(model), tmp_path / "m.safetensors")
    assert list(tk.load_model(tmp_path / "m.safetensors").state_dict()) == ["0.weight", "0.bias"]


# -- a damaged or hostile spec: decoded with bounds, never a crash or a huge allocation ------

from torchkeep.model._spec import Resolver, decode_value  # noqa: E402


def _decode(node):
    return decode_value(node, Resolver(where="spec.safetensors"), module_ref=lambda p: torch.nn.Identity(), where="args[0]")


@pytest.mark.parametrize(
    "node, match",
    [
        ({"$empty": {"dtype": "float32", "shape": [1 << 20, 1 << 20]}}, "larger than any model argument"),
        ({"$empty": {"dtype": "float32", "shape": [-1]}}, "bad empty tensor"),
        ({"$empty": {"dtype": "os.system", "shape": [1]}}, "bad empty tensor"),
        ({"$dk": [[[1, 2], 3]]}, "not hashable"),
        ({"$dk": {"a": 1}}, "not a list"),
        ({"$dk": [[1]]}, "list of pairs"),
        ({"$tu": 5}, "not a list"),
        ({"$f": ["nan"]}, "unknown float"),
        ({"$dev": "warp:9"}, "bad device"),
        ({"$nope": 1}, "unknown tag"),
    ],
)
def test_malformed_spec_values_are_refused(node, match):
    with pytest.raises(ArchitectureError, match=match):
        _decode(node)


def test_deep_spec_value_is_refused_not_a_recursion_error():
    node: object = 1
    for _ in range(500):
        node = [node]
    with pytest.raises(ArchitectureError, match="nested deeper"):
        _decode(node)


def test_spec_scalars_round_trip():
    assert _decode({"$tu": [{"$f": "inf"}, {"$dtype": "bfloat16"}, {"$dev": "cpu"}]}) == (float("inf"), torch.bfloat16, torch.device("cpu"))
    t = _decode({"$empty": {"dtype": "float16", "shape": [2, 3]}})
    assert t.shape == (2, 3) and t.dtype == torch.float16


def test_forged_architecture_cannot_allocate_what_the_weights_do_not_back(tmp_path):
    """A spec edited to ask for a 4 TB Linear is refused on the meta device, before any allocation."""
    import struct

    path = tmp_path / "m.safetensors"
    tk.save_model(nn.Sequential(nn.Linear(4, 4)), path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    head = json.loads(raw[8 : 8 + n])
    spec = json.loads(head["__metadata__"]["torchkeep.model"])
    spec["root"]["children"]["0"]["kwargs"].update(in_features=1 << 20, out_features=1 << 20)
    head["__metadata__"]["torchkeep.model"] = json.dumps(spec)
    new = json.dumps(head).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    with pytest.raises(ArchitectureError, match=r"0\.weight: file \(4, 4\), model \(1048576, 1048576\)"):
        tk.load_model(path)


def test_a_spec_whose_module_refers_back_to_itself_is_refused(tmp_path):
    """A forged reference cycle is named, not a RecursionError caught somewhere above."""
    from torchkeep.model._build import Builder
    from torchkeep.model._spec import Resolver

    spec = {"root": {"class": "torch.nn.Sequential", "container": True, "children": {"0": {"ref": "1"}, "1": {"ref": "0"}}}}
    with pytest.raises(ArchitectureError, match="refers back to itself"):
        Builder(spec, Resolver(where="m.safetensors")).build()
