"""Recipe 1: weights for inference.

Save a model's state_dict, load it into a freshly built model on any device, in any dtype.
The seeds' way is ``torch.save(model.state_dict(), PATH)`` then
``model.load_state_dict(torch.load(PATH))``; with torchkeep the file is safetensors (no
pickle), and ``map_location``/``dtype`` replace the ``lambda storage, loc: ...`` dance.

    python examples/01_weights_for_inference.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import torchkeep as tk

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="torchkeep-01-"))
out.mkdir(parents=True, exist_ok=True)
failed = []


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failed.append(what)


def make_net() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 10), nn.ReLU(), nn.Linear(10, 1))


torch.manual_seed(0)
net = make_net()
device = "cuda" if torch.cuda.is_available() else "cpu"
net.to(device)  # trained on a GPU when there is one...
x = torch.linspace(-1, 1, 50).unsqueeze(1)
with torch.no_grad():
    expected = net(x.to(device)).cpu()

tk.save(net, out / "net.safetensors")  # the state_dict, as safetensors
tk.save(net, out / "net.pt")           # the same, as a torch zip file any torch.load reads
print(tk.inspect(out / "net.safetensors"))

# ... loaded on the CPU: a fresh model, then its weights
fresh = make_net()
fresh.load_state_dict(tk.load(out / "net.safetensors", map_location="cpu"))
fresh.eval()  # the seeds' warning: inference in eval mode
with torch.no_grad():
    check(torch.equal(fresh(x), expected), "reloaded on the CPU: predictions bit-equal")

check(set(torch.load(out / "net.pt", weights_only=True)) == set(net.state_dict()),
      "net.pt is read by plain torch.load(weights_only=True)")

# another dtype at load time (the file is unchanged)
half = tk.load(out / "net.safetensors", dtype=torch.bfloat16)
check(all(t.dtype == torch.bfloat16 for t in half.values()), "loaded as bfloat16 with dtype=")

# load_into: the same, with a report of what went where (and no double copy in memory)
report = tk.load_into(make_net(), out / "net.safetensors")
print(report.summary())
check(report.ok, "load_into: every key loaded")

print(f"files in {out}")
sys.exit(1 if failed else 0)
