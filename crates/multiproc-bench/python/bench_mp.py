#!/usr/bin/env python3
"""Python multiprocessing side of the multiproc benchmark matrix (stdlib only).

Same workloads and payloads as `multiproc-bench`, with the `fork` start method and
`multiprocessing.Pipe()` (a duplex Connection over a socketpair), using `Connection.send` /
`Connection.recv` of a `bytes` object, which pickles it: the path a typical user takes.

  pipe_pingpong_64B  us_per_roundtrip  64-byte bytes to a child and back
  pipe_stream_64B    msgs_per_s        64-byte messages one way; the child counts, answers
  pipe_stream_1MiB   MiB_per_s         1 MiB messages one way
  spawn_join         ms_per_process    Process(target=noop).start(); join(), sequentially
  lock_uncontended   ns_per_op         `with lock: pass` on a multiprocessing.Lock, one process
  lock_contended_2p  ops_per_s         two processes: `with lock: v.value += 1`, Value('q', lock=False)
  semaphore_limit    ops_per_s         eight processes: Semaphore(2) acquire/release; peak holders
  event_pingpong     us_per_roundtrip  A: e1.set(); e2.wait(); e2.clear()  B: e1.wait(); e1.clear(); e2.set()
  queue_1p1c_64B     msgs_per_s        Queue() put/get of 64-byte bytes, 1 producer, 1 consumer
  queue_2p2c_64B     msgs_per_s        the same, 2 producers, 2 consumers
  queue_<P>p<C>c_64B msgs_per_s        the same, scaling: P = 2, 4, 8, 16 producers into one
                                       consumer, one producer into C = 2, 4 consumers
  pool_map_small     items_per_s       Pool(2).map(square, range(500_000)), default chunksize
  pool_map_small_chunk1  items_per_s   the same over 20,000 items with chunksize=1
  pool_apply_roundtrip   us_per_task   Pool(2).apply(square, (i,)), one after another
  file_lock_uncontended  ns_per_op     fcntl.flock(f, LOCK_EX); fcntl.flock(f, LOCK_UN), one process
  file_lock_contended_2p ops_per_s     two processes, each its own open file: flock around v.value += 1
  conn_roundtrip_unix    reqs_per_s    connection.Listener/Client with an authkey, AF_UNIX:
                                       64-byte bytes (pickled) to the client and back
  conn_roundtrip_tcp     reqs_per_s    the same over TCP loopback
  conn_accept_unix       conns_per_s   the client: Client(address, authkey) + recv(), n times;
                                       the listener: accept() + send(1)
  conn_accept_tcp        conns_per_s   the same over TCP loopback

Multi-process workloads meet at a Barrier with the parent (its clock starts) and put a report
on a Queue when done (the clock stops at the last one), as `multiproc-bench` does.

Prints one JSON line per workload: {"workload", "impl": "python-mp", "value", "unit", "n", ...}
with the median over --trials. `multiproc-bench` runs it with `python3 -c` one trial at a time.
"""
import argparse
import fcntl
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

CTX = multiprocessing.get_context("fork")

# The queue scaling rows: (producers, consumers), each a separate process.
QUEUE_SCALING = [(2, 1), (4, 1), (8, 1), (16, 1), (1, 2), (1, 4)]

API_PIPE = "Pipe() Connection.send/recv of bytes (pickled), fork"
API_SPAWN = "get_context('fork').Process(target=noop).start(); join()"
APIS = {
    "spawn_join": API_SPAWN,
    "lock_uncontended": "with Lock(): pass",
    "lock_contended_2p": "with Lock(): Value('q', lock=False).value += 1",
    "semaphore_limit": "Semaphore(2).acquire()/release(); holders counted under a second Lock",
    "event_pingpong": "Event set/wait/clear",
    "queue_1p1c_64B": "Queue().put/get of bytes (pickled)",
    "queue_2p2c_64B": "Queue().put/get of bytes (pickled)",
    **{f"queue_{p}p{c}c_64B": "Queue().put/get of bytes (pickled)" for p, c in QUEUE_SCALING},
    "pool_map_small": "Pool(2).map(square, range(n))",
    "pool_map_small_chunk1": "Pool(2).map(square, range(n), chunksize=1)",
    "pool_apply_roundtrip": "Pool(2).apply(square, (i,)), sequentially",
    "file_lock_uncontended": "fcntl.flock(f, LOCK_EX); fcntl.flock(f, LOCK_UN)",
    "file_lock_contended_2p": "fcntl.flock LOCK_EX/LOCK_UN around Value('q', lock=False).value += 1",
    # Named endpoints (issue 13).
    "conn_roundtrip_unix": "connection.Listener/Client(authkey) Connection.send/recv of bytes (pickled)",
    "conn_roundtrip_tcp": "connection.Listener/Client(authkey) Connection.send/recv of bytes (pickled)",
    "conn_accept_unix": "Client(address, authkey) + recv(); Listener.accept() + send()",
    "conn_accept_tcp": "Client(address, authkey) + recv(); Listener.accept() + send()",
}
PATIENCE = 120  # seconds any wait for a child may take
SEM_PROCESSES = 8
SEM_PERMITS = 2

WORKLOADS = {
    # name: (unit, full n, quick n)
    "pipe_pingpong_64B": ("us_per_roundtrip", 5_000, 2_000),
    "pipe_stream_64B": ("msgs_per_s", 100_000, 30_000),
    "pipe_stream_1MiB": ("MiB_per_s", 200, 100),
    "spawn_join": ("ms_per_process", 100, 40),
    "lock_uncontended": ("ns_per_op", 2_000_000, 500_000),
    "lock_contended_2p": ("ops_per_s", 1_000_000, 300_000),
    "semaphore_limit": ("ops_per_s", 400_000, 80_000),
    "event_pingpong": ("us_per_roundtrip", 5_000, 1_000),
    "queue_1p1c_64B": ("msgs_per_s", 100_000, 20_000),
    "queue_2p2c_64B": ("msgs_per_s", 100_000, 20_000),
    **{f"queue_{p}p{c}c_64B": ("msgs_per_s", 100_000, 20_000) for p, c in QUEUE_SCALING},
    "pool_map_small": ("items_per_s", 500_000, 500_000),
    "pool_map_small_chunk1": ("items_per_s", 20_000, 5_000),
    "pool_apply_roundtrip": ("us_per_task", 2_000, 500),
    "file_lock_uncontended": ("ns_per_op", 200_000, 50_000),
    "file_lock_contended_2p": ("ops_per_s", 100_000, 20_000),
    # Named endpoints (issue 13).
    "conn_roundtrip_unix": ("reqs_per_s", 20_000, 5_000),
    "conn_roundtrip_tcp": ("reqs_per_s", 20_000, 5_000),
    "conn_accept_unix": ("conns_per_s", 2_000, 500),
    "conn_accept_tcp": ("conns_per_s", 2_000, 500),
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


def lock_uncontended(n):
    lock = CTX.Lock()
    for _ in range(n // 10 + 1):
        with lock:
            pass
    t0 = time.perf_counter()
    for _ in range(n):
        with lock:
            pass
    return (time.perf_counter() - t0) * 1e9 / n


def _timed_gang(barrier, reports, children):
    """Clock from the barrier to the last report; then join. Returns (seconds, reports)."""
    for c in children:
        c.start()
    barrier.wait(PATIENCE)
    t0 = time.perf_counter()
    got = [reports.get(timeout=PATIENCE) for _ in children]
    secs = time.perf_counter() - t0
    for c in children:
        c.join()
        if c.exitcode != 0:
            raise RuntimeError(f"child exit code {c.exitcode}")
    failures = [r for r in got if isinstance(r, str)]
    if failures:
        raise RuntimeError(f"children failed: {failures}")
    return secs, got


def _lock_worker(lock, value, barrier, reports, ops):
    try:
        barrier.wait(PATIENCE)
        for _ in range(ops):
            with lock:
                value.value += 1
        reports.put(ops)
    except Exception as e:  # report, or the parent waits for nothing
        reports.put(f"lock worker: {e!r}")


def lock_contended(n):
    per = n // 2
    lock = CTX.Lock()
    value = CTX.Value("q", 0, lock=False)
    barrier = CTX.Barrier(3)
    reports = CTX.Queue()
    children = [CTX.Process(target=_lock_worker, args=(lock, value, barrier, reports, per))
                for _ in range(2)]
    secs, _ = _timed_gang(barrier, reports, children)
    if value.value != 2 * per:
        raise RuntimeError(f"lock_contended_2p: counter {value.value}, expected {2 * per}")
    return 2 * per / secs


def _sem_worker(sem, holders, guard, barrier, reports, ops):
    # Holders are counted in shared memory under a second Lock (Python has no shared atomics;
    # one flag per process summed without a lock over-reports, as the sum is no snapshot).
    try:
        barrier.wait(PATIENCE)
        peak = 0
        for _ in range(ops):
            sem.acquire()
            with guard:
                holders.value += 1
                if holders.value > peak:
                    peak = holders.value
            with guard:
                holders.value -= 1
            sem.release()
        reports.put((ops, peak))
    except Exception as e:
        reports.put(f"semaphore worker: {e!r}")


def semaphore_limit(n):
    per = n // SEM_PROCESSES
    sem = CTX.Semaphore(SEM_PERMITS)
    holders = CTX.Value("q", 0, lock=False)
    guard = CTX.Lock()
    barrier = CTX.Barrier(SEM_PROCESSES + 1)
    reports = CTX.Queue()
    children = [CTX.Process(target=_sem_worker, args=(sem, holders, guard, barrier, reports, per))
                for _ in range(SEM_PROCESSES)]
    secs, got = _timed_gang(barrier, reports, children)
    peak = max(p for _, p in got)
    if peak > SEM_PERMITS or holders.value != 0:
        raise RuntimeError(f"semaphore_limit: {peak} holders at once (limit {SEM_PERMITS}), "
                           f"{holders.value} left")
    return per * SEM_PROCESSES / secs, peak


def _event_b(e1, e2, rounds):
    for _ in range(rounds):
        e1.wait()
        e1.clear()
        e2.set()


def event_pingpong(n):
    warmup = n // 10 + 1
    e1, e2 = CTX.Event(), CTX.Event()
    child = CTX.Process(target=_event_b, args=(e1, e2, warmup + n))
    child.start()

    def round_trip():
        e1.set()
        e2.wait()
        e2.clear()

    for _ in range(warmup):
        round_trip()
    t0 = time.perf_counter()
    for _ in range(n):
        round_trip()
    elapsed = time.perf_counter() - t0
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"event child exit code {child.exitcode}")
    return elapsed * 1e6 / n


MSG_LEN = 64
MARKER_LEN = 8


def _q_producer(q, barrier, reports, pid, count, markers):
    try:
        barrier.wait(PATIENCE)
        head = pid.to_bytes(8, "little")
        pad = bytes(MSG_LEN - 16)
        for seq in range(count):
            q.put(head + seq.to_bytes(8, "little") + pad)
        for _ in range(markers):
            q.put(head)
        reports.put(("producer", count))
    except Exception as e:
        reports.put(f"producer: {e!r}")


def _q_consumer(q, barrier, reports, producers, per):
    try:
        seen = [bytearray(per) for _ in range(producers)]
        last = [-1] * producers
        count = ends = 0
        barrier.wait(PATIENCE)
        while True:
            m = q.get()
            if len(m) == MARKER_LEN:
                ends += 1
                if ends == producers:
                    break
                continue
            if len(m) != MSG_LEN:
                raise RuntimeError(f"message of {len(m)} bytes")
            pid = int.from_bytes(m[:8], "little")
            seq = int.from_bytes(m[8:16], "little")
            if seen[pid][seq]:
                raise RuntimeError(f"duplicate: producer {pid}, seq {seq}")
            seen[pid][seq] = 1
            if seq <= last[pid]:
                raise RuntimeError(f"out of order: producer {pid}, seq {seq} after {last[pid]}")
            last[pid] = seq
            count += 1
        reports.put(("consumer", count, [bytes(s) for s in seen]))
    except Exception as e:
        reports.put(f"consumer: {e!r}")


def queue_bench(n, producers, consumers):
    """Same protocol as multiproc-bench: P producers put n/P messages then C end markers each;
    a consumer stops after P markers; then check that no message was lost or duplicated."""
    per = n // producers
    q = CTX.Queue()
    reports = CTX.Queue()
    barrier = CTX.Barrier(producers + consumers + 1)
    children = [CTX.Process(target=_q_producer, args=(q, barrier, reports, p, per, consumers))
                for p in range(producers)]
    children += [CTX.Process(target=_q_consumer, args=(q, barrier, reports, producers, per))
                 for _ in range(consumers)]
    secs, got = _timed_gang(barrier, reports, children)
    consumed = [r for r in got if r[0] == "consumer"]
    if sum(r[1] for r in consumed) != producers * per:
        raise RuntimeError(f"consumers took {sum(r[1] for r in consumed)} of {producers * per}")
    for p in range(producers):
        union = 0
        for r in consumed:
            bits = int.from_bytes(r[2][p], "little")
            if union & bits:
                raise RuntimeError(f"producer {p}: a message was taken twice")
            union |= bits
        if union.to_bytes(per, "little").count(1) != per:
            raise RuntimeError(f"producer {p}: messages lost")
    return producers * per / secs


def _square(x):
    return x * x


def pool_bench(name, n):
    """Pool(2) started and warmed up (every worker ran a task) before the clock starts."""
    with CTX.Pool(2) as pool:
        pool.map(_square, range(64), chunksize=1)
        start = time.perf_counter()
        if name == "pool_apply_roundtrip":
            for i in range(n):
                if pool.apply(_square, (i,)) != i * i:
                    raise RuntimeError("wrong apply result")
            return (time.perf_counter() - start) * 1e6 / n
        chunksize = 1 if name == "pool_map_small_chunk1" else None
        squares = pool.map(_square, range(n), chunksize=chunksize)
        secs = time.perf_counter() - start
        if squares != [i * i for i in range(n)]:
            raise RuntimeError("wrong map results")
        return n / secs


def _lock_file():
    return os.path.join(tempfile.gettempdir(), f"multiproc-bench-py-{os.getpid()}.lock")


def file_lock_uncontended(n):
    path = _lock_file()
    try:
        with open(path, "a") as f:
            for _ in range(n):
                fcntl.flock(f, fcntl.LOCK_EX)
                fcntl.flock(f, fcntl.LOCK_UN)
            t0 = time.perf_counter()
            for _ in range(n):
                fcntl.flock(f, fcntl.LOCK_EX)
                fcntl.flock(f, fcntl.LOCK_UN)
            return (time.perf_counter() - t0) * 1e9 / n
    finally:
        os.unlink(path)


def _file_lock_worker(path, value, barrier, reports, ops):
    try:
        with open(path, "a") as f:  # each process its own open file, as separate programs
            barrier.wait(PATIENCE)
            for _ in range(ops):
                fcntl.flock(f, fcntl.LOCK_EX)
                value.value += 1
                fcntl.flock(f, fcntl.LOCK_UN)
        reports.put(ops)
    except Exception as e:  # report, or the parent waits for nothing
        reports.put(f"file lock worker: {e!r}")


def file_lock_contended(n):
    per = n // 2
    path = _lock_file()
    value = CTX.Value("q", 0, lock=False)
    barrier = CTX.Barrier(3)
    reports = CTX.Queue()
    children = [CTX.Process(target=_file_lock_worker, args=(path, value, barrier, reports, per))
                for _ in range(2)]
    try:
        secs, _ = _timed_gang(barrier, reports, children)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    if value.value != 2 * per:
        raise RuntimeError(f"file_lock_contended_2p: counter {value.value}, expected {2 * per}")
    return 2 * per / secs


# Named endpoints (issue 13): multiprocessing.connection with an authkey.
CONN_KEY = b"bench key"


def _conn_address(name):
    if name.endswith("_tcp"):
        return ("127.0.0.1", 0)
    return os.path.join("/tmp", f"mp-bench-py-{os.getpid()}-{time.monotonic_ns()}.sock")


def _conn_echo(address):
    from multiprocessing.connection import Client
    with Client(address, authkey=CONN_KEY) as c:
        while True:
            msg = c.recv()
            if msg is None:
                break
            c.send(msg)


def conn_roundtrip(name, n):
    from multiprocessing.connection import Listener
    with Listener(_conn_address(name), authkey=CONN_KEY) as listener:
        child = CTX.Process(target=_conn_echo, args=(listener.address,))
        child.start()
        with listener.accept() as c:
            payload = bytes(64)
            for _ in range(n // 10 + 1):
                c.send(payload)
                c.recv()
            t0 = time.perf_counter()
            for _ in range(n):
                c.send(payload)
                c.recv()
            elapsed = time.perf_counter() - t0
            c.send(None)
        child.join(PATIENCE)
    return n / elapsed


def _conn_connect_many(address, n, report):
    from multiprocessing.connection import Client
    t0 = time.perf_counter()
    for _ in range(n):
        with Client(address, authkey=CONN_KEY) as c:
            if c.recv() != 1:
                raise RuntimeError("wrong reply")
    report.send(time.perf_counter() - t0)


def conn_accept(name, n):
    from multiprocessing.connection import Listener
    with Listener(_conn_address(name), authkey=CONN_KEY) as listener:
        here, there = CTX.Pipe()
        child = CTX.Process(target=_conn_connect_many, args=(listener.address, n, there))
        child.start()
        for _ in range(n):
            with listener.accept() as c:
                c.send(1)
        secs = here.recv()
        child.join(PATIENCE)
    return n / secs


def trial(name, n):
    if name.startswith("conn_roundtrip_"):
        return conn_roundtrip(name, n)
    if name.startswith("conn_accept_"):
        return conn_accept(name, n)
    if name.startswith("pool_"):
        return pool_bench(name, n)
    if name == "pipe_pingpong_64B":
        return pingpong(n)
    if name == "pipe_stream_64B":
        return n / stream(n, 64)
    if name == "pipe_stream_1MiB":
        return n / stream(n, 1 << 20)  # n messages of 1 MiB
    if name == "spawn_join":
        return spawn_join(n)
    if name == "lock_uncontended":
        return lock_uncontended(n)
    if name == "lock_contended_2p":
        return lock_contended(n)
    if name == "semaphore_limit":
        return semaphore_limit(n)
    if name == "event_pingpong":
        return event_pingpong(n)
    if name.startswith("queue_") and name.endswith("c_64B"):
        # queue_<P>p<C>c_64B
        producers, consumers = name[len("queue_"):-len("c_64B")].split("p")
        return queue_bench(n, int(producers), int(consumers))
    if name == "file_lock_uncontended":
        return file_lock_uncontended(n)
    if name == "file_lock_contended_2p":
        return file_lock_contended(n)
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
        results = [trial(name, n) for _ in range(trials)]
        # semaphore_limit returns (value, peak holders).
        values = [r[0] if isinstance(r, tuple) else r for r in results]
        peaks = [r[1] for r in results if isinstance(r, tuple)]
        extra = {"peak": max(peaks), "peak_min": min(peaks)} if peaks else {}
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
            "api": APIS.get(name, API_PIPE),
            **extra,
        }), flush=True)


if __name__ == "__main__":
    main()
