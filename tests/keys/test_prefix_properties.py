"""Hypothesis: prefix unwrapping is idempotent, and any wrapper stack is undone by alignment."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from torchkeep.keys import WRAPPER_PREFIXES, add_prefix, align, choose_prefix, strip_prefix, unwrap_prefixes

component = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True),
    st.integers(0, 20).map(str),
    st.sampled_from([p.rstrip(".") for p in WRAPPER_PREFIXES]),
)
key = st.lists(component, min_size=1, max_size=5).map(".".join)
keys = st.lists(key, min_size=1, max_size=30, unique=True)
wrappers = st.lists(st.sampled_from(WRAPPER_PREFIXES), max_size=3).map("".join)


@settings(max_examples=300, deadline=None)
@given(keys, wrappers)
def test_unwrap_is_idempotent(names, wrap):
    sd = {wrap + k: i for i, k in enumerate(names)}
    once = unwrap_prefixes(sd)
    assert unwrap_prefixes(once) == once
    assert list(once.values()) == list(sd.values())  # nothing dropped or reordered


@settings(max_examples=300, deadline=None)
@given(keys, wrappers)
def test_unwrap_removes_a_wrapper_stack(names, wrap):
    base = unwrap_prefixes({k: None for k in names})
    assert unwrap_prefixes(add_prefix(base, wrap)) == base


@settings(max_examples=200, deadline=None)
@given(keys, wrappers, wrappers)
def test_alignment_undoes_wrappers_either_way(names, wrap_src, wrap_dst):
    shapes = {k: (i % 3 + 1,) for i, k in enumerate(names)}
    src = {wrap_src + k: s for k, s in shapes.items()}
    dst = {wrap_dst + k: s for k, s in shapes.items()}
    plan = align(src, dst)
    assert not plan.missing and not plan.unexpected and not plan.mismatched
    assert sorted(plan.pairs) == sorted((wrap_src + k, wrap_dst + k) for k in names)


@given(keys, st.sampled_from(WRAPPER_PREFIXES))
def test_strip_then_add_round_trips(names, p):
    sd = {k: 1 for k in names}
    assert strip_prefix(add_prefix(sd, p), p) == sd
    assert not choose_prefix(list(sd), list(sd))  # identical names: no change
