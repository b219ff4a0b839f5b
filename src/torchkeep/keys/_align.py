"""Alignment: checkpoint names and shapes + model names and shapes -> a plan. Pure, no tensors.

Order: user rename rules, then the wrapper-prefix change that makes the most names match
(:func:`choose_prefix`), then exact matches, then leftovers by unique dot-bounded suffix with
equal shapes (detectron2's ``align_and_update_state_dicts``, but an ambiguous suffix is
reported, never taken), then ``include``/``exclude`` globs on model names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from ..errors import TorchkeepError
from ._prefixes import PrefixChange, choose_prefix
from ._rename import RenameRule, compile_rename

__all__ = ["Plan", "align", "Shape"]

Shape = tuple[int, ...]


@dataclass
class Plan:
    """What a load would do. Keys are checkpoint names (``src``) and model names (``dst``)."""

    pairs: list[tuple[str, str]] = field(default_factory=list)  # (src, dst), equal shapes
    mismatched: list[tuple[str, str, Shape, Shape]] = field(default_factory=list)  # (src, dst, src shape, dst shape)
    missing: list[str] = field(default_factory=list)  # model names nothing maps to
    unexpected: list[str] = field(default_factory=list)  # checkpoint names mapping to nothing
    ambiguous: dict[str, list[str]] = field(default_factory=dict)  # src -> candidate dst (not taken)
    renamed: dict[str, str] = field(default_factory=dict)  # src -> dst where the names differ
    by_rule: dict[str, str] = field(default_factory=dict)  # src -> dst renamed by rename= rules
    by_suffix: dict[str, str] = field(default_factory=dict)  # src -> dst matched by suffix
    skipped: list[str] = field(default_factory=list)  # model names left out by include/exclude
    prefix: PrefixChange = field(default_factory=PrefixChange)


def _as_list(patterns: str | Iterable[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _suffixes(key: str) -> list[str]:
    """Dot-bounded proper suffixes: ``a.b.c`` -> ``b.c``, ``c``."""
    return [key[i + 1:] for i, ch in enumerate(key) if ch == "."]


def align(
    source: Mapping[str, Sequence[int]],
    target: Mapping[str, Sequence[int]],
    *,
    rename: RenameRule = None,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
) -> Plan:
    """Plan loading a checkpoint with names/shapes ``source`` into a model with ``target``."""
    src_shape = {k: tuple(v) for k, v in source.items()}
    dst_shape = {k: tuple(v) for k, v in target.items()}
    plan = Plan()

    # 1. user rules, on the names as stored
    rn = compile_rename(rename)
    ruled = {s: rn(s) for s in src_shape} if rn else {s: s for s in src_shape}
    _no_collisions(ruled, "the rename rules")

    # 2. wrapper prefixes, chosen by what makes the names match
    plan.prefix = choose_prefix(ruled.values(), dst_shape)
    mapped = {s: plan.prefix.apply(r) for s, r in ruled.items()} if plan.prefix else ruled
    _no_collisions(mapped, f"the prefix change ({plan.prefix.describe()})")

    # 3. exact matches
    matched: dict[str, str] = {s: m for s, m in mapped.items() if m in dst_shape}
    left_src = [s for s in src_shape if s not in matched]
    taken = set(matched.values())
    left_dst = {t for t in dst_shape if t not in taken}

    # 4. leftovers by unique dot-bounded suffix (either direction) with equal shapes
    if left_src and left_dst:
        by_suffix: dict[str, list[str]] = {}
        for t in left_dst:
            for suf in _suffixes(t):
                by_suffix.setdefault(suf, []).append(t)
        cands: dict[str, list[str]] = {}
        for s in left_src:
            c: set[str] = set()
            for m in {mapped[s], ruled[s]}:  # with and without the prefix change
                c.update(by_suffix.get(m, ()))  # model name ends with ".<checkpoint name>"
                c.update(suf for suf in _suffixes(m) if suf in left_dst)  # or the other way round
            c = {t for t in c if dst_shape[t] == src_shape[s]}
            if c:
                cands[s] = sorted(c)
        claims: dict[str, list[str]] = {}
        for s, c in cands.items():
            for t in c:
                claims.setdefault(t, []).append(s)
        for s, c in cands.items():
            if len(c) == 1 and len(claims[c[0]]) == 1:
                matched[s] = c[0]
                plan.by_suffix[s] = c[0]
            else:
                plan.ambiguous[s] = c

    # 5. shapes, include/exclude
    inc, exc = _as_list(include), _as_list(exclude)

    def selected(t: str) -> bool:
        return (inc is None or any(fnmatchcase(t, p) for p in inc)) and not (exc and any(fnmatchcase(t, p) for p in exc))

    for s in src_shape:
        t = matched.get(s)
        if t is None:
            plan.unexpected.append(s)
            continue
        if not selected(t):
            plan.skipped.append(t)
            continue
        if s != t:
            plan.renamed[s] = t
            if rn and ruled[s] != s and s not in plan.by_suffix:
                plan.by_rule[s] = t
        if src_shape[s] == dst_shape[t]:
            plan.pairs.append((s, t))
        else:
            plan.mismatched.append((s, t, src_shape[s], dst_shape[t]))
    done = set(matched.values())
    for t in dst_shape:
        if t not in done:
            (plan.missing if selected(t) else plan.skipped).append(t)
    return plan


def _no_collisions(mapping: Mapping[str, str], what: str) -> None:
    seen: dict[str, list[str]] = {}
    for s, m in mapping.items():
        seen.setdefault(m, []).append(s)
    dups = {m: ss for m, ss in seen.items() if len(ss) > 1}
    if dups:
        listed = "; ".join(f"{', '.join(ss)} -> {m}" for m, ss in dups.items())
        raise TorchkeepError(
            f"{what} map several checkpoint keys to one name: {listed}. "
            f"Fix: make the rename rules one-to-one (or exclude the duplicates with a callable rule)."
        )
