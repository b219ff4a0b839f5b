"""Recipe 7: batch training over a DataLoader that stops mid-epoch and resumes at the same batch.

The seeds' batch-training loop (``TensorDataset`` + ``DataLoader(shuffle=True)``, 3 epochs)
with ``tk.ResumableLoader`` in place of ``DataLoader``: same arguments, plus
``state_dict()``/``load_state_dict()``. After a restore the interrupted epoch continues at
the next batch, in the same shuffled order, with the same random augmentation, whatever
``num_workers`` is.

    python examples/07_batch_training_resume_mid_epoch.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import torch

import torchkeep as tk

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="torchkeep-07-"))
out.mkdir(parents=True, exist_ok=True)
failed = []


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failed.append(what)


class Jittered(torch.utils.data.Dataset):
    """The seeds' 10 points, with random augmentation drawn in __getitem__."""

    def __init__(self) -> None:
        self.x = torch.linspace(1, 10, 10)
        self.y = torch.linspace(10, 1, 10)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.01 * torch.randn(()), self.y[i]


BATCH_SIZE, EPOCHS = 3, 3  # 4 batches per epoch: 3, 3, 3, 1


def make_loader(num_workers: int = 0) -> tk.ResumableLoader:
    return tk.ResumableLoader(Jittered(), batch_size=BATCH_SIZE, shuffle=True, seed=0, num_workers=num_workers)


def run(loader, stop_at=None):
    """Yield (epoch, step, batch_x) until ``stop_at = (epoch, step)`` has been processed."""
    while loader.epoch < EPOCHS:
        epoch = loader.epoch
        for batch_x, batch_y in loader:
            step = loader.batches_yielded - 1
            yield epoch, step, batch_x
            if (epoch, step) == stop_at:
                return


# uninterrupted, printed as the seeds do
full = list(run(make_loader()))
for epoch, step, bx in full:
    print(f"Epoch: {epoch} | Step: {step} | batch x: {[round(v, 2) for v in bx.tolist()]}")

# interrupted after epoch 1, step 1 (mid-epoch); the position goes into a checkpoint
loader = make_loader()
first = list(run(loader, stop_at=(1, 1)))
print("loader.state_dict() =", loader.state_dict())
tk.save(loader, out / "loader.safetensors")  # or inside a tk.TrainState with the model

# a new process: a new loader, restored, continues at epoch 1, step 2
loader = make_loader()
loader.load_state_dict(tk.load(out / "loader.safetensors"))
rest = list(run(loader))
print(f"resumed at epoch {rest[0][0]}, step {rest[0][1]}")
same = [(e, s) for e, s, _ in first + rest] == [(e, s) for e, s, _ in full] and all(
    torch.equal(a[2], b[2]) for a, b in zip(first + rest, full)
)
check(same, "interrupted + resumed batches == uninterrupted batches (order and augmentation)")

# the same batches with worker processes
workers = list(run(make_loader(num_workers=2)))
check(all(torch.equal(a[2], b[2]) for a, b in zip(workers, full)) and len(workers) == len(full),
      "num_workers=2 yields the same batches as num_workers=0")
sys.exit(1 if failed else 0)
