"""Mutation strategies: raw bytes (size fields, headers, truncation) and structured JSON
(valid documents with hostile values: huge/negative numbers, wrong types, deep nesting)."""

from __future__ import annotations

import copy
import json
import struct
from typing import Any

import hypothesis.strategies as hs

# values that break assumptions: sizes past the file, negatives, overflow, wrong types, depth
HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 7, 2**31 - 1, 2**32, 2**62, 2**63, 2**64 + 1, -(2**63), 10**30,
    1.5, 1e308, -1e308, float("nan"), "", "x", "F32", "I64", "../x", "/etc/passwd", "$t", "$tu", "$dk",
    "os.system", "torch.nn.Linear", "builtins.eval", [], {}, [0], [0, 2**40], [2**40, 2**41], [-1, 4],
    [1, 2, 3], {"$t": "missing"}, {"$tu": [1]}, {"$dk": [[1]]}, {"$dtype": "nope"}, {"$dev": "cuda:99"},
]


def _hostile(draw) -> Any:  # noqa: ANN001
    return copy.deepcopy(draw(hs.sampled_from(HOSTILE_VALUES)))  # never share a mutable value between examples


def _deep(n: int) -> Any:
    x: Any = 0
    for _ in range(n):
        x = [x]
    return x


@hs.composite
def byte_mutations(draw, data: bytes) -> bytes:  # noqa: ANN001
    buf = bytearray(data)
    for _ in range(draw(hs.integers(1, 6))):
        kind = draw(hs.sampled_from(["flip", "byte", "truncate", "insert", "delete", "int64", "int32", "header", "copy"]))
        if not buf:
            break
        pos = draw(hs.integers(0, len(buf) - 1))
        if kind == "flip":
            buf[pos] ^= 1 << draw(hs.integers(0, 7))
        elif kind == "byte":
            buf[pos] = draw(hs.integers(0, 255))
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = draw(hs.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del buf[pos : pos + draw(hs.integers(1, 16))]
        elif kind in ("int64", "int32"):  # size fields are where allocations come from
            width = 8 if kind == "int64" else 4
            v = draw(hs.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, 2**62, 2**64 - 1, len(buf) * 2, len(buf) - pos]))
            buf[pos : pos + width] = (v % (1 << (8 * width))).to_bytes(width, "little")
        elif kind == "copy":  # overlapping records / offsets: duplicate a stretch elsewhere
            n = draw(hs.integers(1, 64))
            src = draw(hs.integers(0, len(buf) - 1))
            buf[pos : pos + n] = buf[src : src + n]
        else:  # mutate inside the first 1 KiB (headers, pickle opcodes, zip directory)
            p = draw(hs.integers(0, min(len(buf), 1024) - 1))
            buf[p] = draw(hs.integers(0, 255))
    return bytes(buf)


def _nodes(doc: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _nodes(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _nodes(v, path + (i,))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


@hs.composite
def json_mutations(draw, doc: Any) -> Any:  # noqa: ANN001
    """A copy of ``doc`` with 1-4 nodes replaced, deleted, duplicated or deepened."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(hs.integers(1, 4))):
        paths = _nodes(doc)
        path = draw(hs.sampled_from(paths))
        kind = draw(hs.sampled_from(["replace", "replace", "delete", "add", "deep", "other", "number"]))
        if not path:
            if kind in ("replace", "deep"):
                doc = _hostile(draw) if kind == "replace" else _deep(draw(hs.integers(50, 400)))
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        if kind == "replace":
            parent[key] = _hostile(draw)
        elif kind == "delete":
            del parent[key]
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(hs.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "w", "$t", "x" * 3]))] = _hostile(draw)
        elif kind == "add":
            parent.insert(key, _hostile(draw))
        elif kind == "deep":
            parent[key] = _deep(draw(hs.integers(50, 400)))
        elif kind == "other":  # a node of the document somewhere it does not belong
            parent[key] = json.loads(json.dumps(_get(doc, draw(hs.sampled_from(paths)))))
        else:
            v = parent[key]
            if type(v) is int:
                parent[key] = v + draw(hs.sampled_from([-1, 1, 2**33, -(2**33), 8]))
            else:
                parent[key] = draw(hs.integers(-(2**65), 2**65))
    return doc


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_safetensors(header: Any, body: bytes) -> bytes:
    raw = json.dumps(header, allow_nan=True).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@hs.composite
def safetensors_json_mutations(draw, data: bytes) -> bytes:  # noqa: ANN001
    """Mutate the header JSON, or a JSON document stored in one of its metadata strings
    (tree structure, model spec, user metadata, aliases), and re-frame the file."""
    header, body = split_safetensors(data)
    meta = header.get("__metadata__") or {}
    embedded = []
    for k, v in meta.items():
        try:
            if isinstance(json.loads(v), (dict, list)):
                embedded.append(k)
        except ValueError:
            pass
    target = draw(hs.sampled_from(["header", *embedded]))
    if target == "header":
        header = draw(json_mutations(header))
    else:
        meta[target] = json.dumps(draw(json_mutations(json.loads(meta[target]))), allow_nan=True)
    if draw(hs.booleans()) and body:  # sometimes also cut the data
        body = body[: draw(hs.integers(0, len(body)))]
    return join_safetensors(header, body)
