"""Distributed fit benchmark: a data set larger than one worker's memory, and weak scaling.

Runs on a ``distributed.LocalCluster`` of worker processes with one thread each.  The data are
generated on the workers, one partition per task (prompts of ``L`` uniform tokens of a vocabulary
of ``K``, outputs drawn from a fixed random CCMC), so the driver never holds them; int32 prompts.

1. **Larger than a worker**: ``--workers`` workers whose ``memory_limit`` is below the size of
   the data; reports the wall time of the fit, the bytes the workers sent each other (the
   shuffle, from the workers' transfer logs) per pair, the bytes of the pairs themselves, and
   the peak resident memory of every worker process (``ru_maxrss``; it includes the ~0.3 GB of
   Python, NumPy, scikit-learn, numba and distributed that every worker imports).
2. **Weak scaling**: 1, 2 and 4 workers, each with the same amount of data; on a machine with
   ``c`` cores more than ``c`` workers share the cores, so the time grows beyond that.

The data of run 1 do not fit one worker, so nothing here compares with an in-memory fit:
``tests/test_distributed.py`` checks that equality on data that fit.

Usage: python benchmarks/bench_distributed.py [--pairs 8000000] [--memory-limit 1GB]
           [--scaling-pairs 500000] [--out benchmarks/results/distributed.md]
"""

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

K = 1000  # vocabulary
L = 32  # prompt length
PART = 250_000  # pairs per input partition (and per column block, the default)


def make_part(seed, n):
    """One partition of pairs, generated on a worker: uniform prompts, CCMC outputs."""
    from ccmc_estim import CCMC

    truth = CCMC(np.random.default_rng(0).normal(0.0, 1.0, (K, K)))
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, K, (n, L), dtype=np.int32)
    return prompts, truth.sample(prompts, random_state=rng).astype(np.int64)


def dataset(n_pairs, seed0):
    import dask
    import dask.array as da

    sizes = [PART] * (n_pairs // PART) + ([n_pairs % PART] if n_pairs % PART else [])
    parts = [dask.delayed(make_part, nout=2)(seed0 + i, n) for i, n in enumerate(sizes)]
    X = da.concatenate([da.from_delayed(p[0], (n, L), np.int32) for p, n in zip(parts, sizes,
                                                                               strict=True)])
    y = da.concatenate([da.from_delayed(p[1], (n,), np.int64) for p, n in zip(parts, sizes,
                                                                             strict=True)])
    return X, y


def _incoming_bytes(dask_worker):
    return sum(d.get("total", 0) for d in dask_worker.transfer_incoming_log)


def _peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(n_workers, n_pairs, memory_limit, seed0=1):
    from distributed import Client, LocalCluster

    from ccmc_estim import CCMCEstimator

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      memory_limit=memory_limit, dashboard_address=None,
                      silence_logs=50) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("ccmc_estim").CCMCEstimator().fit([[0, 1]], [1]))
        base = client.run(_peak_rss)
        X, y = dataset(n_pairs, seed0)
        t0 = time.perf_counter()
        est = CCMCEstimator().fit(X, y)
        elapsed = time.perf_counter() - t0
        moved = sum(client.run(_incoming_bytes).values())
        peak = client.run(_peak_rss)
    return {
        "workers": n_workers,
        "pairs": n_pairs,
        "data_bytes": n_pairs * (4 * L + 8),
        "seconds": elapsed,
        "moved_bytes": moved,
        "peak": sorted(peak.values()),
        "base": sorted(base.values()),
        "objective": est.objective_,
        "n_params": int(est.identifiability_.n_identified.sum()),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8_000_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--scaling-pairs", type=int, default=500_000,
                        help="pairs per worker in the weak-scaling runs")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "distributed.md")
    args = parser.parse_args(argv)
    gb = 1e9
    big = run(args.workers, args.pairs, args.memory_limit)
    print(big, flush=True)
    scaling = []
    for w in (1, 2, 4):
        r = run(w, w * args.scaling_pairs, "4GB", seed0=100)
        print(r, flush=True)
        scaling.append(r)
    per_pair = big["moved_bytes"] / big["pairs"]
    pair_bytes = 4 * L + 8 + 8 + 8  # what a shuffled pair weighs: tokens, length, output, weight
    lines = [
        "# Distributed fit (Dask)",
        "",
        f"`python benchmarks/bench_distributed.py` on a machine with {os.cpu_count()} cores "
        "(shared with other jobs while it ran), `distributed.LocalCluster` of worker processes "
        f"with one thread each. Data: K={K}, prompts of L={L} int32 tokens, outputs from a "
        f"random CCMC, generated on the workers in partitions of {PART:,} pairs.",
        "",
        "The fit times include generating the data on the workers (the data are lazy, made "
        "by the fit's first tasks: about 16 s per million pairs on one core here). Other jobs "
        "shared the 2 cores during the runs, so single timings vary by tens of percent (an "
        "efficiency above 1 is that noise).",
        "",
        "## A data set larger than one worker's memory limit",
        "",
        f"{big['workers']} workers with `memory_limit={args.memory_limit}` each; the data "
        f"(prompts and outputs) take {big['data_bytes'] / gb:.2f} GB.",
        "",
        "| pairs | data GB | fit s | shuffled GB (between workers) | bytes per pair | "
        "peak RSS per worker GB | idle RSS per worker GB |",
        "|---:|---:|---:|---:|---:|---|---|",
        f"| {big['pairs']:,} | {big['data_bytes'] / gb:.2f} | {big['seconds']:.1f} | "
        f"{big['moved_bytes'] / gb:.2f} | {per_pair:.0f} | "
        f"{', '.join(f'{p / gb:.2f}' for p in big['peak'])} | "
        f"{', '.join(f'{p / gb:.2f}' for p in big['base'])} |",
        "",
        f"A shuffled pair weighs {pair_bytes} bytes (its {L} int32 tokens, its length, output "
        "and weight, 8 bytes each); with W workers a fraction (W - 1) / W of the pairs "
        f"changes worker, {pair_bytes * (big['workers'] - 1) / big['workers']:.0f} bytes per "
        "pair expected here; the rest of the measured traffic is input partitions that the "
        "scheduler moved to idle workers before validating them, and the summaries.",
        "",
        "## Weak scaling",
        "",
        f"{args.scaling_pairs:,} pairs per worker. The machine has {os.cpu_count()} cores: "
        "beyond 2 workers they share them, so the time per fit grows even though the work "
        "per worker does not (the table measures the machine, not the method).",
        "",
        "| workers | pairs | fit s | efficiency (t1 / tW) | shuffled MB | peak RSS per worker GB |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    t1 = scaling[0]["seconds"]
    for r in scaling:
        lines.append(
            f"| {r['workers']} | {r['pairs']:,} | {r['seconds']:.1f} | {t1 / r['seconds']:.2f} | "
            f"{r['moved_bytes'] / 1e6:.0f} | {', '.join(f'{p / gb:.2f}' for p in r['peak'])} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
