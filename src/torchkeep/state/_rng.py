"""Random number generator state: Python ``random``, NumPy's global generator, torch CPU and
every initialised CUDA device, as uint8 tensors plus a few JSON numbers. No pickle."""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import StateMismatchError

__all__ = ["RNGState", "capture_rng", "restore_rng", "check_rng"]

_MT_WORDS = 624


def _u32_to_bytes(words: Any) -> torch.Tensor:
    arr = np.ascontiguousarray(np.asarray(words, dtype=np.uint32))
    return torch.from_numpy(arr.view(np.uint8).copy())


def _bytes_to_u32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy().view(np.uint32)


def capture_rng() -> dict[str, Any]:
    """The state of every global generator, in a tree :func:`torchkeep.save` can store."""
    version, words, gauss_next = random.getstate()
    np_name, np_key, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    cuda: list[torch.Tensor] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return {
        "python": {"version": int(version), "state": _u32_to_bytes(words), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(np_name),
            "key": _u32_to_bytes(np_key),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def _is_u8(t: Any, n: int | None = None) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1 and (n is None or t.numel() == n)


def check_rng(tree: Any, where: str = "rng") -> list[str]:
    """Every reason ``tree`` is not an RNG state :func:`restore_rng` can apply (empty: fits)."""
    if not isinstance(tree, Mapping):
        return [f"{where}: expected a dict of generator states, got {type(tree).__name__}"]
    problems = []
    missing = [k for k in ("python", "numpy", "torch") if k not in tree]
    if missing:
        problems.append(f"{where}: missing generator state(s) {missing}")
    py = tree.get("python")
    if "python" in tree and not (
        isinstance(py, Mapping) and _is_u8(py.get("state"), (_MT_WORDS + 1) * 4) and isinstance(py.get("version"), int)
    ):
        problems.append(f"{where}.python: expected {{version, state: uint8[{(_MT_WORDS + 1) * 4}], gauss_next}}")
    npst = tree.get("numpy")
    if "numpy" in tree and not (
        isinstance(npst, Mapping) and npst.get("bit_generator") == "MT19937" and _is_u8(npst.get("key"), _MT_WORDS * 4)
    ):
        problems.append(f"{where}.numpy: expected an MT19937 state with key uint8[{_MT_WORDS * 4}]")
    if "torch" in tree and not _is_u8(tree.get("torch")):
        problems.append(f"{where}.torch: expected a 1-D uint8 tensor (torch.get_rng_state())")
    cuda = tree.get("cuda", [])
    if not isinstance(cuda, (list, tuple)) or not all(_is_u8(s) for s in cuda):
        problems.append(f"{where}.cuda: expected a list of 1-D uint8 tensors, one per device")
    return problems


def restore_rng(tree: Mapping[str, Any], where: str = "rng") -> None:
    """Put every generator back as :func:`capture_rng` found it. Validates before touching any."""
    problems = check_rng(tree, where)
    if problems:
        raise StateMismatchError("cannot restore RNG state:\n  " + "\n  ".join(problems))
    py = tree["python"]
    words = tuple(int(w) for w in _bytes_to_u32(py["state"]))
    gauss = py.get("gauss_next")
    random.setstate((py["version"], words, None if gauss is None else float(gauss)))
    npst = tree["numpy"]
    np.random.set_state(
        ("MT19937", _bytes_to_u32(npst["key"]).copy(), int(npst["pos"]), int(npst["has_gauss"]), float(npst["cached_gaussian"]))
    )
    torch.set_rng_state(tree["torch"].cpu())
    cuda = list(tree.get("cuda", []))
    if cuda:
        if not torch.cuda.is_available():
            warnings.warn(
                f"{where}: the checkpoint holds RNG states for {len(cuda)} CUDA device(s) but CUDA is not "
                f"available here; they were not restored, so GPU randomness will differ.",
                stacklevel=3,
            )
            return
        n = torch.cuda.device_count()
        if n != len(cuda):
            warnings.warn(
                f"{where}: the checkpoint holds RNG states for {len(cuda)} CUDA device(s), this machine has {n}; "
                f"restoring the first {min(n, len(cuda))}.",
                stacklevel=3,
            )
        for i, s in enumerate(cuda[:n]):
            torch.cuda.set_rng_state(s.cpu(), i)


class RNGState:
    """The global generators as one :class:`~torchkeep.Stateful` (TrainState includes it by default)."""

    def state_dict(self) -> dict[str, Any]:
        return capture_rng()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        restore_rng(state_dict)
