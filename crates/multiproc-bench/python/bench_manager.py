#!/usr/bin/env python3
"""Python Manager side of the multiproc benchmark matrix (stdlib only).

  manager_dict_2p  ops_per_s  Manager().dict(): two processes each do n/4 rounds of
                              d["p{p}k{i % 1000}"] = i; d[that key] (n/2 operations each)

The children and the parent meet at a Barrier (the parent's clock starts) and put a report on
a Queue when done (the clock stops at the second one), as `multiproc-bench` does. Start method
fork; the dict proxy is passed to the children as an argument.

Prints one JSON line: {"workload", "impl": "python-mp", "value", "unit", "n", ...} with the
median over --trials. `multiproc-bench` runs it with `python3 -c` one trial at a time.
"""
import argparse
import json
import multiprocessing
import os
import statistics
import time

CTX = multiprocessing.get_context("fork")
PATIENCE = 120
API = "Manager().dict(): d[k] = i; d[k], from two processes"


def _worker(d, pid, rounds, barrier, reports):
    try:
        len(d)  # connect before the clock starts
        barrier.wait(PATIENCE)
        for i in range(rounds):
            k = f"p{pid}k{i % 1000}"
            d[k] = i
            got = d[k]
            if got != i:
                raise RuntimeError(f"get after set {i} gave {got}")
        reports.put(rounds * 2)
    except Exception as e:  # report, or the parent waits for nothing
        reports.put(f"manager worker: {e!r}")


def manager_dict(n):
    rounds = max(n // 4, 1)
    with CTX.Manager() as manager:
        d = manager.dict()
        barrier = CTX.Barrier(3)
        reports = CTX.Queue()
        children = [CTX.Process(target=_worker, args=(d, p, rounds, barrier, reports))
                    for p in range(2)]
        for c in children:
            c.start()
        barrier.wait(PATIENCE)
        t0 = time.perf_counter()
        got = [reports.get(timeout=PATIENCE) for _ in children]
        secs = time.perf_counter() - t0
        for c in children:
            c.join()
        failures = [r for r in got if isinstance(r, str)]
        if failures:
            raise RuntimeError(f"children failed: {failures}")
        return sum(got) / secs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int)
    ap.add_argument("--trials", type=int, default=None)
    args = ap.parse_args()
    names = [w for arg in args.only for w in arg.split(",") if w] or ["manager_dict_2p"]
    if names != ["manager_dict_2p"]:
        ap.error(f"unknown workload(s) {names!r}")
    n = args.n or (4_000 if args.quick else 20_000)
    trials = args.trials or (5 if args.quick else 9)
    values = [manager_dict(n) for _ in range(trials)]
    pinned = os.sched_getaffinity(0) == {0} and (os.cpu_count() or 1) > 1
    print(json.dumps({
        "workload": "manager_dict_2p",
        "impl": "python-mp",
        "value": statistics.median(values),
        "unit": "ops_per_s",
        "n": n,
        "trials": trials,
        "min": min(values),
        "max": max(values),
        "pinned": pinned,
        "api": API,
    }), flush=True)


if __name__ == "__main__":
    main()
