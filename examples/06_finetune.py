"""Recipe 6: fine-tuning a pretrained model.

The seeds' four transfer-learning situations, one line each: replace the output layer,
freeze the first k layers (or by name) and retrain the rest, give the backbone a smaller
learning rate, or use the network as a fixed feature extractor.

    python examples/06_finetune.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import torchkeep as tk

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="torchkeep-06-"))
out.mkdir(parents=True, exist_ok=True)
failed = []


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failed.append(what)


def small_cnn(num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),    # 0-2: "layer1"
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),  # 3-5: "layer2"
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, num_classes),                                      # 8: the head
    )


torch.manual_seed(0)
tk.save(small_cnn(), out / "pretrained.safetensors")  # stands in for a downloaded model

model = small_cnn()
tk.load_into(model, out / "pretrained.safetensors")
print(tk.replace_head(model, 3))                      # 10 classes -> 3: a new, trainable Linear
print(tk.freeze(model, first=3, bn_eval=True))       # first 3 layers frozen, their BatchNorm stats too
print(tk.summary(model))

# the rest of the backbone learns 10x slower than the new head; no weight decay on norms and biases
groups = tk.param_groups(model, lr=1e-2, backbone_lr_mult=0.1, weight_decay=1e-4)
for g in groups:
    print(f"  group {g['name']:<20} lr {g['lr']:<7} weight_decay {g['weight_decay']:<7} {len(g['params'])} tensors")
opt = torch.optim.SGD(groups, lr=1e-2, momentum=0.9)

before = {k: v.clone() for k, v in model.state_dict().items()}
model.train()
x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
loss = nn.functional.cross_entropy(model(x), y)
opt.zero_grad()
loss.backward()
opt.step()
after = model.state_dict()
changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
print("changed by one training step:", changed)
frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
check(not any(k in changed for k in frozen), "frozen parameters did not move")
check(torch.equal(before["1.running_mean"], after["1.running_mean"]), "frozen BatchNorm kept its running statistics")
check({"8.weight", "3.weight"} <= set(changed), "the head and the unfrozen layers trained")

# a fixed feature extractor: the model without its head, frozen, in eval mode
features = tk.feature_extractor(model)
with torch.no_grad():
    f = features(x)
check(f.shape == (16, 16) and not any(p.requires_grad for p in features.parameters()),
      f"feature extractor returns {tuple(f.shape)} features, every parameter frozen")

tk.save(model, out / "finetuned.safetensors")
sys.exit(1 if failed else 0)
