"""ResumableLoader: continue an interrupted epoch at the next batch, exactly."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler, WeightedRandomSampler

import torchkeep as tk
from torchkeep.errors import StateMismatchError, UnsupportedTypeError


class Aug(torch.utils.data.Dataset):
    """Index plus noise from torch, NumPy and Python: a batch shows its order and its RNG."""

    def __init__(self, n: int = 10) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i), torch.rand(()).item(), float(np.random.rand()), random.random()], dtype=torch.float64)


def epochs(loader, n: int) -> list[list[torch.Tensor]]:  # noqa: ANN001
    return [[b.clone() for b in loader] for _ in range(n)]


def flat(batches) -> list[list[float]]:  # noqa: ANN001
    return [b.tolist() for e in batches for b in (e if isinstance(e, list) else [e])]


def interrupted(make, stop_epoch: int, stop_batch: int, total_epochs: int):  # noqa: ANN001, ANN202
    """Run ``make()``'s loader to (stop_epoch, stop_batch), save, restore into a new loader,
    and return everything the new loader yields up to ``total_epochs``."""
    loader = make()
    for _ in range(stop_epoch):
        for _ in loader:
            pass
    it = iter(loader)
    for _ in range(stop_batch):
        next(it)
    sd = loader.state_dict()
    fresh = make(seed_offset=1)  # built with another seed: the state must bring the right one
    fresh.load_state_dict(sd)
    out = [[b.clone() for b in fresh]]
    out += epochs(fresh, total_epochs - stop_epoch - 1)
    return out


@pytest.mark.parametrize(
    ("workers", "stop_epoch", "stop_batch"),
    [(0, 0, 2), (0, 1, 0), (0, 1, 3), (0, 0, 4), (2, 0, 2), (2, 1, 3)],
)
def test_resume_mid_epoch_matches_uninterrupted(workers: int, stop_epoch: int, stop_batch: int) -> None:
    def make(seed_offset: int = 0) -> tk.ResumableLoader:
        return tk.ResumableLoader(Aug(10), batch_size=3, shuffle=True, num_workers=workers, seed=42 + seed_offset)

    full = epochs(make(), 3)
    got = interrupted(make, stop_epoch, stop_batch, 3)
    expected = [full[stop_epoch][stop_batch:]] + full[stop_epoch + 1 :]
    assert flat(got) == flat(expected)
    assert len(full[0]) == 4 and len(make()) == 4


def test_workers_and_main_process_load_the_same_batches() -> None:
    a = epochs(tk.ResumableLoader(Aug(9), batch_size=2, shuffle=True, num_workers=0, seed=3), 2)
    b = epochs(tk.ResumableLoader(Aug(9), batch_size=2, shuffle=True, num_workers=2, seed=3), 2)
    assert flat(a) == flat(b)
    assert flat(a[0]) != flat(a[1])  # another order and other noise in the next epoch


def test_iterating_does_not_touch_global_generators() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    loader = tk.ResumableLoader(Aug(8), batch_size=3, shuffle=True, seed=1)
    t, n, p = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    for _ in loader:
        pass
    assert torch.equal(torch.get_rng_state(), t) and np.array_equal(np.random.get_state()[1], n) and random.getstate() == p


def test_default_seed_comes_from_torch_manual_seed() -> None:
    torch.manual_seed(0)
    a = tk.ResumableLoader(Aug(), batch_size=2, shuffle=True)
    torch.manual_seed(0)
    b = tk.ResumableLoader(Aug(), batch_size=2, shuffle=True)
    c = tk.ResumableLoader(Aug(), batch_size=2, shuffle=True)
    assert a.seed == b.seed != c.seed
    assert flat(epochs(a, 1)) == flat(epochs(b, 1))
    g = torch.Generator().manual_seed(5)
    d = tk.ResumableLoader(Aug(), batch_size=2, shuffle=True, generator=g)
    assert d.seed == int(torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(5)).item())


def test_state_dict_and_epoch_accounting() -> None:
    loader = tk.ResumableLoader(Aug(7), batch_size=3, drop_last=True, seed=9)
    assert len(loader) == 2 and loader.batch_size == 3 and loader.drop_last and isinstance(loader.dataset, Aug)
    it = iter(loader)
    next(it)
    assert loader.state_dict() == {"seed": 9, "epoch": 0, "batches_yielded": 1, "batches_per_epoch": 2}
    next(it)
    assert loader.state_dict()["batches_yielded"] == 2  # the last batch is out; the epoch ends on exhaustion
    assert list(it) == []
    assert (loader.epoch, loader.batches_yielded) == (1, 0)
    it = iter(loader)
    next(it)
    for _ in loader:  # a new loop before the previous one finished: that epoch is abandoned
        pass
    assert loader.epoch == 3
    assert all(len(b) == 3 for b in loader)  # drop_last


def test_restore_after_the_last_batch_yields_nothing_then_next_epoch() -> None:
    def make() -> tk.ResumableLoader:
        return tk.ResumableLoader(Aug(6), batch_size=3, shuffle=True, seed=4)

    ref = make()
    full = epochs(ref, 2)
    loader = make()
    it = iter(loader)
    next(it), next(it)
    sd = loader.state_dict()
    assert sd["batches_yielded"] == 2 and sd["epoch"] == 0
    fresh = make()
    fresh.load_state_dict(sd)
    assert list(fresh) == []  # the rest of epoch 0
    assert flat([b for b in fresh]) == flat(full[1])


def test_restore_stops_a_running_loop() -> None:
    loader = tk.ResumableLoader(Aug(9), batch_size=3, seed=1)
    sd = loader.state_dict()
    it = iter(loader)
    next(it)
    loader.load_state_dict(sd)
    assert list(it) == []  # the old loop does not move the restored position
    assert [b[:, 0].tolist() for b in loader] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


@pytest.mark.parametrize(
    "sampler_kind", ["random", "weighted", "batch_sampler", "distributed"]
)
def test_user_samplers_resume(sampler_kind: str) -> None:
    ds = Aug(12)

    def make(seed_offset: int = 0) -> tk.ResumableLoader:
        seed = 8 + seed_offset
        if sampler_kind == "random":
            return tk.ResumableLoader(ds, batch_size=3, sampler=RandomSampler(ds), seed=seed)
        if sampler_kind == "weighted":
            return tk.ResumableLoader(ds, batch_size=3, sampler=WeightedRandomSampler([1.0 + i % 3 for i in range(12)], 12), seed=seed)
        if sampler_kind == "batch_sampler":
            return tk.ResumableLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds), 5, drop_last=False), seed=seed)
        return tk.ResumableLoader(ds, batch_size=2, sampler=DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=3), seed=seed)

    torch.manual_seed(0)
    full = epochs(make(), 3)
    assert flat(full[0]) != flat(full[1])
    torch.manual_seed(0)
    got = interrupted(make, 1, 1, 3)
    assert flat(got) == flat([full[1][1:]] + full[2:])


def test_distributed_sampler_gets_the_epoch() -> None:
    ds = Aug(8)
    sampler = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=0)
    loader = tk.ResumableLoader(ds, batch_size=2, sampler=sampler, seed=0)
    assert loader.sampler is sampler
    firsts = [[b[:, 0].tolist() for b in loader] for _ in range(2)]
    sampler.set_epoch(1)
    assert sorted(sum(firsts[1], [])) == sorted(float(i) for i in sampler)


def test_in_trainstate_roundtrip(tmp_path) -> None:  # noqa: ANN001
    loader = tk.ResumableLoader(Aug(10), batch_size=4, shuffle=True, seed=2)
    state = tk.TrainState(loader=loader, extra={})
    it = iter(loader)
    next(it)
    tk.save(state, tmp_path / "l.safetensors")
    rest = [b.clone() for b in it]
    other = tk.ResumableLoader(Aug(10), batch_size=4, shuffle=True, seed=77)
    tk.TrainState(loader=other, extra={}).load_state_dict(tk.load(tmp_path / "l.safetensors"))
    assert flat(list(other)) == flat(rest)


def test_changed_data_refuses_mid_epoch() -> None:
    loader = tk.ResumableLoader(Aug(10), batch_size=4, shuffle=True, seed=2)
    it = iter(loader)
    next(it)
    sd = loader.state_dict()
    smaller = tk.ResumableLoader(Aug(10), batch_size=5, shuffle=True, seed=2)
    with pytest.raises(StateMismatchError, match="epoch of 3 batches; this loader yields 2 per epoch"):
        smaller.load_state_dict(sd)
    with pytest.raises(StateMismatchError, match="loader: the checkpoint stopped mid-epoch"):
        tk.TrainState(loader=smaller, rng=False).load_state_dict({"loader": sd})
    sd["batches_yielded"] = 0
    smaller.load_state_dict(sd)  # at an epoch boundary the data may change


def test_refusals() -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):  # noqa: ANN204
            return iter(range(3))

    with pytest.raises(UnsupportedTypeError, match="map-style"):
        tk.ResumableLoader(Stream())
    with pytest.raises(ValueError, match="mutually exclusive"):
        tk.ResumableLoader(Aug(), sampler=RandomSampler(Aug()), shuffle=True)
    with pytest.raises(UnsupportedTypeError, match="batch_size=N"):
        tk.ResumableLoader(Aug(), batch_size=None)


def test_persistent_workers_resume() -> None:
    def make(seed: int) -> tk.ResumableLoader:
        return tk.ResumableLoader(Aug(9), batch_size=2, shuffle=True, num_workers=2, persistent_workers=True, seed=seed)

    full = epochs(tk.ResumableLoader(Aug(9), batch_size=2, shuffle=True, seed=3), 2)
    loader = make(3)
    it = iter(loader)
    next(it), next(it)
    sd = loader.state_dict()
    other = make(5)
    for _ in other:  # its workers are up and have served another epoch
        pass
    other.load_state_dict(sd)
    assert flat([b for b in other]) == flat(full[0][2:])
    assert flat(epochs(other, 1)) == flat(full[1])
