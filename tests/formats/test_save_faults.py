"""Faults on the write paths outside the Checkpointer: tk.save (safetensors file, torch zip,
sharded folder new and in place) and `torchkeep convert`.

The call sites are discovered, not listed: a clean save runs with every os-level write,
fsync, rename/replace and mkdir (and every write/flush of files torchkeep opens) recorded
with the torchkeep/torch/zipfile line that made it. Then each site is failed in turn, at its
first and at its last call, with ENOSPC and with EIO. Invariant: an OSError (or a
TorchkeepError) naming the destination comes out, no temporary file is left, and whatever
was at the destination before is byte-for-byte unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from _reliability import record

import torchkeep as tk
import torchkeep._io.fs as fsmod
import torchkeep.formats.sharded as shardmod
import torchkeep.formats.torchzip as zipmod

OS_OPS = ("write", "writev", "pwrite", "fsync", "replace", "rename", "mkdir", "ftruncate", "link", "symlink")
FILE_OPS = ("write", "flush")
_ROOTS = tuple(os.path.dirname(m.__file__) + os.sep for m in (tk, torch)) + (os.path.dirname(os.__file__) + os.sep + "zipfile",)
ERRS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}


def _site() -> str:
    """The innermost torchkeep/torch/zipfile line on the stack (who made the call)."""
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if fn.startswith(_ROOTS) and "test_save_faults" not in fn:
            for root in _ROOTS:
                if fn.startswith(root):
                    return f"{os.path.basename(root.rstrip(os.sep))}/{fn[len(root):]}:{f.f_lineno}"
        f = f.f_back
    return "?"


class Injector:
    """Patched into os and into the modules that open files: records (op, site) of every
    call; fails the ``nth`` call of ``target`` with ``OSError(err)`` (no file name, as the
    kernel's errors from fd-based calls have none)."""

    def __init__(self, target: tuple[str, str] | None = None, nth: int = 1, err: int = errno.EIO) -> None:
        self.target, self.nth, self.err = target, nth, err
        self.calls: Counter[tuple[str, str]] = Counter()
        self.fired = False

    def hit(self, op: str) -> None:
        key = (op, _site())
        self.calls[key] += 1
        if key == self.target and self.calls[key] == self.nth:
            self.fired = True
            raise OSError(self.err, os.strerror(self.err))

    def install(self, mp: pytest.MonkeyPatch) -> None:
        for name in OS_OPS:
            real = getattr(os, name)

            def fake(*a: Any, _real: Callable = real, _op: str = f"os.{name}", **k: Any) -> Any:
                self.hit(_op)
                return _real(*a, **k)

            mp.setattr(os, name, fake)
        real_open = open

        def fake_open(file: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
            f = real_open(file, mode, *a, **k)
            return _File(f, self) if any(c in mode for c in "wa+") else f

        for mod in (fsmod, zipmod):
            mp.setattr(mod, "open", fake_open, raising=False)
        real_exchange = shardmod._exchange

        def fake_exchange(a: str, b: str) -> None:  # the folder swap that commits an in-place sharded update
            self.hit("renameat2.exchange")
            real_exchange(a, b)

        mp.setattr(shardmod, "_exchange", fake_exchange)


class _File:
    """A file whose write/flush go through the injector; everything else is the file's."""

    def __init__(self, f: Any, inj: Injector) -> None:
        self._f, self._inj = f, inj

    def write(self, b: Any) -> Any:
        self._inj.hit("file.write")
        return self._f.write(b)

    def flush(self) -> None:
        self._inj.hit("file.flush")
        self._f.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> "_File":
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _tree() -> dict[str, Any]:
    torch.manual_seed(1)
    big = {f"layer{i}.weight": torch.randn(64, 64) for i in range(3)}  # >= 16 KB each: the writev path
    small = {f"layer{i}.bias": torch.randn(8) for i in range(3)}  # the packed small-tensor path
    return big | small


def _snapshot(d: Path) -> dict[str, str]:
    out = {}
    for root, _dirs, files in os.walk(d):
        for f in files:
            p = Path(root) / f
            out[str(p.relative_to(d))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _complete(d: Path, dst: Path, before: dict[str, str]) -> str | None:
    """None if ``dst`` holds the new save complete and nothing else in ``d`` changed."""
    try:
        got = tk.load(dst)
    except tk.TorchkeepError as e:
        return f"the output does not load: {e}"
    want = _tree()
    if sorted(got) != sorted(want) or not all(torch.equal(got[k], want[k]) for k in want):
        return "the output differs from what was saved"
    rel = dst.name
    others = {k: v for k, v in _snapshot(d).items() if not (k == rel or k.startswith(rel + os.sep))}
    kept = {k: v for k, v in before.items() if not (k == rel or k.startswith(rel + os.sep))}
    if others != kept:
        return f"other files changed or were left behind: {sorted(set(others) ^ set(kept))}"
    leftovers = [k for k in _snapshot(d) if ".tmp-" in k or ".old-" in k]
    return f"temporary files left: {leftovers}" if leftovers else None


def _convert(src: Path, dst: Path) -> None:
    from torchkeep.cli import main

    rc = main(["convert", str(src), str(dst), "--force"])
    if rc != 0:
        raise _CliFailed(rc)


class _CliFailed(Exception):
    pass


# scenario -> (destination name, prepare(dir) -> None, save(dir, dst))
def _save_plain(d: Path, dst: Path) -> None:
    tk.save(_tree(), dst)


def _save_zip(d: Path, dst: Path) -> None:
    tk.save(_tree(), dst, metadata={"note": "fault test"})


def _save_sharded(d: Path, dst: Path) -> None:
    tk.save(_tree(), dst, max_shard_size="20KB")


def _save_sharded_by_renames(d: Path, dst: Path) -> None:
    """In place where folders cannot be swapped (no renameat2): the rename transaction."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(shardmod, "_can_exchange", lambda parent: False)
        _save_sharded(d, dst)


def _old_file(d: Path, dst: Path) -> None:
    tk.save({"old": torch.ones(5)}, dst)


def _old_folder(d: Path, dst: Path) -> None:
    tk.save({"old.a": torch.ones(4000), "old.b": torch.ones(4000)}, dst, max_shard_size="20KB")
    (dst / "config.json").write_text("{}")


def _convert_src(d: Path, dst: Path) -> None:
    torch.save(_tree(), d / "src.pt")


def _old_and_src(d: Path, dst: Path) -> None:
    _convert_src(d, dst)
    _old_file(d, dst)


SCENARIOS: dict[str, tuple[str, Callable[[Path, Path], None] | None, Callable[[Path, Path], None]]] = {
    "safetensors-new": ("out.safetensors", None, _save_plain),
    "safetensors-replace": ("out.safetensors", _old_file, _save_plain),
    "torch-zip-new": ("out.pt", None, _save_zip),
    "torch-zip-replace": ("out.pt", _old_file, _save_zip),
    "sharded-new": ("out", None, _save_sharded),
    "sharded-in-place": ("out", _old_folder, _save_sharded),
    "sharded-in-place-renames": ("out", _old_folder, _save_sharded_by_renames),
    "convert-new": ("out.safetensors", _convert_src, lambda d, dst: _convert(d / "src.pt", dst)),
    "convert-replace": ("out.safetensors", _old_and_src, lambda d, dst: _convert(d / "src.pt", dst)),
}


def _discover(tmp: Path, scenario: str, mp: pytest.MonkeyPatch) -> Counter[tuple[str, str]]:
    name, prepare, save = SCENARIOS[scenario]
    d = tmp / "discover"
    d.mkdir()
    if prepare:
        prepare(d, d / name)
    shardmod._can_exchange(str(d))  # probed once per filesystem and cached: not a site of every save
    inj = Injector()
    with pytest.MonkeyPatch.context() as m:
        inj.install(m)
        save(d, d / name)
    return inj.calls


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_fault_at_every_write_call_site(tmp_path: Path, scenario: str, capsys: pytest.CaptureFixture[str]) -> None:
    name, prepare, save = SCENARIOS[scenario]
    sites = _discover(tmp_path, scenario, pytest.MonkeyPatch())
    assert any(op.endswith("fsync") for op, _ in sites) and any(op.endswith(("replace", "rename", "exchange")) for op, _ in sites), sites
    failures = []
    n = 0
    for (op, where), count in sorted(sites.items()):
        for nth in sorted({1, count}):
            for ename, err in ERRS.items():
                n += 1
                d = tmp_path / f"case{n}"
                d.mkdir()
                dst = d / name
                if prepare:
                    prepare(d, dst)
                before = _snapshot(d)
                inj = Injector((op, where), nth, err)
                raised: BaseException | None = None
                with pytest.MonkeyPatch.context() as m:
                    inj.install(m)
                    try:
                        save(d, dst)
                    except (OSError, tk.TorchkeepError, _CliFailed) as e:
                        raised = e
                err_text = capsys.readouterr().err
                record("fault", f"{scenario}: {op} @ {where} #{nth} {ename}")
                case = f"{op} at {where} (call {nth} of {count}, {ename})"
                assert inj.fired, f"{case}: not reached on the second run"
                if raised is None:  # a fault torchkeep may absorb (a directory fsync, a flush of an unbuffered file)
                    problem = _complete(d, dst, before)
                    if problem:
                        failures.append(f"{case}: no error raised, and {problem}")
                    continue
                text = err_text if isinstance(raised, _CliFailed) else str(raised)
                if str(dst) not in text:
                    failures.append(f"{case}: error does not name {dst}: {text.strip()[:200]}")
                after = _snapshot(d)
                if after != before:
                    changed = sorted(set(after) ^ set(before) | {k for k in after if k in before and after[k] != before[k]})
                    failures.append(f"{case}: files changed or left behind: {changed}")
    assert not failures, f"{len(failures)} of {n} faults broke the invariant:\n" + "\n".join(failures)
