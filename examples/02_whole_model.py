"""Recipe 2: the whole model, without pickle.

The seeds' ``torch.save(model, PATH)`` pickles the class path: rename a module and the file
is stranded, and loading it runs whatever the file names. ``tk.save_model`` stores the
architecture as data (class paths + constructor arguments) next to the weights;
``tk.load_model`` rebuilds it, importing only what ``allow=`` permits.

    python examples/02_whole_model.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import torchkeep as tk

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="torchkeep-02-"))
out.mkdir(parents=True, exist_ok=True)
failed = []


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failed.append(what)


@tk.keep_args  # records the constructor call, so the file can rebuild the model
class Net(nn.Module):
    def __init__(self, n_feature: int, n_hidden: int, n_output: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(n_feature, n_hidden)
        self.predict = nn.Linear(n_hidden, n_output)

    def forward(self, x):
        return self.predict(torch.relu(self.hidden(x)))


class RenamedNet(Net):  # "the class moved": a later version of the code
    pass


torch.manual_seed(0)
x = torch.linspace(-1, 1, 50).unsqueeze(1)

# torch.nn containers need nothing
seq = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
tk.save_model(seq, out / "seq.safetensors")
seq2 = tk.load_model(out / "seq.safetensors")  # rebuilt, weights loaded, in eval()
check(torch.equal(seq2(x), seq(x)) and not seq2.training, "nn.Sequential: rebuilt without its constructor call")

# your own class: its module must be allowed explicitly (here the script itself, __main__)
net = Net(1, 10, 1).eval()
tk.save_model(net, out / "net.safetensors")
try:
    tk.load_model(out / "net.safetensors")
    check(False, "load_model without allow= refuses to import __main__.Net")
except tk.ForbiddenClassError as e:
    print(f"refused, nothing imported: {e}")
    check(True, "load_model without allow= refuses to import __main__.Net")
net2 = tk.load_model(out / "net.safetensors", allow=["__main__"])
check(type(net2) is Net and torch.equal(net2(x), net(x)), "Net rebuilt from the file: predictions bit-equal")

# the class was renamed since the file was written: class_map, no re-saving needed
net3 = tk.load_model(out / "net.safetensors", allow=["__main__"], class_map={"__main__.Net": "__main__.RenamedNet"})
check(type(net3) is RenamedNet and torch.equal(net3(x), net(x)), "old file loads into the renamed class")

# any safetensors reader sees the plain state_dict
from safetensors.torch import load_file  # noqa: E402

check(set(load_file(out / "net.safetensors")) == set(net.state_dict()), "the file is plain safetensors")
sys.exit(1 if failed else 0)
