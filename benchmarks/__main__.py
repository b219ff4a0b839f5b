"""``python -m benchmarks [--quick] [--reps N] [--workloads ...] [--contenders ...] [--out DIR] [--s3]``.

``--s3`` (or ``s3`` in ``--workloads``) adds the object-storage benchmark (``_s3.py``): it
starts moto's S3 server on 127.0.0.1 and writes ``s3.md``/``s3.json`` beside the results.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    from . import _report, _runner, _workloads
    from ._machine import describe

    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small workloads, 2 repetitions: a smoke run in about a minute")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per case (default 3, quick 2)")
    ap.add_argument("--workloads", default="transformer,small,train", help="comma list of transformer,small,train,s3")
    ap.add_argument("--s3", action="store_true", help="also run the S3 (moto on 127.0.0.1) vs local disk benchmark")
    ap.add_argument("--contenders", default="torch,torch_mmap,safetensors,torchkeep,raw", help="comma list")
    ap.add_argument("--no-cold", action="store_true", help="skip cold page-cache cases")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="results folder (default benchmarks/results)")
    ap.add_argument("--scratch", default=None, help="folder for the files written (default /var/tmp or $TORCHKEEP_BENCH_DIR)")
    ap.add_argument("--note", default=None, help="a note printed at the top of the results (e.g. 'busy machine')")
    ap.add_argument("--size", type=str, default=None, help="override workload params, e.g. transformer:d=512,layers=8")
    args = ap.parse_args(argv)

    wls_all = _workloads.workloads(args.quick)
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if "s3" in names or args.s3:  # opt-in: its own server, cases and report (benchmarks/_s3.py)
        names = [n for n in names if n != "s3"]
        from . import _s3

        s3_scratch = _runner.make_scratch(args.scratch)
        try:
            _s3.run(quick=args.quick, reps=args.reps or (2 if args.quick else 3), out=args.out, scratch=s3_scratch)
        finally:
            shutil.rmtree(s3_scratch, ignore_errors=True)
        print(open(os.path.join(args.out, "s3.md")).read())
        if not names:
            return 0
    unknown = [n for n in names if n not in wls_all]
    if unknown:
        ap.error(f"unknown workloads {unknown}; choose from {list(wls_all)}")
    wls = {n: wls_all[n] for n in names}
    if args.size:
        wname, _, kvs = args.size.partition(":")
        params = dict(wls[wname].params)
        params.update({k: int(v) for k, v in (kv.split("=") for kv in kvs.split(","))})
        wls[wname] = _workloads.Workload(wls[wname].name, wls[wname].title, wls[wname].kind, params)
    contenders = {c.strip() for c in args.contenders.split(",") if c.strip()}
    reps = args.reps or (2 if args.quick else 3)

    scratch = _runner.make_scratch(args.scratch)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    try:
        machine = describe(scratch)
        groups = _runner.plan(wls, contenders, cold=not args.no_cold, quick=args.quick)
        print(f"[bench] {sum(len(g['contenders']) for g in groups) * reps} measurements, scratch {scratch}", file=sys.stderr)
        records = _runner.run_all(wls, groups, reps, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = _runner.summarize(records)
    settings = {"reps": reps, "mode": "quick" if args.quick else "full", "started": started,
                "wall_s": time.perf_counter() - t0, "workloads": {n: w.params for n, w in wls.items()},
                "load_avg_at_end": round(os.getloadavg()[0], 2), "note": args.note}
    machine["load_avg_at_start"] = round(machine["load_avg_at_start"], 2)
    _report.write_all(args.out, machine=machine, summary=summary, records=records, wls=wls, settings=settings)
    default_out = os.path.abspath(args.out) == os.path.join(HERE, "results")
    if default_out:  # the README section lives beside the results folder
        shutil.move(os.path.join(args.out, "README_SECTION.md"), os.path.join(HERE, "README_SECTION.md"))
    print(open(os.path.join(args.out, "results.md")).read().split("## All figures")[0])
    print(f"[bench] results in {args.out} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    failed = [r for r in records if "error" in r]
    return 1 if failed and len(failed) == len(records) else 0


if __name__ == "__main__":
    sys.exit(main())
