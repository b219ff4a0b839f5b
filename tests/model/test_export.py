"""save_model(export=True) + load_exported: inference without the model's Python code."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import torchkeep as tk
from torchkeep.errors import ArchitectureError, CorruptCheckpointError, UnsafePickleError
from torchkeep.model._export import _check_archive

NET = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.n = n
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 6 * 6, n)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))
'''


@pytest.fixture
def saved(tmp_path, make_module, forget):
    mod = make_module("tk_export_net", NET)
    model = mod.Net(3)
    model.train()  # export traces eval mode regardless, and leaves the mode alone
    x = torch.randn(2, 1, 8, 8)
    path = tmp_path / "net.safetensors"
    tk.save_model(model, path, export=True, example_inputs=(x,))
    assert model.training and model.drop.training
    with torch.no_grad():
        expected = model.eval()(x)
    forget("tk_export_net")  # from here on, the model's code is gone
    return path, x, expected


def test_exported_program_runs_without_model_code(saved):
    path, x, expected = saved
    program = tk.load_exported(path)
    assert torch.equal(program(x), expected)
    with pytest.raises(ArchitectureError):  # load_model needs the class; load_exported doesn't
        tk.load_model(path, allow=["tk_export_net"])


def test_sidecar_layout(saved):
    path, _, _ = saved
    side = path.parent / (path.name + ".pt2")
    assert side.exists()
    assert set(load_file(str(path))) == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "fc.weight", "fc.bias"}
    program = torch.export.load(str(side))  # a standard PT2 archive
    assert isinstance(program, torch.export.ExportedProgram)


def test_tampered_or_missing_sidecar(saved):
    path, _, _ = saved
    side = path.parent / (path.name + ".pt2")
    blob = bytearray(side.read_bytes())
    blob[-10] ^= 0xFF
    side.write_bytes(bytes(blob))
    with pytest.raises(CorruptCheckpointError, match="SHA-256"):
        tk.load_exported(path)
    side.unlink()
    with pytest.raises(tk.NotFoundError, match="pt2"):
        tk.load_exported(path)


def test_export_needs_example_inputs_and_a_saved_program(tmp_path):
    with pytest.raises(ArchitectureError, match="example_inputs"):
        tk.save_model(nn.Linear(2, 2), tmp_path / "m.safetensors", export=True)
    assert not (tmp_path / "m.safetensors").exists()
    tk.save_model(nn.Linear(2, 2), tmp_path / "m.safetensors")
    with pytest.raises(ArchitectureError, match="export=True"):
        tk.load_exported(tmp_path / "m.safetensors")


def _archive(mutate) -> bytes:  # noqa: ANN001
    ep = torch.export.export(nn.Linear(2, 2), (torch.randn(1, 2),))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, mutate(name, src.read(name)))
    return out.getvalue()


def test_archive_scan_accepts_plain_and_refuses_pickled_entries():
    _check_archive(_archive(lambda n, b: b), "ok.pt2")

    def pickled_weight(name: str, data: bytes) -> bytes:
        if name.endswith("_weights_config.json"):
            cfg = json.loads(data)
            for meta in cfg["config"].values():
                meta["use_pickle"] = True
            return json.dumps(cfg).encode()
        return data

    with pytest.raises(UnsafePickleError, match="pickled object"):
        _check_archive(_archive(pickled_weight), "bad.pt2")

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pwned",))

    def evil_inputs(name: str, data: bytes) -> bytes:
        if "sample_inputs" in name:
            b = io.BytesIO()
            torch.save(((Evil(),), {}), b)
            return b.getvalue()
        return data

    with pytest.raises(UnsafePickleError, match="sample inputs"):
        _check_archive(_archive(evil_inputs), "bad.pt2")
