"""Recipe 5: warm start / transfer: load part of a checkpoint into a different model.

Real checkpoints come with ``module.`` (DataParallel/DDP), ``_orig_mod.`` (torch.compile) or
``model.`` (Lightning) prefixes, renamed layers, extra keys, and heads of another shape.
``tk.load_into`` aligns the names, applies what fits, and returns a ``LoadReport`` that
says exactly what was loaded and what was not. Nothing changes when it raises.

    python examples/05_warm_start_transfer.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import torchkeep as tk

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="torchkeep-05-"))
out.mkdir(parents=True, exist_ok=True)
failed = []


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failed.append(what)


class Classifier(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x))


torch.manual_seed(0)
pretrained = Classifier(10)

# 1. saved from nn.DataParallel (every key starts with "module."): the seeds' multi-GPU problem
tk.save(nn.DataParallel(pretrained), out / "dataparallel.pt")
plain = Classifier(10)
report = tk.load_into(plain, out / "dataparallel.pt")
print(report.summary())
check(report.ok and report.prefix != "none", "module. prefix stripped, every key loaded (strict)")

# 2. a new task with 3 classes: the body transfers, the head is another shape
new = Classifier(3)
try:
    tk.load_into(new, out / "dataparallel.pt")  # strict by default: raises, listing every key
except tk.KeyMismatchError as e:
    print(f"strict load refused, model untouched:\n{e}")
report = tk.load_into(new, out / "dataparallel.pt", on_mismatch="skip")
print(report)
check(sorted(report.loaded) == sorted(k for k in new.state_dict() if k.startswith("backbone.")),
      "backbone loaded, head left as initialised")

# 3. a refactored model: backbone -> encoder; torch.compile'd source (_orig_mod.); extra keys
class Refactored(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.classifier = nn.Linear(32, 3)


sd = {f"_orig_mod.{k}": v for k, v in pretrained.state_dict().items()}
sd["_orig_mod.ema_decay"] = torch.tensor(0.999)  # something the new model does not have
tk.save(sd, out / "compiled.safetensors")
target = Refactored()
report = tk.load_into(target, out / "compiled.safetensors", rename={"backbone.": "encoder."},
                      exclude="classifier.*", strict=False)
print(report)
check(torch.equal(target.encoder[0].weight, pretrained.backbone[0].weight), "renamed encoder loaded")
check("_orig_mod.ema_decay" in report.unexpected, "extra key reported, not loaded")

# 4. look before you load: dry_run changes nothing
report = tk.load_into(Classifier(3), out / "dataparallel.pt", on_mismatch="partial", dry_run=True)
print(report.summary())
check(report.dry_run, "dry run: the report, no change")
sys.exit(1 if failed else 0)
