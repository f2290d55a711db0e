"""Adam's step on the CPU against torch.optim.Adam (its default foreach path), side by side in one process.

    python benchmarks/optim_bench.py                        # small, base, paper; medians of 15 steps
    python benchmarks/optim_bench.py --configs base --repeats 31
    python benchmarks/optim_bench.py --in-training --configs paper --repeats 3    # inside training steps

For each benchmark configuration the parameters have the shapes of that Transformer's parameters
(float32, random values and gradients). Steps alternate between the variants, and the table gives
median milliseconds per step:
  - tinygrad_tx: tx.optim.Adam as it runs (chunks on tx.get_num_threads() threads: $TX_NUM_THREADS,
    else the cores);
  - 1 thread: the same with one thread;
  - whole arrays: one thread, every pass over a whole parameter (chunks as large as the largest
    parameter), the way the update ran before it was cut into chunks;
  - torch: torch.optim.Adam with torch's own threads (torch.get_num_threads()).
With --in-training, each variant updates the benchmark's model (ours, and torch.nn.Transformer as the
training benchmark builds it) after a real forward and backward pass, with gradients fresh from backward.
"""
import argparse
import statistics
import time

# isort: off
import tinygrad_tx as tx      # before NumPy and torch: it sets OPENBLAS_THREAD_TIMEOUT (backend.py), which
import numpy as np            # lets tinygrad_tx use its threads (threads.py)
import torch
# isort: on
from tinygrad_tx.models.transformer import Transformer, TransformerConfig

from tinygrad_tx import optim
from tinygrad_tx.app.bench import CONFIGS, PAD, load_average, machine_description, make_batch, torch_setup

HYPER = {"lr": 1e-4, "betas": (0.9, 0.98), "eps": 1e-9}         # as the training benchmark's Adam


def parameter_shapes(name):
    c = CONFIGS[name]
    model = Transformer(TransformerConfig(src_vocab=c.vocab, tgt_vocab=c.vocab, d_model=c.d_model, n_heads=c.n_heads,
                                          d_ff=c.d_ff, n_layers=c.n_layers, dropout=0.0, pad_id=0))
    return [p.shape for p in model.parameters()]


def ours(values, grads, threads=None, chunk_bytes=None):
    """A step function for tx.optim.Adam with a given thread count and chunk size (None: the defaults)."""
    params = [tx.nn.Parameter(tx.Tensor(v.copy())) for v in values]
    for p, g in zip(params, grads):
        p.grad = g
    return step_with(optim.Adam(params, **HYPER), threads, chunk_bytes)


def step_with(opt, threads=None, chunk_bytes=None):
    """opt.step with a given thread count and chunk size (None: the defaults)."""
    def step():
        default_chunk = optim._CHUNK_BYTES
        try:
            tx.set_num_threads(threads)
            optim._CHUNK_BYTES = chunk_bytes or default_chunk
            opt.step()
        finally:
            tx.set_num_threads(None)
            optim._CHUNK_BYTES = default_chunk
    return step


def theirs(values, grads):
    params = [torch.tensor(v, requires_grad=True) for v in values]
    for p, g in zip(params, grads):
        p.grad = torch.from_numpy(g)
    opt = torch.optim.Adam(params, **HYPER)
    return opt.step


def measure(name, repeats):
    rng = np.random.default_rng(0)
    shapes = parameter_shapes(name)
    values = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    largest = max(v.nbytes for v in values)
    variants = {"tinygrad_tx": ours(values, grads), "1 thread": ours(values, grads, threads=1),
                "whole arrays": ours(values, grads, threads=1, chunk_bytes=largest),
                "torch": theirs(values, grads)}
    times = {key: [] for key in variants}
    for repeat in range(repeats + 1):                 # the first round is warm-up (state is allocated)
        for key, step in variants.items():
            start = time.perf_counter()
            step()
            if repeat:
                times[key].append(time.perf_counter() - start)
    ms = {key: 1e3 * statistics.median(t) for key, t in times.items()}
    return {"config": name, "tensors": len(shapes), "parameters": sum(v.size for v in values), **ms}


def measure_in_training(name, repeats):
    """Each optimizer's step after a real forward and backward pass of the benchmark's model (the
    tinygrad_tx Transformer, and torch.nn.Transformer as the training benchmark builds it)."""
    c = CONFIGS[name]
    tx.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab=c.vocab, tgt_vocab=c.vocab, d_model=c.d_model, n_heads=c.n_heads,
                                          d_ff=c.d_ff, n_layers=c.n_layers, dropout=0.0, pad_id=PAD))
    opt = optim.Adam(model.parameters(), **HYPER)
    batch = make_batch(c)
    src, tgt_in, tgt_out = (tx.Tensor(a) for a in batch)

    def ours_after_backward(step):
        def run():
            loss = tx.functional.cross_entropy(model(src, tgt_in), tgt_out, ignore_index=PAD, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            start = time.perf_counter()
            step()
            return time.perf_counter() - start
        return run

    t_model = torch_setup(c)[0]
    t_opt = torch.optim.Adam(t_model.parameters(), **HYPER)
    t_src, t_tgt_in, t_tgt_out = (torch.tensor(a) for a in batch)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=0.1)

    def theirs_after_backward():
        loss = loss_fn(t_model(t_src, t_tgt_in).reshape(-1, c.vocab), t_tgt_out.reshape(-1))
        t_opt.zero_grad()
        loss.backward()
        start = time.perf_counter()
        t_opt.step()
        return time.perf_counter() - start

    largest = max(p.data.nbytes for p in model.parameters())
    variants = {"tinygrad_tx": ours_after_backward(step_with(opt)),
                "1 thread": ours_after_backward(step_with(opt, threads=1)),
                "whole arrays": ours_after_backward(step_with(opt, threads=1, chunk_bytes=largest)),
                "torch": theirs_after_backward}
    times = {key: [] for key in variants}
    for repeat in range(repeats + 1):                 # the first round is warm-up
        for key, run in variants.items():
            elapsed = run()
            if repeat:
                times[key].append(elapsed)
    ms = {key: 1e3 * statistics.median(t) for key, t in times.items()}
    return {"config": name, "tensors": len(opt.params), "parameters": sum(p.size for p in opt.params), **ms}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["small", "base", "paper"])
    p.add_argument("--repeats", type=int, default=15, help="timed steps per variant (medians)")
    p.add_argument("--in-training", action="store_true", help="time each step after a real forward and backward pass")
    args = p.parse_args(argv)
    before = load_average()
    rows = [(measure_in_training if args.in_training else measure)(name, args.repeats) for name in args.configs]
    print(f"Machine: {machine_description()}; tinygrad_tx threads {tx.get_num_threads()}, torch threads "
          f"{torch.get_num_threads()}; load average {before} at the start, {load_average()} at the end; "
          f"medians of {args.repeats} steps, alternating{' (inside training steps)' if args.in_training else ''}.\n")
    print("| config | tensors | parameters | tinygrad_tx ms | 1 thread ms | whole arrays ms | torch ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['tensors']} | {r['parameters'] / 1e6:.1f}M | {r['tinygrad_tx']:.1f} | "
              f"{r['1 thread']:.1f} | {r['whole arrays']:.1f} | {r['torch']:.1f} | {r['tinygrad_tx'] / r['torch']:.2f} |")

if __name__ == "__main__":
    main()
