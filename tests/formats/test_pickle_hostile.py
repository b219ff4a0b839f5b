"""Hostile and damaged pickles: the payload never runs; a TorchkeepError names the global.

Every payload, if it ran, would create a marker file; each test asserts it does not exist.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from fuzz._guards import Auditor

import torchkeep as tk

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

class _Auditor(Auditor):
    """The fuzzers' auditor (no process, no exec/compile, no import outside torchkeep inside
    ``with``), counting each hostile read for RELIABILITY.md."""

    def __enter__(self) -> "_Auditor":
        import os

        from _reliability import record

        record("hostile", f"pickle corpus: {os.environ.get('PYTEST_CURRENT_TEST', '?').split('::')[-1].split('[')[0].split(' ')[0]}")
        super().__enter__()
        return self


_AUDITOR: list[_Auditor] = []


@pytest.fixture
def auditor() -> _Auditor:
    if not _AUDITOR:
        _AUDITOR.append(_Auditor())
    return _AUDITOR[0]


class _Reduce:
    """Pickles as ``fn(*args)``: the classic pickle code-execution payload."""

    def __init__(self, fn, *args) -> None:  # noqa: ANN001
        self.fn, self.args = fn, args

    def __reduce__(self):  # noqa: ANN204
        return (self.fn, self.args)


def _payloads(marker: Path) -> dict[str, tuple[object, str]]:
    m = str(marker)
    return {
        "os.system": (_Reduce(os.system, f"touch {m}"), "system"),
        "eval": (_Reduce(builtins.eval, f"open({m!r}, 'w')"), "eval"),
        "exec": (_Reduce(builtins.exec, f"open({m!r}, 'w')"), "exec"),
        "subprocess.Popen": (_Reduce(subprocess.Popen, ["touch", m]), "Popen"),
        "__import__": (_Reduce(builtins.__import__, "os"), "__import__"),
        "getattr": (_Reduce(getattr, _Reduce(builtins.__import__, "os"), "system"), "getattr"),
        "open": (_Reduce(builtins.open, m, "w"), "open"),
        "torch.load": (_Reduce(torch.load, io.BytesIO(b"")), "load"),
    }


def _write(tmp: Path, obj: object, kind: str) -> Path:
    p = tmp / f"hostile-{kind}.bin"
    if kind == "zip":
        torch.save({"w": torch.ones(2), "x": obj}, p)
    elif kind == "legacy":
        torch.save({"w": torch.ones(2), "x": obj}, p, _use_new_zipfile_serialization=False)
    else:
        p.write_bytes(pickle.dumps({"w": 1, "x": obj}, protocol=4 if kind == "pickle4" else 2))
    return p


@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle2", "pickle4"])
@pytest.mark.parametrize("payload", ["os.system", "eval", "exec", "subprocess.Popen", "__import__", "getattr", "open", "torch.load"])
def test_hostile_payload_is_refused_and_never_runs(tmp_path, payload, kind, auditor):
    marker = tmp_path / "pwned"
    obj, name = _payloads(marker)[payload]
    p = _write(tmp_path, obj, kind)
    for fn in (tk.load, tk.inspect):
        with auditor, pytest.raises(tk.UnsafePickleError) as ei:
            fn(p)
        msg = str(ei.value)
        assert name in msg and str(p) in msg and "unsafe_pickle=True" in msg and "Nothing from the file was run" in msg
    assert not marker.exists()


def test_hostile_global_inside_a_whole_model_and_a_getattr_chain(tmp_path, auditor):
    marker = tmp_path / "pwned"
    m = torch.nn.Linear(2, 2)
    m.evil = _Reduce(os.system, f"touch {marker}")
    torch.save(m, tmp_path / "m.pt")
    with auditor, pytest.raises(tk.UnsafePickleError, match="system"):
        tk.load(tmp_path / "m.pt")
    # getattr(__import__('os'), 'system')('touch marker'), hand-written protocol 2
    chain = (
        b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__import__\nX\x02\x00\x00\x00os\x85RX\x06\x00\x00\x00system\x86R"
        + b"X" + struct.pack("<I", len(f"touch {marker}")) + f"touch {marker}".encode() + b"\x85R."
    )
    (tmp_path / "chain.pkl").write_bytes(chain)
    with auditor, pytest.raises(tk.UnsafePickleError, match="getattr"):
        tk.load(tmp_path / "chain.pkl")
    assert not marker.exists()


@pytest.mark.parametrize(
    "src",
    [
        b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.",  # GLOBAL
        b"\x80\x04\x8c\x05posix\x8c\x06system\x93X\x04\x00\x00\x00true\x85R.",  # STACK_GLOBAL
        b"(S'true'\nios\nsystem\n.",  # INST, protocol 0
        b"\x80\x02(cos\nsystem\nX\x04\x00\x00\x00trueo.",  # OBJ
        b"\x80\x04\x8c\x0bcollections\x8c\tos.system\x93.",  # dotted name reaching os
        b"\x80\x04\x8c\x05torch\x8c\x0fserialization.x\x93.",
        b"\x80\x02cfunctools\npartial\n.",
        b"\x80\x02coperator\nattrgetter\n.",
        b"\x80\x02ctorch.jit\nload\n.",
        b"\x80\x02ctorch._C\n_jit_pass\n.",
        b"\x80\x02cnumpy\nload\n.",
        b"\x80\x02cruntpy\nrun_path\n".replace(b"runtpy", b"runpy") + b".",
        b"\x80\x02cimportlib\nimport_module\n.",
        b"\x80\x02cpickle\nloads\n.",
        b"\x80\x02c__builtin__\neval\n.",  # py2 spelling
    ],
)
def test_hostile_opcode_forms(tmp_path, src, auditor):
    from torchkeep._io.fs import resolve
    from torchkeep.formats import legacy

    p = tmp_path / "h.pkl"
    p.write_bytes(src)
    with auditor, pytest.raises(tk.UnsafePickleError), resolve(p).open_source() as s:
        legacy.read_pickle(s)  # (protocol 0 has no PROTO header for format detection)
    if src.startswith(b"\x80"):
        with auditor, pytest.raises(tk.UnsafePickleError):
            tk.load(p)


def test_unknown_classes_become_placeholders_not_imports(tmp_path, auditor):
    # a class in a module that does not exist, and one that exists but must not be imported
    src = (
        b"\x80\x02}(X\x01\x00\x00\x00ac__nonexistent_pkg__.mod\nThing\n)\x81}X\x01\x00\x00\x00kK\x01sb"
        b"X\x01\x00\x00\x00bcxml.dom.minidom\nparseString\nX\x04\x00\x00\x00<a/>\x85Ru."
    )
    (tmp_path / "u.pkl").write_bytes(src)
    with auditor:
        got = tk.load(tmp_path / "u.pkl")
    assert got["a"].class_path == "__nonexistent_pkg__.mod.Thing" and got["a"].state == {"k": 1}
    assert got["b"].class_path == "xml.dom.minidom.parseString" and got["b"].args == ("<a/>",)
    import sys

    assert "__nonexistent_pkg__" not in sys.modules


# ----------------------------------------------------------------------- bad arguments
def _zip_with_pickle(tmp: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None) -> Path:
    p = tmp / "forged.pt"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        for k, v in (storages or {}).items():
            z.writestr(f"archive/data/{k}", v)
    return p


def _rebuild(args: bytes, fn: bytes = b"_rebuild_tensor_v2") -> bytes:
    return b"\x80\x02ctorch._utils\n" + fn + b"\n(" + args + b"tR."


STORAGE = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu%stQ"


@pytest.mark.parametrize(
    "args, err",
    [
        (b"K\x01K\x02", tk.FormatError),  # wrong number of arguments
        (STORAGE % b"K\x04" + b"K\x00(K\x04t(K\x01t\x89}", None),  # well-formed
        (STORAGE % b"K\x04" + b"K\x00(K\x02K\x02t(K\x02K\x01t\x89}", None),  # well-formed 2x2
        (STORAGE % b"K\x04" + b"X\x01\x00\x00\x00x(K\x04t(K\x01t\x89}", tk.FormatError),  # offset is a str
        (STORAGE % b"K\x04" + b"K\x00(J\xff\xff\xff\xfft(K\x01t\x89}", tk.FormatError),  # negative size
        (STORAGE % b"K\x04" + b"K\x00(K\x02t(K\x01K\x01t\x89}", tk.FormatError),  # size/stride lengths differ
        (STORAGE % b"K\x04" + b"K\x00(K\x05t(K\x01t\x89}", tk.CorruptCheckpointError),  # view past its storage
        (STORAGE % b"K\x04" + b"K\x00(K\x04t(K\x01t\x89K\x07", tk.FormatError),  # hooks is an int
        (STORAGE % b"\x8a\x06\x00\x00\x00\x00\x00\x01" + b"K\x00(K\x04t(K\x01t\x89}", tk.CorruptCheckpointError),  # 2**40 elements
        (b"X\x03\x00\x00\x00abcK\x00(K\x04t(K\x01t\x89}", tk.FormatError),  # not a storage
        (b"(X\x07\x00\x00\x00storagecbuiltins\nlist\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00(K\x04t(K\x01t\x89}", tk.FormatError),
    ],
)
def test_rebuild_tensor_with_bad_arguments(tmp_path, args, err, auditor):
    p = _zip_with_pickle(tmp_path, _rebuild(args), {"0": b"\0" * 16})
    with auditor:
        if err is None:
            out = tk.load(p)
            assert isinstance(out, torch.Tensor) and out.numel() == 4 and not out.any()
            return
        with pytest.raises(err) as ei:
            tk.load(p)
    assert str(p) in str(ei.value)


def test_forged_memo_index_allocates_nothing(tmp_path):
    p = tmp_path / "m.pkl"
    p.write_bytes(b"\x80\x02]r\xff\xff\xff\xffj\xff\xff\xff\xff\x86.")
    assert tk.load(p) == ([], [])


def test_storage_claiming_more_than_the_file_has(tmp_path):
    # legacy: the 8-byte element count of a storage is absurd -> refused before allocation
    p = tmp_path / "l.pt"
    torch.save({"w": torch.ones(4)}, p, _use_new_zipfile_serialization=False)
    data = bytearray(p.read_bytes())
    idx = len(data) - 16 - 8
    assert struct.unpack("<q", data[idx : idx + 8])[0] == 4
    data[idx : idx + 8] = struct.pack("<q", 1 << 50)
    p.write_bytes(bytes(data))
    with pytest.raises(tk.CorruptCheckpointError, match="claims"):
        tk.load(p)
    # zip: the record is shorter than the persistent id says
    z = _zip_with_pickle(tmp_path, _rebuild(STORAGE % b"K\x40" + b"K\x00(K\x04t(K\x01t\x89}"), {"0": b"\0" * 16})
    with pytest.raises(tk.CorruptCheckpointError, match="claims 256 bytes"):
        tk.load(z)


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x02}q\x00(X\x01\x00\x00\x00a",  # truncated
        b"\x80\x02B\xff\xff\xff\x7f",  # bytes length past the end
        b"\x80\x02h\x05.",  # memo key never defined
        b"\x80\x02\x82\x01.",  # EXT1
        b"\x80\x02(((((((((((((((((((((((.",  # marks without a value
        b"\x80\x02)" + b"\x85" * 100000 + b"q\x010}h\x01K\x01s.",  # 100000-deep tuple as a dict key
        b"\x80\x02" + b"]" * 20000 + b"a" * 19999 + b".",  # 20000-deep list
        b"\x80\x02K\x01K\x02R.",  # REDUCE on an int
        b"\x80\x02K\x01}b.",  # BUILD on an int
        b"\x80\x02}K\x01a.",  # APPEND to a dict
        b"\x80\x06.",  # unknown protocol
        b"\x80\x02\xff.",  # unknown opcode
    ],
)
def test_damaged_pickles_raise_torchkeep_errors(tmp_path, data, auditor):
    p = tmp_path / "d.pkl"
    p.write_bytes(data)
    with auditor:
        for fn in (tk.load, tk.inspect):
            with pytest.raises(tk.TorchkeepError) as ei:
                fn(p)
            assert str(p) in str(ei.value)


def test_damaged_zip_archives(tmp_path):
    good = tmp_path / "g.pt"
    torch.save({"w": torch.arange(1000.0)}, good)
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "no-data": _zip_bytes({"archive/data.pkl": _rebuild(STORAGE % b"K\x04" + b"K\x00(K\x04t(K\x01t\x89}")}),
    }
    # a record whose size in the central directory runs past the file
    cd = data.rfind(b"PK\x01\x02")
    bad = bytearray(data)
    bad[cd + 20 : cd + 28] = struct.pack("<II", 1 << 31, 1 << 31)
    cases["absurd-size"] = bytes(bad)
    for name, blob in cases.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(blob)
        for fn in (tk.load, tk.inspect):
            with pytest.raises(tk.TorchkeepError) as ei:
                fn(p)
            assert str(p) in str(ei.value), name


def _zip_bytes(records: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for k, v in records.items():
            z.writestr(k, v)
    return buf.getvalue()


def test_unsafe_pickle_is_the_explicit_opt_in(tmp_path):
    marker = tmp_path / "ran"
    p = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2), "x": _Reduce(builtins.open, str(marker), "w")}, p)
    with pytest.raises(tk.UnsafePickleError):
        tk.load(p)
    assert not marker.exists()
    got = tk.load(p, unsafe_pickle=True)  # the user trusts it: torch.load runs the payload
    assert marker.exists() and torch.equal(got["w"], torch.ones(2))
    got["x"].close()
