"""Dask distributed's side of multiproc-bench-nats: Client.map and submit-and-wait on a local
cluster of two worker processes (one thread each), the same shape as the distributed pool's two
worker hosts. Prints one JSON line per workload, as the Rust rows do.

usage: python3 bench_dask.py --n N --apply-n M --trials K
"""

import argparse
import json
import statistics
import time


def square(x):
    return x * x


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--apply-n", type=int, default=300)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()

    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    try:
        client.gather(client.map(square, range(200), pure=False))  # warm up
        rates = []
        for _ in range(args.trials):
            start = time.perf_counter()
            client.gather(client.map(square, range(args.n), pure=False))
            rates.append(args.n / (time.perf_counter() - start))
        print(json.dumps(row("nats_pool_map_small", "items_per_s", rates, args.n)), flush=True)
        latencies = []
        for _ in range(args.trials):
            start = time.perf_counter()
            for i in range(args.apply_n):
                client.submit(square, i, pure=False).result()
            latencies.append((time.perf_counter() - start) / args.apply_n * 1e6)
        print(
            json.dumps(row("nats_pool_apply_roundtrip", "us_per_task", latencies, args.apply_n)),
            flush=True,
        )
    finally:
        client.close()
        cluster.close()


def row(workload, unit, values, n):
    return {
        "workload": workload,
        "impl": "dask",
        "value": statistics.median(values),
        "unit": unit,
        "n": n,
        "trials": len(values),
        "min": min(values),
        "max": max(values),
        "api": "LocalCluster(n_workers=2, threads_per_worker=1); Client.map / submit().result()",
    }


if __name__ == "__main__":
    main()
