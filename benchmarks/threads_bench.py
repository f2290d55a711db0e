"""What the CPU worker threads (tinygrad_tx/threads.py) give: one training step with 1 thread and with
N, alternating in one process, per primitive, beside torch eager with its own threads.

    python benchmarks/threads_bench.py --configs base paper --steps 7

For each configuration it prints the median step time with 1 and with N threads (N: the machine's
cores, or --threads) and torch's, then per primitive the median forward + backward milliseconds per
step with 1 and with N threads. Threads pay only when a core is free: run it on an idle machine,
and read the load average printed beside it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import tinygrad_tx as tx
from tinygrad_tx.app.bench import CONFIGS, load_average, torch_setup, tx_setup
from tinygrad_tx.app.profiler import PrimitiveTimer


def measure(config: str, steps: int, warmup: int, n_threads: int) -> dict:
    """Median step ms (1 thread, n threads, torch) and per-primitive ms per step for 1 and n threads."""
    _, tx_step = tx_setup(CONFIGS[config])
    _, torch_step = torch_setup(CONFIGS[config])
    times = {"1": [], str(n_threads): [], "torch": []}
    per_op = {"1": {}, str(n_threads): {}}
    for i in range(warmup + steps):
        for count in (1, n_threads):
            tx.set_num_threads(count)
            with PrimitiveTimer() as timer:
                t0 = time.perf_counter()
                tx_step()
                elapsed = time.perf_counter() - t0
            if i >= warmup:
                times[str(count)].append(elapsed)
                for op, phases in timer.stats.items():
                    ms = 1e3 * (phases["forward"]["seconds"] + phases["backward"]["seconds"])
                    per_op[str(count)].setdefault(op, []).append(ms)
        t0 = time.perf_counter()
        torch_step()
        if i >= warmup:
            times["torch"].append(time.perf_counter() - t0)
    tx.set_num_threads(None)
    return {"step_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
            "op_ms": {k: {op: statistics.median(v) for op, v in ops.items()} for k, ops in per_op.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["base", "paper"], choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=max(2, min(os.cpu_count() or 2, 8)))
    args = parser.parse_args(argv)
    n = str(args.threads)
    print(f"load average at the start: {load_average()}")
    for config in args.configs:
        r = measure(config, args.steps, args.warmup, args.threads)
        s = r["step_ms"]
        print(f"\n### `{config}`: step {s['1']:.1f} ms with 1 thread, {s[n]:.1f} ms with {n} "
              f"({s['1'] / s[n]:.2f}x); torch {s['torch']:.1f} ms (ratio {s[n] / s['torch']:.2f} with {n} threads)\n")
        print(f"| primitive | 1 thread ms | {n} threads ms | speed-up |")
        print("|---|---|---|---|")
        ops = sorted(r["op_ms"]["1"], key=lambda op: -r["op_ms"]["1"][op])
        for op in ops:
            one, many = r["op_ms"]["1"][op], r["op_ms"][n].get(op, float("nan"))
            if one >= 1.0:
                print(f"| {op} | {one:.1f} | {many:.1f} | {one / many:.2f}x |")
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
