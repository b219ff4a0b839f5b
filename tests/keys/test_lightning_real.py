"""A real Lightning checkpoint (Trainer.save_checkpoint): the weights go into a plain model
with the module's attribute prefix stripped, the hyper-parameters and counters show in
inspect, and reading it imports nothing from Lightning."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchkeep as tk

L = pytest.importorskip("lightning")


class LitNet(L.LightningModule):
    def __init__(self, hidden: int = 8, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def training_step(self, batch, i):  # noqa: ANN001, ANN201
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp("lightning")
    torch.manual_seed(0)
    lit = LitNet()
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(d))
    trainer.fit(lit, DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8))
    trainer.save_checkpoint(d / "last.ckpt")
    return d / "last.ckpt", {k: v.clone() for k, v in lit.net.state_dict().items()}


def test_weights_into_a_plain_model(lightning_ckpt):
    path, want = lightning_ckpt
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    report = tk.load_into(plain, path)
    assert sorted(report.loaded) == sorted(want) and not report.missing and not report.unexpected
    assert all(torch.equal(plain.state_dict()[k], want[k]) for k in want)


def test_inspect_shows_hyper_parameters_and_counters(lightning_ckpt):
    info = tk.inspect(lightning_ckpt[0])
    assert info.format == "torch-zip"
    assert info.values["hyper_parameters.hidden"] == 8 and info.values["hyper_parameters.lr"] == 0.1
    assert info.values["global_step"] == 3
    assert {t.name for t in info.tensors} >= {"state_dict.net.0.weight", "state_dict.net.2.bias"}


def test_reading_imports_nothing_from_lightning(lightning_ckpt):
    code = textwrap.dedent(f"""
        import sys
        import torch
        import torchkeep as tk
        tree = tk.load({str(lightning_ckpt[0])!r})
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        tk.load_into(net, {str(lightning_ckpt[0])!r})
        leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'lightning_fabric'))
        assert not leaked, leaked
        print('ok', sorted(tree))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "optimizer_states" in out.stdout and "hyper_parameters" in out.stdout
