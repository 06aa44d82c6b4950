#!/usr/bin/env python3
"""Python side of multiproc-bench's scale rows (stdlib only): what one multiprocessing primitive
costs, and how many one process can create under a 1,024-descriptor limit.

  --measure fds        descriptors in /proc/self/fd before and after creating --k primitives,
                       per primitive created
  --measure shm_bytes  the same for the sizes of the shared mappings in /proc/self/smaps
                       (permissions ending in "s": sem_open pages, shared memory)
  --measure shm_resident  the same for their resident part (Rss)
  --measure max        RLIMIT_NOFILE soft and hard set to --limit first, then primitives are
                       created and kept until creation fails or --max exist

Primitives (--primitive): lock = Lock(), event = Event(), semaphore = Semaphore(1),
queue = Queue(), pipe = Pipe() (one duplex pair). Prints one line:
`value=<v> capped=<0|1> stopped=<the error that stopped creation, or nothing>`.
"""
import argparse
import multiprocessing
import os
import resource

CTX = multiprocessing.get_context("fork")

CREATE = {
    "lock": CTX.Lock,
    "event": CTX.Event,
    "semaphore": lambda: CTX.Semaphore(1),
    "queue": CTX.Queue,
    "pipe": CTX.Pipe,
}


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def shared_mapping_bytes():
    """(mapped, resident) bytes of the shared mappings."""
    mapped = resident = 0
    shared = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if len(fields) < 2:
                continue
            if "-" in fields[0]:
                shared = fields[1].endswith("s")
                if shared:
                    start, end = fields[0].split("-")
                    mapped += int(end, 16) - int(start, 16)
            elif shared and fields[0] == "Rss:":
                resident += int(fields[1]) * 1024
    return mapped, resident


def create_many(create, limit):
    """Creates up to `limit` primitives; returns them and the error that stopped it."""
    kept = []
    try:
        while len(kept) < limit:
            kept.append(create())
    except Exception as e:  # EMFILE, ENOMEM at the mapping limit, ...
        return kept, f"{type(e).__name__}: {e}"
    return kept, ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--primitive", choices=sorted(CREATE), required=True)
    ap.add_argument("--measure", choices=["fds", "shm_bytes", "shm_resident", "max"], required=True)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--max", type=int, default=100_000)
    ap.add_argument("--limit", type=int, default=1024)
    args = ap.parse_args()
    create = CREATE[args.primitive]
    if args.measure == "max":
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.limit, args.limit))
        kept, stopped = create_many(create, args.max)
        count = len(kept)
        print(f"value={count} capped={int(count >= args.max)} stopped={stopped}", flush=True)
        return
    probe = {
        "fds": open_fds,
        "shm_bytes": lambda: shared_mapping_bytes()[0],
        "shm_resident": lambda: shared_mapping_bytes()[1],
    }[args.measure]
    before = probe()
    kept, stopped = create_many(create, args.k)
    after = probe()
    if not kept:
        raise SystemExit(f"no {args.primitive} could be created: {stopped}")
    print(f"value={(after - before) / len(kept)} capped=0 stopped=", flush=True)


if __name__ == "__main__":
    main()
