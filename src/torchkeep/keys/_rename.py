"""User rename rules, in three forms, compiled to one function ``old name -> new name``.

- a prefix mapping ``{"backbone.": "encoder."}``: a key starting with ``backbone.`` (also
  behind wrapper prefixes such as ``module.``) gets ``encoder.`` instead; the longest
  matching prefix wins;
- a list of ``(regex, replacement)`` pairs applied in order with ``re.sub``;
- a callable ``name -> name``.

Rules see the checkpoint's names as stored (what ``tk.inspect`` shows).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Union

from ..errors import TorchkeepError
from ._prefixes import WRAPPER_PREFIXES

__all__ = ["RenameRule", "compile_rename"]

RenameRule = Union[Mapping[str, str], Sequence[tuple[str, str]], Callable[[str], str], None]


def _prefix_map(rules: Mapping[str, str]) -> Callable[[str], str]:
    ordered = sorted(rules.items(), key=lambda kv: -len(kv[0]))

    def rename(key: str) -> str:
        head, rest = "", key
        while True:
            for old, new in ordered:
                if rest.startswith(old):
                    return head + new + rest[len(old):]
            w = next((w for w in WRAPPER_PREFIXES if rest.startswith(w)), None)
            if w is None:
                return key
            head, rest = head + w, rest[len(w):]

    return rename


def _regex_list(rules: Sequence[tuple[str, str]]) -> Callable[[str], str]:
    compiled = []
    bad = []
    for i, rule in enumerate(rules):
        try:
            pattern, repl = rule
            compiled.append((re.compile(pattern), repl))
        except (TypeError, ValueError, re.error) as e:
            bad.append(f"rule {i} {rule!r}: {e}")
    if bad:
        raise TorchkeepError(
            "rename: invalid (regex, replacement) rules: " + "; ".join(bad)
            + ". Fix: pass a list of (pattern, replacement) string pairs."
        )

    def rename(key: str) -> str:
        for rx, repl in compiled:
            key = rx.sub(repl, key)
        return key

    return rename


def compile_rename(rule: RenameRule) -> Callable[[str], str] | None:
    """One function for any accepted form of ``rename=``; ``None`` when there are no rules."""
    if rule is None:
        return None
    if isinstance(rule, Mapping):
        bad = [k for k, v in rule.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TorchkeepError(f"rename: prefix mappings must map str -> str; bad entries: {bad!r}.")
        return _prefix_map(rule) if rule else None
    if callable(rule):
        fn = rule

        def checked(key: str) -> str:
            out = fn(key)
            if not isinstance(out, str):
                raise TorchkeepError(f"rename: the callable returned {out!r} for {key!r}; it must return a str.")
            return out

        return checked
    if isinstance(rule, (list, tuple)):
        return _regex_list(rule) if rule else None
    raise TorchkeepError(
        f"rename: expected a prefix mapping, a list of (regex, replacement) pairs or a callable, "
        f"not {type(rule).__name__}."
    )
