"""Recipe 3: a general training checkpoint, resumed exactly.

Model, optimizer, LR scheduler, epoch and metrics, RNG states and the DataLoader's position
go into one ``tk.TrainState``; a ``Checkpointer`` writes them atomically (a checkpoint is
complete and verified, or it does not exist) and keeps the last and the best. Auto-resume is
``start = ckpt.restore(state) or 0``. The resumed run ends bitwise where the run that never
stopped ends.

    python examples/03_training_checkpoint_resume.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import torchkeep as tk


out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="torchkeep-03-"))
out.mkdir(parents=True, exist_ok=True)
torch.use_deterministic_algorithms(True)  # exactness needs deterministic kernels
failed = []


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failed.append(what)


x = torch.linspace(-1, 1, 120).unsqueeze(1)
y = x.pow(2) + 0.2 * torch.rand(x.size(), generator=torch.Generator().manual_seed(0))
EPOCHS = 6


def train(run_dir: Path, stop_after_epoch: int | None = None) -> tk.TrainState:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))  # dropout draws RNG
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    loader = tk.ResumableLoader(torch.utils.data.TensorDataset(x, y), batch_size=20, shuffle=True)
    progress = {"epoch": 0, "best": None}
    state = tk.TrainState(model=model, opt=opt, sched=sched, loader=loader, progress=progress)

    with tk.Checkpointer(run_dir, keep_last=2, keep_best=1, monitor="loss") as ckpt:
        start = ckpt.restore(state) or 0  # newest complete checkpoint, or a fresh run
        if start:
            print(f"resumed at epoch {progress['epoch']} (step {start}, lr {sched.get_last_lr()[0]})")
        for epoch in range(progress["epoch"], EPOCHS):
            total = 0.0
            for xb, yb in loader:
                loss = nn.functional.mse_loss(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
            sched.step()
            progress["epoch"] = epoch + 1
            progress["best"] = min(total, progress["best"] or total)
            ckpt.save(state, step=epoch + 1, metrics={"loss": total})
            if stop_after_epoch == epoch + 1:
                print(f"stopping after epoch {epoch + 1} (as if the job were killed)")
                break
        for rec in ckpt.checkpoints():
            print(f"  step {rec.step}: loss {rec.metrics['loss']:.4f}, {rec.size} bytes, valid={rec.valid}")
    return state


full = train(out / "uninterrupted")
train(out / "interrupted", stop_after_epoch=3)
resumed = train(out / "interrupted")  # a new process would do exactly this



def same(a, b) -> bool:
    """Bit-equal trees (tensors compared with torch.equal, everything else with ==)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    return a == b


a, b = full.state_dict(), resumed.state_dict()
check(same(a["model"], b["model"]), "resumed model == uninterrupted model, bit for bit")
check(same(a["opt"], b["opt"]), "optimizer state (momentum buffers) bit-equal")
check(a["sched"] == b["sched"] and a["progress"] == b["progress"], "scheduler and epoch counter equal")

# the RNG is part of the state: after a restore, torch.rand continues identically
state_file = out / "rng_check.safetensors"
tk.save(resumed, state_file)
after_save = torch.rand(4)
resumed.load_state_dict(tk.load(state_file))
check(torch.equal(torch.rand(4), after_save), "torch.rand after restore == torch.rand after save")
sys.exit(1 if failed else 0)
