"""Recipe 4: several models in one checkpoint (GAN generator + discriminator, two optimizers).

One ``tk.TrainState`` names everything; one file holds it, with readable tensor names
(``gen.0.weight``, ``opt_d.state.disc.0.weight.exp_avg``). Restore it whole, or pull one
model out of it with ``tk.load_into(..., key="gen")``.

    python examples/04_several_models_gan.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import torchkeep as tk

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="torchkeep-04-"))
out.mkdir(parents=True, exist_ok=True)
failed = []


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failed.append(what)


def build():
    gen = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    disc = nn.Sequential(nn.Linear(1, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-3, betas=(0.5, 0.999))
    state = tk.TrainState(gen=gen, disc=disc, opt_g=opt_g, opt_d=opt_d, meta={"step": 0})
    return gen, disc, opt_g, opt_d, state


def gan_step(gen, disc, opt_g, opt_d):
    real = torch.randn(32, 1) * 0.5 + 2.0  # the "data": N(2, 0.5)
    fake = gen(torch.randn(32, 4))
    bce = nn.functional.binary_cross_entropy_with_logits
    d_loss = bce(disc(real), torch.ones(32, 1)) + bce(disc(fake.detach()), torch.zeros(32, 1))
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    g_loss = bce(disc(fake), torch.ones(32, 1))
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()


torch.manual_seed(0)
gen, disc, opt_g, opt_d, state = build()
for _ in range(50):
    gan_step(gen, disc, opt_g, opt_d)
state["meta"]["step"] = 50
path = out / "gan.safetensors"
tk.save(state, path)  # one file: both models, both optimizers, RNG, plain values
info = tk.inspect(path)
print(info)
for t in info.tensors[:6]:
    print(f"  {t.name:<40} {list(t.shape)}")

# continue the original run by one step...
gan_step(gen, disc, opt_g, opt_d)

# ...and restore everything into freshly built objects, then take the same step
torch.manual_seed(123)  # whatever the RNG is now: the checkpoint's RNG state is restored
gen2, disc2, opt_g2, opt_d2, state2 = build()
state2.load_state_dict(tk.load(path))
check(state2["meta"]["step"] == 50, "plain values restored (step = 50)")
gan_step(gen2, disc2, opt_g2, opt_d2)
check(all(torch.equal(a, b) for a, b in zip(gen.parameters(), gen2.parameters())),
      "after one more step the restored generator equals the original, bit for bit")
check(all(torch.equal(a, b) for a, b in zip(disc.parameters(), disc2.parameters())), "and the discriminator")

# only the generator, e.g. for sampling: load_into finds the "gen" entry inside the checkpoint
sampler = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
report = tk.load_into(sampler, path, key="gen")
print(report.summary())
check(report.ok, "the generator alone loads from the GAN checkpoint")
sys.exit(1 if failed else 0)
