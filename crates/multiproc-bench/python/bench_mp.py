#!/usr/bin/env python3
"""Python multiprocessing side of the multiproc benchmark matrix (stdlib only).

Same workloads and payloads as `multiproc-bench`, with the `fork` start method and
`multiprocessing.Pipe()` (a duplex Connection over a socketpair), using `Connection.send` /
`Connection.recv` of a `bytes` object, which pickles it: the path a typical user takes.

  pipe_pingpong_64B  us_per_roundtrip  64-byte bytes to a child and back
  pipe_stream_64B    msgs_per_s        64-byte messages one way; the child counts, answers
  pipe_stream_1MiB   MiB_per_s         1 MiB messages one way
  spawn_join         ms_per_process    Process(target=noop).start(); join(), sequentially

Prints one JSON line per workload: {"workload", "impl": "python-mp", "value", "unit", "n", ...}
with the median over --trials. `multiproc-bench` runs it with `python3 -c` one trial at a time.
"""
import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time

CTX = multiprocessing.get_context("fork")

API_PIPE = "Pipe() Connection.send/recv of bytes (pickled), fork"
API_SPAWN = "get_context('fork').Process(target=noop).start(); join()"

WORKLOADS = {
    # name: (unit, full n, quick n)
    "pipe_pingpong_64B": ("us_per_roundtrip", 5_000, 2_000),
    "pipe_stream_64B": ("msgs_per_s", 100_000, 30_000),
    "pipe_stream_1MiB": ("MiB_per_s", 200, 100),
    "spawn_join": ("ms_per_process", 100, 40),
}


def _echo(conn):
    while True:
        msg = conn.recv()
        if msg is None:
            break
        conn.send(msg)


def pingpong(n):
    here, there = CTX.Pipe()
    child = CTX.Process(target=_echo, args=(there,))
    child.start()
    there.close()
    payload = bytes(64)
    for _ in range(n // 10 + 1):
        here.send(payload)
        here.recv()
    t0 = time.perf_counter()
    for _ in range(n):
        here.send(payload)
        here.recv()
    elapsed = time.perf_counter() - t0
    here.send(None)
    child.join()
    return elapsed * 1e6 / n


def _sink(conn, n):
    conn.send(0)
    count = 0
    for _ in range(n):
        conn.recv()
        count += 1
    conn.send(count)


def stream(n, size):
    here, there = CTX.Pipe()
    child = CTX.Process(target=_sink, args=(there, n))
    child.start()
    there.close()
    if here.recv() != 0:
        raise RuntimeError("stream child did not start")
    payload = bytes(size)
    t0 = time.perf_counter()
    for _ in range(n):
        here.send(payload)
    counted = here.recv()
    elapsed = time.perf_counter() - t0
    if counted != n:
        raise RuntimeError(f"stream child counted {counted} of {n}")
    child.join()
    return elapsed


def _noop():
    pass


def spawn_join(n):
    for _ in range(2):
        p = CTX.Process(target=_noop)
        p.start()
        p.join()
    t0 = time.perf_counter()
    for _ in range(n):
        p = CTX.Process(target=_noop)
        p.start()
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"child exit code {p.exitcode}")
    return (time.perf_counter() - t0) * 1e3 / n


def trial(name, n):
    if name == "pipe_pingpong_64B":
        return pingpong(n)
    if name == "pipe_stream_64B":
        return n / stream(n, 64)
    if name == "pipe_stream_1MiB":
        return n / stream(n, 1 << 20)  # n messages of 1 MiB
    if name == "spawn_join":
        return spawn_join(n)
    raise ValueError(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="workload(s), comma list ok")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pin", action="store_true", help="run on CPU 0 (children inherit)")
    ap.add_argument("--n", type=int, help="operations per trial (default per workload)")
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
        unit, full_n, quick_n = WORKLOADS[name]
        n = args.n or (quick_n if args.quick else full_n)
        values = [trial(name, n) for _ in range(trials)]
        print(json.dumps({
            "workload": name,
            "impl": "python-mp",
            "value": statistics.median(values),
            "unit": unit,
            "n": n,
            "trials": trials,
            "min": min(values),
            "max": max(values),
            "pinned": pinned,
            "api": API_SPAWN if name == "spawn_join" else API_PIPE,
        }), flush=True)


if __name__ == "__main__":
    main()
