"""One rank of a multi-process test: ``python dist_worker.py SCENARIO ARGS_JSON``.

The launcher (``_launch.py``) sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT. Each
scenario builds the same tiny model (uneven shards: 9 and 3 rows over 2 ranks), wraps it
(DDP or FSDP2 ``fully_shard``) and talks to a ``tk.Checkpointer``. Results go to files the
test reads; the exit status is 0 only when every check held.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import warnings

import torch
import torch.distributed as dist

import torchkeep as tk

warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


def build(kind: str, seed: int) -> tuple[torch.nn.Module, tk.TrainState, dict]:
    torch.manual_seed(seed)
    model: torch.nn.Module = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.ReLU(), torch.nn.Linear(9, 3))
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model[0])
        fully_shard(model[2])
        fully_shard(model)
    elif kind == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01 * (1 + seed), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    extra = {"epoch": 0}
    return model, tk.TrainState(model=model, opt=opt, sched=sched, extra=extra), extra


def train(model: torch.nn.Module, state: tk.TrainState, extra: dict, steps: int, rank: int) -> None:
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(steps):
        x = torch.randn(4, 6, generator=g)
        loss = model(x).pow(2).mean()
        loss.backward()
        state["opt"].step()
        state["opt"].zero_grad()
        state["sched"].step()
        extra["epoch"] += 1


def full_view(state: tk.TrainState) -> dict[str, torch.Tensor]:
    """Every tensor of the state (RNG aside) as a whole tensor, DTensors gathered."""
    out: dict[str, torch.Tensor] = {}

    def walk(node, path):
        if isinstance(node, torch.Tensor):
            full = node.full_tensor() if hasattr(node, "full_tensor") else node
            out[".".join(map(str, path))] = full.detach().clone()
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, path + (i,))

    tree = state.state_dict()
    tree.pop("_rng")
    walk(tree, ())
    return out


def plain_values(state: tk.TrainState) -> dict:
    return {"lr": state["opt"].param_groups[0]["lr"], "sched_epoch": state["sched"].last_epoch}


def compare(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> list[str]:
    bad = sorted(set(got) ^ set(ref))
    bad += [k for k in sorted(set(got) & set(ref)) if not (got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]))]
    return bad


def init() -> tuple[int, int]:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    return dist.get_rank(), dist.get_world_size()


def scenario_train_save(a: dict) -> int:
    """Train, save a step after each of a.steps, write the reference from rank 0."""
    rank, world = init()
    model, state, extra = build(a["kind"], seed=0)
    ck = tk.Checkpointer(a["run"])
    done = 0
    for s in a["steps"]:
        train(model, state, extra, s - done, rank)
        done = s
        ck.save(state, s, metrics={"loss": float(s)})
    view = full_view(state)
    rand = torch.rand(3)  # what each rank's generator gives next: restored RNG must repeat it
    rands = [None] * world
    dist.all_gather_object(rands, rand)
    if a.get("torch_dcp"):  # torch's own dcp.save (FileSystemWriter, .distcp + .metadata) of the model
        import torch.distributed.checkpoint as dcp

        dcp.save({"model": model.state_dict()}, checkpoint_id=a["torch_dcp"])
    if rank == 0:
        tk.save({**view, **{f"rand.rank{r}": t for r, t in enumerate(rands)}}, a["ref"], metadata={"values": plain_values(state), "world": world})
    ck.close()
    dist.barrier()
    dist.destroy_process_group()
    return 0


def scenario_restore_check(a: dict) -> int:
    """Restore into freshly built (differently seeded) states of each kind; compare to the reference."""
    rank, world = init()
    ref = tk.load(a["ref"])
    ref_values = tk.inspect(a["ref"]).metadata["values"]
    rands = {k: v for k, v in ref.items() if k.startswith("rand.")}
    ref = {k: v for k, v in ref.items() if not k.startswith("rand.")}
    problems = []
    for kind in a["kinds"]:
        model, state, extra = build(kind, seed=7)
        ck = tk.Checkpointer(a["run"])
        step = ck.restore(state)
        if step != a["step"]:
            problems.append(f"{kind}: restored step {step}, expected {a['step']}")
        mine = torch.rand(3)
        want = rands.get(f"rand.rank{rank}")
        if a.get("check_rng") and not (want is not None and torch.equal(mine, want)):
            problems.append(f"{kind}: rank {rank} RNG does not continue the saved run")
        bad = compare(full_view(state), ref)
        if bad:
            problems.append(f"{kind}: tensors differ from the reference: {bad[:8]}")
        if plain_values(state) != ref_values or extra["epoch"] != a["epoch"]:
            problems.append(f"{kind}: plain values {plain_values(state)} / epoch {extra['epoch']}, expected {ref_values} / {a['epoch']}")
        # training goes on from the restored state (optimizer state tensors have the right types)
        train(model, state, extra, 1, rank)
        ck.close()
    with open(os.path.join(a["out"], f"rank{rank}.json"), "w") as f:
        json.dump({"problems": problems, "world": world}, f)
    dist.barrier()
    dist.destroy_process_group()
    return 1 if problems else 0


def scenario_kill_mid_save(a: dict) -> int:
    """Save step 1; during step 2's save, rank 1 is SIGKILLed while writing its shard."""
    rank, world = init()
    model, state, extra = build(a["kind"], seed=0)
    ck = tk.Checkpointer(a["run"])
    train(model, state, extra, 1, rank)
    ck.save(state, 1)
    view = full_view(state)  # a collective for DTensors: every rank takes part
    if rank == 0:
        tk.save(view, a["ref"])
    train(model, state, extra, 1, rank)
    if rank == 1:
        from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter

        real = HuggingFaceStorageWriter.write_data

        def die(self, plan, planner):
            real(self, plan, planner)  # the shard is (partly) on disk, the manifest is not
            with open(os.path.join(a["out"], "rank1-dying"), "w") as f:
                f.write("x")
            os.kill(os.getpid(), signal.SIGKILL)

        HuggingFaceStorageWriter.write_data = die
    try:
        ck.save(state, 2)
    except Exception as e:  # noqa: BLE001 - rank 0 must fail, not hang or commit
        with open(os.path.join(a["out"], f"rank{rank}-error.txt"), "w") as f:
            f.write(f"{type(e).__name__}: {e}")
        os._exit(3)
    with open(os.path.join(a["out"], f"rank{rank}-committed"), "w") as f:
        f.write("step 2 returned normally")
    os._exit(0)


if __name__ == "__main__":
    fn = globals()[f"scenario_{sys.argv[1]}"]
    sys.exit(fn(json.loads(sys.argv[2])))
