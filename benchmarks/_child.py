"""One measurement in a fresh process: ``python -m benchmarks._child '<json case>'``.

Setup (building the state or the model, warming or dropping the page cache) is untimed.
Then the peak-RSS mark is reset (``/proc/self/clear_refs``), the operation is timed, and the
peak RSS above the starting RSS (and above the loaded model, for loads into fresh memory)
is reported. The result is checked after timing. The last stdout line is the JSON result.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

import torch

from . import _workloads as W

_BUF = 16 << 20


# ------------------------------------------------------------------------ process state
def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _io_counter(field: str) -> int:
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def drop_cache(path: str) -> str:
    """Evict ``path`` (a file or a folder's files) from the page cache; returns the method used."""
    files = [path] if os.path.isfile(path) else [os.path.join(r, n) for r, _, ns in os.walk(path) for n in ns]
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return "drop_caches"
    except OSError:
        return "fadvise"


def warm_cache(path: str) -> str:
    files = [path] if os.path.isfile(path) else [os.path.join(r, n) for r, _, ns in os.walk(path) for n in ns]
    buf = bytearray(_BUF)
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return "warm"


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mv(t: torch.Tensor) -> memoryview:
    return memoryview(t.detach().reshape(-1).view(torch.uint8).numpy()).cast("B")


# ------------------------------------------------------------------------------- raw
def raw_write(path: str, tensors: list[torch.Tensor], fsync: bool) -> None:
    """The write limit: each tensor's memory handed to os.write, then fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for t in tensors:
            mv = _mv(t)
            while len(mv):
                mv = mv[os.write(fd, mv):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if fsync:
        fsync_path(path)


def raw_read_into(path: str, dests: list[torch.Tensor]) -> None:
    """The read limit: readinto straight into tensors, in file order."""
    with open(path, "rb", buffering=0) as f:
        for t in dests:
            mv = _mv(t)
            while len(mv):
                n = f.readinto(mv)
                if not n:
                    raise EOFError(path)
                mv = mv[n:]


# --------------------------------------------------------------------------- the cases
def _model_bytes(spec: W.Spec, kind: str) -> int:
    return W.nbytes(spec) * (3 if kind == "train" else 1) + (len(spec) * 4 if kind == "train" else 0)


def _tk_write(path: str, obj: Any, fsync: bool) -> None:
    import torchkeep as tk

    if fsync:
        tk.save(obj, path)
    else:  # tk.save always fsyncs; the format writer underneath has the switch
        from torchkeep._io.fs import resolve
        from torchkeep.formats import safetensors as st

        st.write_tree(resolve(path), obj, fsync=False)


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    wl = W.Workload(**case["workload"])
    spec = wl.spec()
    op, who, path = case["op"], case["contender"], case["path"]
    fsync = bool(case.get("fsync"))
    out: dict[str, Any] = {"bytes": _model_bytes(spec, wl.kind)}
    fn: Callable[[], Any]
    own = 0  # bytes the result itself legitimately holds (fresh loads)
    check: Callable[[Any], None] = lambda _r: None  # noqa: E731

    if op == "prep":  # the files the load cases read, one per contender
        obj = W.make_train_tree(spec) if wl.kind == "train" else W.make_state_dict(spec)
        files = case["files"]
        torch.save(obj, files["torch"])
        from safetensors.torch import save_file

        flat, meta = W.flatten_train_tree(obj) if wl.kind == "train" else (obj, None)
        save_file(flat, files["safetensors"], metadata=meta)
        _tk_write(files["torchkeep"], obj, True)
        raw_write(files["raw"], W.train_tensors(obj) if wl.kind == "train" else list(obj.values()), True)
        return out
    if op == "save":
        if wl.kind == "train":
            obj: Any = W.make_train_tree(spec)
        else:
            obj = W.make_state_dict(spec)
        if os.path.exists(path):
            os.unlink(path)
        if who == "torch":
            def fn() -> None:
                torch.save(obj, path)
                if fsync:
                    fsync_path(path)
        elif who == "safetensors":
            from safetensors.torch import save_file

            flat, meta = W.flatten_train_tree(obj) if wl.kind == "train" else (obj, None)

            def fn() -> None:
                save_file(flat, path, metadata=meta)
                if fsync:
                    fsync_path(path)
        elif who == "torchkeep":
            import torchkeep  # noqa: F401

            fn = lambda: _tk_write(path, obj, fsync)  # noqa: E731
        elif who == "raw":
            ts = W.train_tensors(obj) if wl.kind == "train" else list(obj.values())
            fn = lambda: raw_write(path, ts, fsync)  # noqa: E731
        else:
            raise ValueError(who)
    elif op in ("load", "load_into"):
        cache = case["cache"]
        if op == "load_into":
            model = W.build_model(spec)
            targets = model.state_dict()
            dests = [targets[n] for n, _, _ in spec]
            check = lambda _r: W.verify(spec, model.state_dict())  # noqa: E731
            if who == "torch":
                fn = lambda: model.load_state_dict(torch.load(path, weights_only=True))  # noqa: E731
            elif who == "torch_mmap":
                fn = lambda: model.load_state_dict(torch.load(path, weights_only=True, mmap=True))  # noqa: E731
            elif who == "safetensors":
                from safetensors.torch import load_file

                fn = lambda: model.load_state_dict(load_file(path))  # noqa: E731
            elif who == "torchkeep":
                import torchkeep as tk

                if hasattr(tk, "load_into"):
                    fn = lambda: tk.load_into(model, path)  # noqa: E731
                    out["api"] = "tk.load_into"
                else:
                    from torchkeep._io.fs import resolve
                    from torchkeep.formats import open_lazy, read_many_into

                    def fn() -> None:
                        with open_lazy(resolve(path)) as tree:
                            read_many_into([(tree[k], targets[k]) for k in targets])
                    out["api"] = "open_lazy+read_many_into"
            elif who == "raw":
                fn = lambda: raw_read_into(path, dests)  # noqa: E731
            else:
                raise ValueError(who)
        else:  # fresh load of the whole tree
            own = out["bytes"]
            if who == "torch":
                fn = lambda: torch.load(path, weights_only=True)  # noqa: E731
            elif who == "safetensors":
                from safetensors.torch import load_file

                fn = lambda: load_file(path)  # noqa: E731
            elif who == "torchkeep":
                import torchkeep as tk

                fn = lambda: tk.load(path)  # noqa: E731
            elif who == "raw":
                def fn() -> list[torch.Tensor]:
                    if wl.kind == "train":  # the raw writer's order: model, then per param step/m/v
                        ts = [torch.empty(s, dtype=d) for _, s, d in spec]
                        for _, s, d in spec:
                            ts += [torch.empty(()), torch.empty(s, dtype=d), torch.empty(s, dtype=d)]
                    else:
                        ts = [torch.empty(s, dtype=d) for _, s, d in spec]
                    raw_read_into(path, ts)
                    return ts
            else:
                raise ValueError(who)
            check = _fresh_check(wl, spec, who)
        out["cache_method"] = drop_cache(path) if cache == "cold" else warm_cache(path)
    elif op == "inspect":
        import torchkeep as tk

        out["cache_method"] = drop_cache(path) if case["cache"] == "cold" else warm_cache(path)
        out["file_size"] = os.path.getsize(path)
        fn = lambda: tk.inspect(path)  # noqa: E731
    elif op == "checkpoint":
        import torchkeep as tk

        tree = W.make_train_tree(spec)
        ck = tk.Checkpointer(path, async_save=(who == "async"))
        rss0 = _status("VmRSS")  # before the first save: async keeps its host copy resident after it
        ck.save(tree, step=0)  # first save outside timing: directory set-up, threads started, buffers made
        ck.wait()
        reset_peak()
        t0 = time.perf_counter()
        ck.save(tree, step=1)
        blocked = time.perf_counter() - t0
        ck.wait()
        out["total_s"] = time.perf_counter() - t0
        out["extra_rss"] = max(0, _status("VmHWM") - rss0)  # async: the resident host copy of the state
        out["seconds"] = blocked
        ck.close() if hasattr(ck, "close") else None
        return out
    else:
        raise ValueError(op)

    rchar0 = _io_counter("rchar")
    out["peak_reset"] = reset_peak()
    rss0 = _status("VmRSS")
    t0 = time.perf_counter()
    result = fn()
    if op == "load":
        _touch(result)  # lazily mapped results (safetensors load_file) pay their reads here
    out["seconds"] = time.perf_counter() - t0
    out["extra_rss"] = max(0, _status("VmHWM") - rss0 - own)
    if op == "inspect":
        out["read_bytes"] = _io_counter("rchar") - rchar0
    if os.path.exists(path) and os.path.isfile(path):
        out["file_size"] = os.path.getsize(path)
    check(result)
    if op == "save" and who != "raw":
        _check_saved(wl, spec, who, path)
    return out


def _touch(tree: Any) -> None:
    """Read one element per 4 KiB page of every tensor in ``tree``."""
    if isinstance(tree, torch.Tensor):
        if tree.numel():
            flat = tree.reshape(-1)
            flat[:: max(1, 4096 // flat.element_size())].sum()
    elif isinstance(tree, dict):
        for v in tree.values():
            _touch(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            _touch(v)


def _fresh_check(wl: W.Workload, spec: W.Spec, who: str) -> Callable[[Any], None]:
    def check(r: Any) -> None:
        if who == "raw":
            return
        if wl.kind == "train":
            if who == "safetensors":
                st = r
                r = {"model": {k[6:]: v for k, v in st.items() if k.startswith("model.")},
                     "optimizer": {"state": {i: {f: st[f"optimizer.state.{i}.{f}"] for f in ("step", "exp_avg", "exp_avg_sq")}
                                             for i in range(len(spec))}}}
            W.verify_train(spec, r)
        else:
            W.verify(spec, r)
    return check


def _check_saved(wl: W.Workload, spec: W.Spec, who: str, path: str) -> None:
    """A cheap check that the file is complete: its size is at least the tensor bytes."""
    if os.path.getsize(path) < W.nbytes(spec):
        raise AssertionError(f"{who} wrote a short file {path}")


def main() -> None:
    case = json.loads(sys.argv[1])
    torch.set_num_threads(int(case.get("torch_threads", 2)))
    res = run_case(case)
    sys.stdout.write("\n" + json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
