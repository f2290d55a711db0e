"""Data-parallel scaling on one machine, and what the allreduce costs on a network.

    python benchmarks/distributed_bench.py                       # small and base, 5 repeats (~15 min on 2 cores)
    python benchmarks/distributed_bench.py --configs small --repeats 3 --steps 20
    python benchmarks/distributed_bench.py --sizes-only          # allreduce bytes per config, on paper

Each repeat trains the same global batches (numbers-en-fr, 64 sentences per batch) under three layouts
of the same 2 cores, one after another so that they share the machine's load at that moment:

    1 rank  x 1 BLAS thread      mpirun -np 1, OPENBLAS_NUM_THREADS=1
    1 rank  x 2 BLAS threads     mpirun -np 1, OPENBLAS_NUM_THREADS=2
    2 ranks x 1 BLAS thread      mpirun -np 2, OPENBLAS_NUM_THREADS=1
    the same, yielding           ... and OMPI_MCA_mpi_yield_when_idle=1

and reports medians of steps/s (optimizer steps: one global batch each), tokens/s (target tokens of the
global batch per second) and the share of rank 0's step time spent in the gradient allreduce (waiting
for the other rank included). Validation is not timed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# (ranks, BLAS threads per rank, waits that yield the core): Open MPI polls while it waits; with
# mpi_yield_when_idle it calls sched_yield() between polls, for machines with more processes than cores.
LAYOUTS = [(1, 1, False), (1, 2, False), (2, 1, False), (2, 1, True)]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
RING_LINKS_GBIT = (10, 100)


# ---------------------------------------------------------------------------- one measurement (under mpirun)
def worker(args) -> None:
    from tinygrad_tx import distributed as dist
    from tinygrad_tx.app.config import TrainConfig
    from tinygrad_tx.app.train import Trainer

    dist.init()
    spent = [0.0]
    average = dist.average_gradients

    def timed_average(*a, **k):                 # rank 0's time in the allreduce, waiting included
        start = time.perf_counter()
        result = average(*a, **k)
        spent[0] += time.perf_counter() - start
        return result

    dist.average_gradients = timed_average
    cfg = TrainConfig(task=None, data=args.train, valid=args.valid, config=args.config,
                      batch_size=args.batch_size, eval_every=10 ** 9)
    trainer = Trainer(cfg, args.out, progress=False, log=lambda m: None)
    trainer.run(steps=args.warmup)
    seconds, spent[0] = trainer.state.seconds, 0.0
    record = trainer.run(steps=args.warmup + args.steps)
    step_seconds = (trainer.state.seconds - seconds) / args.steps
    if dist.rank() == 0:
        print(json.dumps({"ranks": dist.world_size(), "steps_per_s": 1.0 / step_seconds,
                          "tokens_per_s": record["tokens_per_s"],
                          "allreduce_share": spent[0] / args.steps / step_seconds}), flush=True)


def run_layout(ranks, threads, yielding, args, data) -> dict:
    out = tempfile.mkdtemp(prefix="tx-dist-bench-")
    command = ["mpirun", "-np", str(ranks), "--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        command.append("--allow-run-as-root")
    command += [sys.executable, os.path.abspath(__file__), "--worker", "--config", args.config_now,
                "--train", data["train"], "--valid", data["valid"], "--out", out, "--steps", str(args.steps),
                "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    env = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
    if yielding:
        env["OMPI_MCA_mpi_yield_when_idle"] = "1"
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(args) -> None:
    from tinygrad_tx.app import tasks

    folder = tempfile.mkdtemp(prefix="tx-dist-data-")
    data = {"train": os.path.join(folder, "train.tsv"), "valid": os.path.join(folder, "valid.tsv")}
    tasks.write_tsv(tasks.load_task("numbers-en-fr", "train", size=20000), data["train"])
    tasks.write_tsv(tasks.load_task("numbers-en-fr", "valid", size=8), data["valid"])
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; numbers-en-fr, {args.batch_size} sentences per global batch, "
          f"{args.steps} timed steps after {args.warmup}, {args.repeats} repeats (medians)\n")
    print("| config | ranks x BLAS threads | steps/s | tokens/s | vs 1x1 | allreduce share | runs (steps/s) |")
    print("|---|---|---|---|---|---|---|")
    for config in args.configs:
        args.config_now = config
        runs = {layout: [] for layout in LAYOUTS}
        for _ in range(args.repeats):
            for layout in LAYOUTS:
                runs[layout].append(run_layout(*layout, args, data))
        base = statistics.median(r["steps_per_s"] for r in runs[LAYOUTS[0]])
        for (ranks, threads, yielding), records in runs.items():
            steps = statistics.median(r["steps_per_s"] for r in records)
            tokens = statistics.median(r["tokens_per_s"] for r in records)
            share = statistics.median(r["allreduce_share"] for r in records) if ranks > 1 else None
            layout = f"{ranks} x {threads}" + (", yielding" if yielding else "")
            print(f"| {config} | {layout} | {steps:.2f} | {tokens:.0f} | {steps / base:.2f} | "
                  f"{'-' if share is None else f'{100 * share:.0f}%'} | "
                  f"{', '.join(format(r['steps_per_s'], '.2f') for r in records)} |", flush=True)
    shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------- on paper
def allreduce_sizes(vocab_sizes) -> None:
    """Parameters and allreduce bytes per step for each preset, and a ring allreduce's time on a network."""
    from tinygrad_tx.models.transformer import Transformer

    from tinygrad_tx.app.config import MODEL_PRESETS, TrainConfig

    print("| config | vocab (src, tgt) | parameters | allreduce bytes per step (float32) | "
          + " | ".join(f"ring, N={n}, {g} Gbit/s" for g in RING_LINKS_GBIT for n in (2, 8)) + " |")
    print("|---|---|---|---|" + "---|" * (2 * len(RING_LINKS_GBIT)))
    for config in MODEL_PRESETS:
        for src_vocab, tgt_vocab in vocab_sizes:
            params = list(Transformer(TrainConfig(config=config).model_config(src_vocab, tgt_vocab)).parameters())
            count = sum(p.size for p in params)
            # the one buffer of average_gradients: the gradients, a flag per tensor, and the weight
            flat_bytes = 4 * (count + len(params) + 1)
            cells = []
            for gbit in RING_LINKS_GBIT:
                for n in (2, 8):
                    sent = 2 * (n - 1) / n * flat_bytes         # bytes each rank sends (and receives)
                    cells.append(f"{1000 * sent / (gbit * 1e9 / 8):.1f} ms")
            print(f"| {config} | {src_vocab}, {tgt_vocab} | {count / 1e6:.2f} M | {flat_bytes / 1e6:.1f} MB | "
                  + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["small", "base"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sizes-only", action="store_true", help="print the allreduce sizes and stop")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--train", help=argparse.SUPPRESS)
    p.add_argument("--valid", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.sizes_only:
        if shutil.which("mpirun") is None:
            sys.exit("needs Open MPI and mpi4py: apt-get install openmpi-bin libopenmpi-dev && pip install mpi4py")
        measure(args)
        print()
    allreduce_sizes(vocab_sizes=(_numbers_vocab(), (37000, 37000)))


def _numbers_vocab() -> tuple[int, int]:
    """The vocabulary sizes of the demo's task, numbers-en-fr with word tokens."""
    from tinygrad_tx.app import tasks
    from tinygrad_tx.app.vocab import PairVocab
    vocab = PairVocab.build(tasks.load_task("numbers-en-fr", "train"), "word")
    return len(vocab.src), len(vocab.tgt)


if __name__ == "__main__":
    main()
