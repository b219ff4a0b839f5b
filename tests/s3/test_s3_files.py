"""tk.save / tk.load / tk.inspect / load_into against a real S3 API (moto on 127.0.0.1)."""

from __future__ import annotations

import pytest
import torch
from _helpers import assert_tree_equal

import torchkeep as tk

pytestmark = pytest.mark.s3


def test_safetensors_round_trip_on_s3(s3_bucket):
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64))
    url = f"{s3_bucket}/weights/model.safetensors"
    tk.save(model, url, metadata={"where": "s3"})
    assert_tree_equal(model.state_dict(), tk.load(url))
    info = tk.inspect(url)
    assert info.num_tensors == 4 and info.metadata["where"] == "s3"


def test_tree_round_trip_on_s3(s3_bucket):
    tree = {"epoch": 2, "opt": {"state": {0: {"m": torch.randn(5)}}}, "t": (1, 2.5)}
    url = f"{s3_bucket}/ckpt.safetensors"
    tk.save(tree, url)
    assert_tree_equal(tree, tk.load(url))


def test_missing_object_is_named(s3_bucket):
    with pytest.raises(tk.NotFoundError, match="nothing.safetensors"):
        tk.load(f"{s3_bucket}/nothing.safetensors")


def test_large_file_streams_in_parts(s3_bucket):
    import s3fs

    big = {"w": torch.randn(4, 1 << 20)}  # 16 MiB: several multipart blocks with a small block size
    url = f"{s3_bucket}/big.safetensors"
    tk.save(big, url)
    fs = s3fs.S3FileSystem()
    assert fs.size(url) > 16 << 20
    assert_tree_equal(big, tk.load(url))


def test_failed_upload_leaves_no_object(s3_bucket):
    import s3fs

    from torchkeep._io.fs import resolve
    from torchkeep.formats import safetensors

    url = f"{s3_bucket}/partial.safetensors"
    tensors = {f"t{i}": torch.randn(1 << 18) for i in range(8)}

    def boom(name, mv):  # noqa: ANN001
        if name == "t5":
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        safetensors.write(resolve(url), tensors, hook=boom)
    import gc

    gc.collect()  # a file object finalised later must not upload what it had
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    assert not fs.exists(url)
