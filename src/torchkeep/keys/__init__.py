"""Key names: find the state dict, prefix and rename rules (data), alignment, LoadReport, load_into."""

from __future__ import annotations

from ._align import Plan, align
from ._containers import CONTAINER_KEYS, EMA_KEYS, find_state_dict
from ._load_into import load_into
from ._prefixes import (
    INFIX_WRAPPERS,
    WRAPPER_PREFIXES,
    PrefixChange,
    add_prefix,
    choose_prefix,
    drop_infix_wrappers,
    strip_prefix,
    unwrap_prefixes,
)
from ._rename import compile_rename
from ._report import LoadReport, collapse

__all__ = [
    "load_into",
    "LoadReport",
    "align",
    "Plan",
    "find_state_dict",
    "CONTAINER_KEYS",
    "EMA_KEYS",
    "WRAPPER_PREFIXES",
    "INFIX_WRAPPERS",
    "PrefixChange",
    "choose_prefix",
    "strip_prefix",
    "add_prefix",
    "unwrap_prefixes",
    "drop_infix_wrappers",
    "compile_rename",
    "collapse",
]
