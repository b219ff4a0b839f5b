"""ResumableLoader: a DataLoader that can stop mid-epoch and continue at the next batch.

Everything random about an epoch is a function of ``(seed, epoch)``, never of history:

* the order: a ``torch.Generator`` seeded from ``(seed, epoch)`` shuffles; a sampler the
  user passed is iterated with the global generators forked and seeded from ``(seed, epoch)``
  (and ``set_epoch(epoch)`` called first, for ``DistributedSampler``);
* the data: before fetching batch ``i`` the torch CPU, NumPy and Python generators are
  seeded from ``(seed, epoch, i)`` (in a worker directly, in the main process inside a fork
  that is undone afterwards), so augmentation draws the same numbers whichever worker loads
  the batch and however many batches came before; ``num_workers=0`` and ``num_workers=2``
  give the same batches;
* worker seeds: DataLoader's ``base_seed`` comes from a private generator seeded from
  ``(seed, epoch)``, not from the global torch generator, so creating an iterator mid-run
  draws nothing from the training's random numbers.

``state_dict()`` is ``{"seed", "epoch", "batches_yielded", "batches_per_epoch"}``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from ..errors import StateMismatchError, UnsupportedTypeError

__all__ = ["ResumableLoader"]

_M64 = (1 << 64) - 1
_ORDER, _DATA, _WORKERS, _SAMPLER = 1, 2, 3, 4  # streams derived from the seed


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (the same on every platform and process)."""
    h = 0
    for p in parts:
        h = _splitmix(h ^ (int(p) & _M64))
    return h & ((1 << 63) - 1)


def _seed_all(seed: int) -> None:
    torch.default_generator.manual_seed(seed)  # CPU only: CUDA generators stay untouched
    random.seed(seed)
    np.random.seed(derive_seed(seed, 1) & 0xFFFFFFFF)


@contextmanager
def _forked_rng() -> Iterator[None]:
    """Run a block with the global CPU generators and put them back afterwards."""
    t, n, p = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(t)
        np.random.set_state(n)
        random.setstate(p)


class _SeededBatch(list):
    """A batch of indices carrying the seed its samples are loaded with (pickles to workers)."""

    def __init__(self, indices: Iterable[int], seed: int) -> None:
        super().__init__(indices)
        self.seed = seed

    def __reduce__(self) -> Any:
        return (_SeededBatch, (list(self), self.seed))


class _SeededDataset(Dataset):
    """Fetches a batch with the generators seeded from the batch's seed."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        return self.dataset[index]

    def _fetch(self, batch: list[Any]) -> Any:
        getitems = getattr(self.dataset, "__getitems__", None)
        if callable(getitems):
            return getitems(list(batch))
        return [self.dataset[i] for i in batch]

    def __getitems__(self, batch: list[Any]) -> Any:
        seed = getattr(batch, "seed", None)
        if seed is None:
            return self._fetch(batch)
        if get_worker_info() is not None:  # a worker's generators are ours to set
            _seed_all(seed)
            return self._fetch(batch)
        with _forked_rng():  # main process: leave the training's generators as they were
            _seed_all(seed)
            return self._fetch(batch)


class _EpochPlan(Sampler):
    """The batch sampler DataLoader sees: the current epoch's batches from ``start`` on."""

    def __init__(
        self,
        n: int,
        batch_size: int | None,
        drop_last: bool,
        shuffle: bool,
        sampler: Any,
        batch_sampler: Any,
    ) -> None:
        self.n, self.batch_size, self.drop_last, self.shuffle = n, batch_size, drop_last, shuffle
        self.sampler, self.batch_sampler = sampler, batch_sampler
        self.seed = 0
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        n = len(self.sampler) if self.sampler is not None else self.n
        assert self.batch_size is not None
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _chunks(self, indices: Iterable[int]) -> Iterator[list[int]]:
        bs = self.batch_size
        assert bs is not None
        batch: list[int] = []
        for i in indices:
            batch.append(int(i) if isinstance(i, (int, np.integer)) else i)
            if len(batch) == bs:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def _user_batches(self) -> list[list[Any]]:
        src = self.batch_sampler if self.batch_sampler is not None else self.sampler
        set_epoch = getattr(src, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)
        inner = getattr(src, "sampler", None)  # a BatchSampler around a DistributedSampler
        if inner is not None and callable(getattr(inner, "set_epoch", None)):
            inner.set_epoch(self.epoch)
        with _forked_rng():
            _seed_all(derive_seed(self.seed, self.epoch, _SAMPLER))
            if self.batch_sampler is not None:
                return [list(b) for b in self.batch_sampler]
            return list(self._chunks(iter(self.sampler)))

    def batches(self) -> Iterable[list[Any]]:
        if self.batch_sampler is not None or self.sampler is not None:
            return self._user_batches()
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(derive_seed(self.seed, self.epoch, _ORDER))
            return self._chunks(torch.randperm(self.n, generator=g).tolist())
        return self._chunks(range(self.n))

    def __iter__(self) -> Iterator[list[Any]]:
        seed, epoch, start = self.seed, self.epoch, self.start
        for i, b in enumerate(self.batches()):
            if i >= start:
                yield _SeededBatch(b, derive_seed(seed, epoch, i, _DATA))


class ResumableLoader(DataLoader):
    """A drop-in :class:`torch.utils.data.DataLoader` that resumes mid-epoch, exactly.

    Same arguments as DataLoader, plus ``seed`` (default: drawn from torch's global
    generator, or from ``generator`` when given, so ``torch.manual_seed(0)`` at the top of
    a script makes the run deterministic). ``state_dict()`` records the seed, the epoch and
    how many batches this epoch has yielded; after ``load_state_dict`` the next
    ``for batch in loader`` continues that epoch at the next batch, and later epochs
    shuffle as they would have. An epoch ends when its iterator is exhausted; starting a
    new ``for`` loop over the loader before that abandons the rest of the epoch.

    Randomness inside ``Dataset.__getitem__`` (torch, NumPy or Python ``random``) is seeded
    per batch from ``(seed, epoch, batch index)``, in workers and in the main process
    alike, so it reproduces after a resume and does not depend on ``num_workers``. A
    ``sampler`` or ``batch_sampler`` you pass is iterated once per epoch (after
    ``set_epoch(epoch)`` when it has one) with the global generators seeded from
    ``(seed, epoch)``; a sampler that keeps its own generator must be reproducible from
    ``set_epoch`` alone. Map-style datasets only.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Sampler[Any] | Iterable[Any] | None = None,
        batch_sampler: Sampler[list[Any]] | Iterable[list[Any]] | None = None,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable[[int], None] | None = None,
        multiprocessing_context: Any = None,
        generator: torch.Generator | None = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        seed: int | None = None,
    ) -> None:
        if isinstance(dataset, IterableDataset):
            raise UnsupportedTypeError(
                "ResumableLoader needs a map-style dataset (with __getitem__ and __len__); an "
                "IterableDataset's position is inside the dataset itself. Make the dataset Stateful "
                "and add it to the TrainState, or use a map-style dataset."
            )
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, and drop_last")
            batch_size, drop_last = None, False
        elif batch_size is None:
            raise UnsupportedTypeError("ResumableLoader needs batching: pass batch_size=N (batch_size=None is not supported)")
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())
        self._plan = _EpochPlan(
            len(dataset), batch_size, bool(drop_last), bool(shuffle), sampler, batch_sampler  # type: ignore[arg-type]
        )
        self._seeded = _SeededDataset(dataset)
        self._worker_gen = torch.Generator()
        self._seed = int(seed) & ((1 << 63) - 1)
        self._epoch = 0
        self._yielded = 0
        self._resume = False
        self._token = 0
        super().__init__(
            dataset,
            batch_sampler=self._plan,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            timeout=timeout,
            worker_init_fn=worker_init_fn,
            multiprocessing_context=multiprocessing_context,
            generator=self._worker_gen,
            prefetch_factor=prefetch_factor,
            persistent_workers=persistent_workers,
            pin_memory_device=pin_memory_device,
            in_order=in_order,
        )
        # what the user passed, as DataLoader would show it (DataLoader forbids setting these)
        object.__setattr__(self, "batch_size", batch_size)
        object.__setattr__(self, "drop_last", bool(drop_last))
        if sampler is not None:
            object.__setattr__(self, "sampler", sampler)
        self.user_batch_sampler = batch_sampler

    # -- position ------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        """The seed every epoch's order and every batch's augmentation derive from."""
        return self._seed

    @property
    def epoch(self) -> int:
        """The epoch in progress (or the next one, once an epoch's iterator is exhausted)."""
        return self._epoch

    @property
    def batches_yielded(self) -> int:
        """Batches of the current epoch handed out so far."""
        return self._yielded

    def _get_iterator(self) -> Any:
        # DataLoader's iterators read ``self.dataset`` once, when built: give them the seeded
        # view while ``loader.dataset`` stays the user's dataset.
        user = self.dataset
        object.__setattr__(self, "dataset", self._seeded)
        try:
            return super()._get_iterator()
        finally:
            object.__setattr__(self, "dataset", user)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        if self._resume:
            self._resume = False
        elif self._yielded > 0:  # the previous loop stopped early: that epoch is over
            self._epoch += 1
            self._yielded = 0
        self._plan.seed, self._plan.epoch, self._plan.start = self._seed, self._epoch, self._yielded
        self._worker_gen.manual_seed(derive_seed(self._seed, self._epoch, _WORKERS))
        self._token += 1
        return self._run(self._token, super().__iter__())

    def _run(self, token: int, it: Iterator[Any]) -> Iterator[Any]:
        for batch in it:
            if token != self._token:  # a restore or a newer loop took over
                return
            self._yielded += 1
            yield batch
        if token == self._token:
            self._epoch += 1
            self._yielded = 0

    # -- Stateful ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {
            "seed": self._seed,
            "epoch": self._epoch,
            "batches_yielded": self._yielded,
            "batches_per_epoch": len(self._plan),
        }

    def _check_state_dict(self, state_dict: Any, where: str = "loader") -> list[str]:
        keys = ("seed", "epoch", "batches_yielded")
        if not isinstance(state_dict, Mapping) or not all(isinstance(state_dict.get(k), int) for k in keys):
            return [f"{where}: expected a ResumableLoader state {{seed, epoch, batches_yielded, batches_per_epoch}}"]
        saved_len = state_dict.get("batches_per_epoch")
        if state_dict["batches_yielded"] > 0 and isinstance(saved_len, int) and saved_len != len(self._plan):
            return [
                f"{where}: the checkpoint stopped mid-epoch in an epoch of {saved_len} batches; this loader yields "
                f"{len(self._plan)} per epoch (the dataset size, batch_size, drop_last or sampler changed), so the "
                f"interrupted epoch cannot be continued. Restore with the original data settings, or resume at an "
                f"epoch boundary."
            ]
        return []

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        problems = self._check_state_dict(state_dict)
        if problems:
            raise StateMismatchError("\n".join(problems))
        self._seed = int(state_dict["seed"])
        self._epoch = int(state_dict["epoch"])
        self._yielded = int(state_dict["batches_yielded"])
        self._resume = True
        self._token += 1  # a loop still running over the old position stops
