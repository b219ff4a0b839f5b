"""torchkeep migrate: torch.save(model) pickles -> save_model files, with no code from the pickle."""

from __future__ import annotations

import io
import pickle
import sys
import types

import pytest
import torch
from torch import nn

import torchkeep as tk
from torchkeep import formats
from torchkeep import cli
from torchkeep.errors import ArchitectureError, ForbiddenClassError

LEGACY = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, hidden, out=2):
        super().__init__()
        self.hidden = hidden
        self.out = out
        self.body = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Dropout(0.1))
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        h, _ = self.lstm(self.body(x))
        return self.head(h)

class NoArgs(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.lin = nn.Linear(hidden, 1)
'''


# A stand-in for the restricted unpickler's raw mode, used until formats.read_pickled_raw lands:
# torch.load with a pickle module whose find_class turns every non-torch-rebuild global into
# an inert placeholder class (class_path, args, state); nothing from the file is imported.
class FakePlaceholder:
    class_path = ""

    def __init__(self, *args: object) -> None:
        self.args = args
        self.state = None

    def __setstate__(self, state: object) -> None:
        self.state = state


_REAL = {
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("copyreg", "__newobj__"), ("copyreg", "_reconstructor"), ("builtins", "set"), ("builtins", "object"), ("torch", "device"),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _REAL or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        return type(name, (FakePlaceholder,), {"class_path": f"{module}.{name}"})


def fake_read_pickled_raw(loc: object, map_location: str = "cpu") -> object:
    mod = types.ModuleType("fake_pickle")
    mod.Unpickler = _Unpickler  # type: ignore[attr-defined]
    mod.load = pickle.load  # type: ignore[attr-defined]
    mod.__name__ = "fake_pickle"
    with open(loc.path, "rb") as f:  # type: ignore[attr-defined]
        return torch.load(io.BytesIO(f.read()), map_location=map_location, pickle_module=mod, weights_only=False)


@pytest.fixture(autouse=True)
def _migrate_command(monkeypatch):  # noqa: ANN001, ANN202
    if "migrate" not in cli.COMMANDS:  # registered in cli/__init__.py; tolerate a tree without it
        monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, "migrate"])


def main(argv: list[str]) -> int:
    return cli.main(argv)


@pytest.fixture(params=["fake", "real"])
def raw_reader(request, monkeypatch):  # noqa: ANN001, ANN201
    if request.param == "real":
        if not hasattr(formats, "read_pickled_raw"):
            pytest.skip("formats.read_pickled_raw (the restricted unpickler) has not landed yet")
    else:
        monkeypatch.setattr(formats, "read_pickled_raw", fake_read_pickled_raw, raising=False)
    return request.param


@pytest.fixture
def legacy(tmp_path, make_module, forget):  # noqa: ANN001, ANN201
    mod = make_module("tk_legacy_models", LEGACY)
    model = mod.Net(5).eval()
    x = torch.randn(2, 4, 3)
    with torch.no_grad():
        expected = model(x)
    old = tmp_path / "old.pt"
    torch.save(model, old)
    torch.save(mod.NoArgs(4), tmp_path / "noargs.pt")
    return tmp_path, old, x, expected


def test_migrate_cli_round_trip(legacy, raw_reader, capsys):  # noqa: ANN001
    tmp_path, old, x, expected = legacy
    new = tmp_path / "new.safetensors"
    assert main(["migrate", str(old), str(new), "--allow", "tk_legacy_models"]) == 0
    out = capsys.readouterr().out
    assert "tk_legacy_models.Net" in out and "migrated" in out
    loaded = tk.load_model(new, allow=["tk_legacy_models"])
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert main(["migrate", str(old), str(new), "--allow", "tk_legacy_models"]) == 2  # no overwrite without --force


def test_migrate_refuses_unallowed_class_without_importing(legacy, raw_reader, capsys):  # noqa: ANN001
    tmp_path, old, _, _ = legacy
    sys.modules.pop("tk_legacy_models", None)
    assert main(["migrate", str(old), str(tmp_path / "new.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "tk_legacy_models.Net" in err and "allow=['tk_legacy_models']" in err
    assert "tk_legacy_models" not in sys.modules
    assert not (tmp_path / "new.safetensors").exists()


def test_migrate_moved_class(legacy, raw_reader, make_module, forget):  # noqa: ANN001
    tmp_path, old, x, expected = legacy
    forget("tk_legacy_models")
    make_module("tk_legacy_moved", LEGACY)
    new = tmp_path / "new.safetensors"
    from torchkeep.model._migrate import migrate

    with pytest.raises(ArchitectureError, match="class_map"):
        migrate(old, new, allow=["tk_legacy_models"])
    with pytest.raises(ForbiddenClassError):
        migrate(old, new, class_map={"tk_legacy_models": "tk_legacy_moved"})
    rc = main(["migrate", str(old), str(new), "--allow", "tk_legacy_moved", "--class-map", "tk_legacy_models.Net=tk_legacy_moved.Net"])
    assert rc == 0
    loaded = tk.load_model(new, allow=["tk_legacy_moved"])
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_migrate_says_what_it_cannot_capture(legacy, raw_reader):  # noqa: ANN001
    tmp_path, _, _, _ = legacy
    from torchkeep.model._migrate import migrate

    with pytest.raises(ArchitectureError) as e:
        migrate(tmp_path / "noargs.pt", tmp_path / "new.safetensors", allow=["tk_legacy_models"])
    msg = str(e.value)
    assert "tk_legacy_models.NoArgs" in msg and "hidden" in msg and "keep_args" in msg


def test_migrate_state_dict_file_is_not_a_model(tmp_path, raw_reader):  # noqa: ANN001
    from torchkeep.model._migrate import migrate

    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ArchitectureError, match="load_into"):
        migrate(tmp_path / "sd.pt", tmp_path / "new.safetensors")


def test_bad_class_map_argument(tmp_path, capsys):  # noqa: ANN001
    assert main(["migrate", "a.pt", str(tmp_path / "b.safetensors"), "--class-map", "nonsense"]) == 2
    assert "OLD=NEW" in capsys.readouterr().err
