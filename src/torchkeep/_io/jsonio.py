"""JSON read from files, in one place: whatever the bytes are, the result is the expected
top-level type or a :class:`CorruptCheckpointError` naming the file.

``json.loads`` alone lets ``RecursionError`` out of deeply nested input (``b"[" * 100000``),
and a document nested just below the interpreter's limit parses but then breaks the first
recursive walk over it (``repr``, tree decoding). :func:`loads` refuses both: parse errors,
undecodable bytes, recursion, nesting deeper than ``max_depth`` and the wrong top-level type.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import CorruptCheckpointError

__all__ = ["loads", "MAX_DEPTH"]

MAX_DEPTH = 256  # far deeper than any manifest, index or model spec; trees pass their own bound

_NAMES = {dict: "a JSON object", list: "a JSON array", str: "a JSON string"}


def loads(
    raw: bytes | str,
    *,
    what: str,
    path: object,
    expect: type | tuple[type, ...] | None = dict,
    max_depth: int | None = MAX_DEPTH,
    fix: str = "the file is damaged; restore it from a good copy or save it again",
) -> Any:
    """Parse ``raw`` (the ``what`` of the file at ``path``).

    ``expect`` is the required top-level type (``None``: any). ``max_depth=None`` skips the
    nesting check for callers that validate the structure without recursion (the
    safetensors header: fast for headers of many thousand tensors).
    """
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise CorruptCheckpointError(f"{path}: {what} is nested too deeply to be valid; {fix}.") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        msg = str(e)
        if len(msg) > 200:
            msg = msg[:200] + "..."
        raise CorruptCheckpointError(f"{path}: {what} is not valid JSON ({msg}); {fix}.") from None
    if expect is not None and not isinstance(doc, expect):
        kinds = expect if isinstance(expect, tuple) else (expect,)
        want = " or ".join(_NAMES.get(k, k.__name__) for k in kinds)
        raise CorruptCheckpointError(f"{path}: {what} is not {want} (found {type(doc).__name__}); {fix}.")
    if max_depth is not None and not _within_depth(doc, max_depth):
        raise CorruptCheckpointError(f"{path}: {what} is nested more than {max_depth} levels deep; {fix}.")
    return doc


def _within_depth(doc: Any, limit: int) -> bool:
    """Iteratively (no recursion of its own): is no container deeper than ``limit``?"""
    if type(doc) is not dict and type(doc) is not list:
        return True
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        for v in node.values() if type(node) is dict else node:
            if type(v) is dict or type(v) is list:
                stack.append((v, depth + 1))
    return True
