"""Wrapper prefixes as data, and the pure functions that strip, add and choose them.

``nn.DataParallel``/``DistributedDataParallel`` save ``module.``, ``torch.compile`` saves
``_orig_mod.``, Lightning modules ``model.``/``net.``, Fabric ``_forward_module.``; FSDP and
activation checkpointing insert ``_fsdp_wrapped_module.``/``_checkpoint_wrapped_module.``
inside names. :func:`choose_prefix` decides which prefix to strip from the checkpoint and
which to add for the model by counting which choice makes the most names match, never by
guessing: the result says exactly what it did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "WRAPPER_PREFIXES",
    "INFIX_WRAPPERS",
    "strip_prefix",
    "add_prefix",
    "unwrap_prefixes",
    "drop_infix_wrappers",
    "PrefixChange",
    "choose_prefix",
]

V = TypeVar("V")

# Prefixes that wrappers put in front of every key, tried first (and stacked: module._orig_mod.).
WRAPPER_PREFIXES: tuple[str, ...] = (
    "module.",
    "_orig_mod.",
    "model.",
    "net.",
    "network.",
    "_forward_module.",
    "_fsdp_wrapped_module.",
    "_checkpoint_wrapped_module.",
    "base_model.model.",
)
# Components some wrappers insert anywhere inside a name.
INFIX_WRAPPERS: tuple[str, ...] = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")

_MAX_CANDIDATES = 32  # prefixes tried per side (the most common first)


def strip_prefix(sd: Mapping[str, V], prefix: str) -> dict[str, V]:
    """``sd`` with ``prefix`` removed from the keys that start with it (others unchanged)."""
    out: dict[str, V] = {}
    for k, v in sd.items():
        nk = k[len(prefix):] if prefix and k.startswith(prefix) and len(k) > len(prefix) else k
        if nk in out:
            raise ValueError(f"stripping {prefix!r} makes two keys {nk!r}; strip it only where it is a wrapper.")
        out[nk] = v
    return out


def add_prefix(sd: Mapping[str, V], prefix: str) -> dict[str, V]:
    """``sd`` with ``prefix`` in front of every key."""
    return {prefix + k: v for k, v in sd.items()}


def unwrap_prefixes(sd: Mapping[str, V], prefixes: Iterable[str] = WRAPPER_PREFIXES) -> dict[str, V]:
    """Strip known wrapper prefixes shared by every key, repeatedly (``module._orig_mod.x`` -> ``x``).

    Idempotent: the result has no wrapper prefix common to all of its keys.
    """
    prefixes = tuple(prefixes)
    keys = list(sd)
    while keys:
        p = next((p for p in prefixes if all(k.startswith(p) and len(k) > len(p) for k in keys)), None)
        if p is None:
            break
        keys = [k[len(p):] for k in keys]
    return dict(zip(keys, sd.values()))


def drop_infix_wrappers(key: str, infixes: Iterable[str] = INFIX_WRAPPERS) -> str:
    """``a._fsdp_wrapped_module.b.weight`` -> ``a.b.weight`` (dot-bounded components only)."""
    for w in infixes:
        while key.startswith(w):
            key = key[len(w):]
        key = key.replace("." + w, ".")
    return key


@dataclass(frozen=True)
class PrefixChange:
    """How checkpoint names were turned into model names: strip ``strip``, then add ``add``."""

    strip: str = ""
    add: str = ""
    infix: bool = False  # wrapper components removed inside names

    def __bool__(self) -> bool:
        return bool(self.strip or self.add or self.infix)

    def apply(self, key: str) -> str:
        if self.infix:
            key = drop_infix_wrappers(key)
        if self.strip and key.startswith(self.strip) and len(key) > len(self.strip):
            key = key[len(self.strip):]
        return self.add + key

    def describe(self) -> str:
        parts = []
        if self.infix:
            parts.append("wrapper components removed inside names")
        if self.strip:
            parts.append(f"stripped {self.strip!r}")
        if self.add:
            parts.append(f"added {self.add!r}")
        return ", ".join(parts) or "none"


def _candidates(keys: Iterable[str]) -> list[str]:
    """Prefixes worth trying: first components, and chains of wrapper components plus one more."""
    wrappers = {c for p in WRAPPER_PREFIXES for c in p.rstrip(".").split(".")}
    count: Counter[str] = Counter()
    for k in keys:
        parts = k.split(".")
        for d in range(1, min(len(parts), 8)):
            if parts[d - 1].isdigit():
                break
            count[".".join(parts[:d]) + "."] += 1
            if parts[d - 1] not in wrappers:
                break
    known = [p for p in count if p in WRAPPER_PREFIXES or all(c in wrappers for c in p.rstrip(".").split("."))]
    rest = [p for p, _ in count.most_common() if p not in known]
    return (known + rest)[:_MAX_CANDIDATES]


def choose_prefix(source: Iterable[str], target: Iterable[str]) -> PrefixChange:
    """The prefix change that makes the most source names equal target names.

    Ties keep the simpler change (nothing, then known wrappers, then the most common
    prefixes); a change is taken only when it matches strictly more names than no change.
    """
    src = list(source)
    tgt = set(target)
    best, best_score = PrefixChange(), len(tgt.intersection(src))
    if best_score == min(len(src), len(tgt)):
        return best
    infix_opts = [False, True] if any("." + w in k or k.startswith(w) for k in src for w in INFIX_WRAPPERS) else [False]
    strips = [""] + _candidates(src)
    adds = [""] + _candidates(tgt)
    # names a source key must have (after stripping) to match once ``a`` is added
    wanted = {a: {t[len(a):] for t in tgt if t.startswith(a)} if a else tgt for a in adds}
    for infix in infix_opts:
        base = [drop_infix_wrappers(k) for k in src] if infix else src
        for s in strips:
            stripped = {k[len(s):] if s and k.startswith(s) and len(k) > len(s) else k for k in base}
            if len(stripped) < len(src):
                continue  # stripping would merge two names: not a wrapper prefix
            for a in adds:
                change = PrefixChange(s, a, infix)
                if not change:
                    continue
                score = len(stripped & wanted[a])
                if score > best_score:
                    best, best_score = change, score
    return best
