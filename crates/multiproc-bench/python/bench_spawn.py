#!/usr/bin/env python3
"""Python multiprocessing side of the concurrent-spawn rows of `multiproc-bench` (stdlib only).

  spawn_concurrent_1   procs_per_s  Process(target=noop).start(), then join(): rounds of 1
  spawn_concurrent_8   procs_per_s  8 x Process(target=noop).start(), then join() each
  spawn_concurrent_64  procs_per_s  64 x Process(target=noop).start(), then join() each

With the `fork` start method. A trial is n // k rounds after one untimed round; it prints one
JSON line per workload as `bench_mp.py` does. `multiproc-bench` runs it with `python3 -c`, one
trial at a time.
"""
import argparse
import json
import multiprocessing
import os
import statistics
import time

CTX = multiprocessing.get_context("fork")
API = "k x get_context('fork').Process(target=noop).start(), then join() each"

WORKLOADS = {
    # name: (children at once, full n, quick n)
    "spawn_concurrent_1": (1, 100, 40),
    "spawn_concurrent_8": (8, 200, 64),
    "spawn_concurrent_64": (64, 320, 128),
}


def _noop():
    pass


def _round(k):
    children = [CTX.Process(target=_noop) for _ in range(k)]
    for p in children:
        p.start()
    for p in children:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"child exit code {p.exitcode}")


def trial(k, n):
    _round(k)
    rounds = max(n // k, 1)
    t0 = time.perf_counter()
    for _ in range(rounds):
        _round(k)
    return rounds * k / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="workload(s), comma list ok")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pin", action="store_true", help="run on CPU 0 (children inherit)")
    ap.add_argument("--n", type=int, help="processes per trial (default per workload)")
    ap.add_argument("--trials", type=int, default=None)
    args = ap.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {0})
    names = [w for arg in args.only for w in arg.split(",") if w] or list(WORKLOADS)
    for name in names:
        if name not in WORKLOADS:
            ap.error(f"unknown workload {name!r}")
    trials = args.trials or (5 if args.quick else 9)
    pinned = os.sched_getaffinity(0) == {0} and (os.cpu_count() or 1) > 1
    for name in names:
        k, full_n, quick_n = WORKLOADS[name]
        n = args.n or (quick_n if args.quick else full_n)
        values = [trial(k, n) for _ in range(trials)]
        print(json.dumps({
            "workload": name,
            "impl": "python-mp",
            "value": statistics.median(values),
            "unit": "procs_per_s",
            "n": n,
            "trials": trials,
            "min": min(values),
            "max": max(values),
            "pinned": pinned,
            "api": API,
        }), flush=True)


if __name__ == "__main__":
    main()
