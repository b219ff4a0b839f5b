"""Recipe 8: files from elsewhere: inspect, load and convert them without running code inside.

A ``.pth`` from a model zoo, a pre-1.6 legacy file, a whole pickled model, a TorchScript
archive, a Lightning ``.ckpt``, a Hugging Face sharded folder: ``tk.load`` reads them all,
detecting the format from the bytes. Pickles go through a restricted unpickler: tensors and
plain containers come back, a pickled module becomes its state dict, unknown objects become
inert placeholders, and a pickle that tries to call something dangerous is refused.

    python examples/08_files_from_elsewhere.py [OUT_DIR]
"""

import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

import torchkeep as tk

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="torchkeep-08-"))
out.mkdir(parents=True, exist_ok=True)
os.chdir(out)
warnings.filterwarnings("ignore")  # torch's own deprecation chatter (TorchScript, legacy format)
failed = []


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failed.append(what)


torch.manual_seed(0)
net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
sd = net.state_dict()


def same_weights(tree) -> bool:
    return tree.keys() == sd.keys() and all(torch.equal(tree[k], sd[k]) for k in sd)


# files as other people's code writes them
torch.save(sd, "zoo.pth")                                              # torch zip (torch >= 1.6)
torch.save(sd, "old.pt", _use_new_zipfile_serialization=False)         # legacy (pre-1.6)
torch.save(net, "whole_model.pt")                                      # a pickled nn.Module
torch.jit.script(net).save("scripted.pt")                              # TorchScript archive
torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()},    # PyTorch Lightning
            "epoch": 3, "global_step": 120, "hyper_parameters": {"lr": 0.1}}, "lightning.ckpt")
tk.save(sd, "hf_sharded", max_shard_size="200B")                       # Hugging Face sharded layout

for name in ("zoo.pth", "old.pt", "whole_model.pt", "scripted.pt", "hf_sharded"):
    print(tk.inspect(name))
    check(same_weights(tk.load(name)), f"{name}: the weights, nothing executed")

report = tk.load_into(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "lightning.ckpt")
print(report.summary())
check(report.ok and report.container == "state_dict", "lightning.ckpt: state_dict found, 'model.' prefix stripped")
ckpt = tk.load("lightning.ckpt")
check(ckpt["epoch"] == 3 and ckpt["hyper_parameters"] == {"lr": 0.1}, "lightning.ckpt: plain values come back")


# a file whose pickle would run a shell command when torch.load(weights_only=False) opens it
class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > PWNED",))


torch.save({"weight": torch.ones(2), "surprise": Payload()}, "suspicious.pt")
try:
    tk.load("suspicious.pt")
    check(False, "suspicious.pt refused")
except tk.UnsafePickleError as e:
    print(f"refused: {e}")
check(not Path("PWNED").exists(), "suspicious.pt: refused, the payload never ran")

# convert to safetensors on the command line (or tk.save(tk.load(src), dst) in Python)
r = subprocess.run([sys.executable, "-m", "torchkeep", "convert", "old.pt", "old.safetensors", "--force"],
                   capture_output=True, text=True)
print(r.stdout.strip() or r.stderr.strip())
check(r.returncode == 0 and same_weights(tk.load("old.safetensors")), "torchkeep convert old.pt old.safetensors")
sys.exit(1 if failed else 0)
