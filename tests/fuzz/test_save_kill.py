"""SIGKILL during tk.save (safetensors file, torch zip, a sharded folder updated in place), at random moments: the destination
is always the old complete file or the new complete file, never partial; what a kill leaves
behind is a recognisable temporary file (``.NAME.tmp-XXXXXXXX``) that readers never pick up
and the next save does not trip over. 4 trials per format here, 25 under --fuzz-long."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _reliability import record

import torchkeep as tk

CHILD = Path(__file__).with_name("_save_child.py")
BIG = 1 << 21  # 8 MB of float32: a save takes long enough for kills to land inside it


def _trials(config: pytest.Config) -> int:
    return 25 if config.getoption("--fuzz-long") else 4


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_sigkill_during_save_leaves_old_or_new(tmp_path: Path, suffix: str, request: pytest.FixtureRequest) -> None:
    from fuzz._save_child import tree

    rng = random.Random(7 if suffix == ".pt" else 11)
    dst = tmp_path / f"out{suffix}"
    want = [tree(0, BIG), tree(1, BIG)]
    tmp_re = re.compile(rf"^\.{re.escape(dst.name)}\.tmp-[0-9a-f]{{8}}$")
    mid_write = 0
    for i in range(_trials(request.config)):
        p = subprocess.Popen([sys.executable, str(CHILD), str(dst), str(BIG)], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.5))
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(60)
        record("kill", f"tk.save {suffix}")
        names = sorted(os.listdir(tmp_path))
        strays = [n for n in names if n != dst.name]
        assert all(tmp_re.match(n) for n in strays), f"trial {i}: unexpected files {strays}"
        mid_write += bool(strays)
        if not dst.exists():
            continue  # killed before the first save finished: nothing, not something partial
        got = tk.load(dst)
        assert any(sorted(got) == sorted(w) and all(torch.equal(got[k], w[k]) for k in w) for w in want), f"trial {i}: partial or mixed file"
        assert tk.inspect(tmp_path / dst.name).tensors  # the reader is not confused by the strays
    tk.save(want[0], dst)  # the next save works with the strays present
    assert torch.equal(tk.load(dst)["w"], want[0]["w"])
    record("kill", f"tk.save {suffix} (kills that left a temporary file)", mid_write)


@pytest.mark.slow
def test_sigkill_during_in_place_sharded_update(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A Hugging Face folder with other files (config.json) updated in place by repeated
    saves: after a kill it is the old complete checkpoint or the new one, config kept."""
    from fuzz._save_child import tree

    from torchkeep._io.fs import Location
    from torchkeep.formats import sharded

    if not sharded._can_exchange(str(tmp_path)):
        pytest.skip("this filesystem cannot swap folders (renameat2 RENAME_EXCHANGE)")
    rng = random.Random(13)
    dst = tmp_path / "model"
    want = [tree(0, BIG), tree(1, BIG)]
    tk.save(want[1], dst, max_shard_size="3MB")
    (dst / "config.json").write_text('{"hidden": 8}')
    (dst / "tokenizer").mkdir()
    (dst / "tokenizer" / "vocab.txt").write_text("a b c")
    tmp_re = re.compile(rf"^\.{re.escape(dst.name)}\.tmp-[0-9a-f]{{8}}$")
    mid_write = 0
    for i in range(_trials(request.config)):
        p = subprocess.Popen([sys.executable, str(CHILD), str(dst), str(BIG), "3MB"], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.6))
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(60)
        record("kill", "tk.save sharded folder, in place")
        strays = [n for n in sorted(os.listdir(tmp_path)) if n != dst.name]
        assert all(tmp_re.match(n) for n in strays), f"trial {i}: unexpected files {strays}"
        mid_write += bool(strays)
        got = tk.load(dst)
        assert any(sorted(got) == sorted(w) and all(torch.equal(got[k], w[k]) for k in w) for w in want), f"trial {i}: partial or mixed checkpoint"
        assert (dst / "config.json").read_text() == '{"hidden": 8}' and (dst / "tokenizer" / "vocab.txt").read_text() == "a b c"
        named = set(sharded.read_index(Location(str(dst / sharded.INDEX_NAME)))[0].values())
        assert sorted(n for n in os.listdir(dst) if n.endswith(".safetensors")) == sorted(named), f"trial {i}: stale or missing shards"
    tk.save(want[0], dst, max_shard_size="3MB")  # the next save works with the strays present
    assert torch.equal(tk.load(dst)["w"], want[0]["w"])
    record("kill", "tk.save sharded folder, in place (kills that left a temporary file)", mid_write)
