"""Training and decoding benchmark: tinygrad_tx against torch eager, side by side in one process.

Run `tinygrad-tx bench` (or `python benchmarks/bench.py`). Needs torch, a test-only dependency:
`pip install -e '.[test]'`. Prints a markdown table and writes JSON.

What is measured, per configuration (encoder-decoder, post-LN, no dropout, Adam, label-smoothed
cross-entropy, random token batches with padding):
- median ms per training step of each framework, steps alternating after warm-up, and the ratio;
- tokens per second (target tokens per step / median step time);
- peak memory of a training step above the steady state (parameters, optimizer state, buffers),
  for each framework in a subprocess of its own;
- model FLOP utilisation: 3 x forward matmul FLOPs per step / step time, against the float32 GEMM
  rate NumPy reaches in the same run;
- greedy decoding of 64 sentences with and without the key/value cache.

With `--seq 32 64 128 256` it also runs the `base` model at each source and target length, the batch
shrinking so that tokens per step stay constant (64 x 32 = 2048), so the table shows how attention's
T^2 cost grows in each framework: step time, peak step memory, their ratios, and greedy decoding
tokens/s with the cache (a batch of as many sentences as the training batch, max_len = the length).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace

from tinygrad_tx import backend, random
from tinygrad_tx.serialization import atomic_write_json


@dataclass
class BenchConfig:
    name: str
    d_model: int
    n_heads: int
    d_ff: int
    n_layers: int
    batch: int
    seq: int
    vocab: int


CONFIGS = {
    "small": BenchConfig("small", 128, 4, 512, 2, 64, 24, 128),
    "base": BenchConfig("base", 256, 8, 1024, 3, 64, 32, 1000),
    "paper": BenchConfig("paper", 512, 8, 2048, 6, 32, 32, 8000),
}
PAD, BOS, EOS = 0, 1, 2


def forward_matmul_flops(c: BenchConfig) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward pass's matrix products."""
    tokens = c.batch * c.seq
    projections = 4 * 2 * tokens * c.d_model * c.d_model             # W^Q, W^K, W^V, W^O
    attention = projections + 2 * 2 * c.batch * c.seq * c.seq * c.d_model   # + Q K^T and A V
    ffn = 2 * 2 * tokens * c.d_model * c.d_ff
    encoder = c.n_layers * (attention + ffn)
    decoder = c.n_layers * (2 * attention + ffn)        # self- and cross-attention
    generator = 2 * tokens * c.d_model * c.vocab
    return encoder + decoder + generator


def make_batch(c: BenchConfig, seed=0):
    """Random source/target ids with ragged lengths (padding at the end), as host int64 arrays."""
    rng = random.generator(seed)
    src = rng.integers(3, c.vocab, (c.batch, c.seq))
    tgt = rng.integers(3, c.vocab, (c.batch, c.seq + 1))
    tgt[:, 0] = BOS
    for row in range(c.batch):
        n_src, n_tgt = rng.integers(c.seq // 2, c.seq + 1), rng.integers(c.seq // 2, c.seq + 1)
        src[row, n_src:] = PAD
        tgt[row, n_tgt] = EOS
        tgt[row, n_tgt + 1:] = PAD
    return src, tgt[:, :-1], tgt[:, 1:]


# ---------------------------------------------------------------------------- the two frameworks
def tx_setup(c: BenchConfig, seed=0):
    from tinygrad_tx.models.transformer import Transformer, TransformerConfig

    import tinygrad_tx as tx
    tx.manual_seed(seed)
    model = Transformer(TransformerConfig(src_vocab=c.vocab, tgt_vocab=c.vocab, d_model=c.d_model, n_heads=c.n_heads,
                                          d_ff=c.d_ff, n_layers=c.n_layers, dropout=0.0, pad_id=PAD))
    opt = tx.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    src, tgt_in, tgt_out = (tx.Tensor(a) for a in make_batch(c, seed))

    def step():
        logits = model(src, tgt_in)
        loss = tx.functional.cross_entropy(logits, tgt_out, ignore_index=PAD, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return model, step


def torch_setup(c: BenchConfig, seed=0):
    import torch
    torch.manual_seed(seed)

    class TorchSeq2Seq(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.src_embed = torch.nn.Embedding(c.vocab, c.d_model, padding_idx=PAD)
            self.tgt_embed = torch.nn.Embedding(c.vocab, c.d_model, padding_idx=PAD)
            self.transformer = torch.nn.Transformer(c.d_model, c.n_heads, c.n_layers, c.n_layers, c.d_ff,
                                                    dropout=0.0, batch_first=True)
            self.generator = torch.nn.Linear(c.d_model, c.vocab)
            pe = torch.zeros(512, c.d_model)
            pos = torch.arange(512).unsqueeze(1)
            div = torch.exp(torch.arange(0, c.d_model, 2) * (-torch.log(torch.tensor(10000.0)) / c.d_model))
            pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
            self.register_buffer("pe", pe)

        def forward(self, src, tgt):
            scale = c.d_model ** 0.5
            s = self.src_embed(src) * scale + self.pe[: src.shape[1]]
            t = self.tgt_embed(tgt) * scale + self.pe[: tgt.shape[1]]
            causal = self.transformer.generate_square_subsequent_mask(tgt.shape[1])
            h = self.transformer(s, t, tgt_mask=causal, src_key_padding_mask=src == PAD,
                                 tgt_key_padding_mask=tgt == PAD, memory_key_padding_mask=src == PAD)
            return self.generator(h)

    model = TorchSeq2Seq()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    src, tgt_in, tgt_out = (torch.tensor(a) for a in make_batch(c, seed))
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=0.1)

    def step():
        logits = model(src, tgt_in)
        loss = loss_fn(logits.reshape(-1, c.vocab), tgt_out.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return model, step


# ---------------------------------------------------------------------------- measurements
def gemm_gflops(n=1024, repeats=7):
    """The float32 GEMM rate NumPy reaches on this machine now (median of repeats)."""
    rng = random.generator(1)
    a = rng.standard_normal((n, n)).astype(backend.float32)
    b = rng.standard_normal((n, n)).astype(backend.float32)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def time_training(c: BenchConfig, steps: int, warmup: int):
    """Alternate tinygrad_tx and torch steps; return the lists of step times in seconds."""
    _, tx_step = tx_setup(c)
    _, torch_step = torch_setup(c)
    for _ in range(warmup):
        tx_step()
        torch_step()
    tx_times, torch_times = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        tx_step()
        t1 = time.perf_counter()
        torch_step()
        t2 = time.perf_counter()
        tx_times.append(t1 - t0)
        torch_times.append(t2 - t1)
    return tx_times, torch_times


def _status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_above_steady(step, steps: int) -> tuple[int, int]:
    """(peak bytes above the steady state while `step()` runs `steps` times, steady resident bytes).

    The kernel's peak-RSS mark is reset first (`5 > /proc/self/clear_refs`), so what ran before
    does not count; the peak over the steps is read back, minus the resident memory before them.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    for _ in range(steps):
        step()
    peak = _status_kb("VmHWM")
    return (peak - before) * 1024, before * 1024


def peak_memory_child(framework: str, config_json: str, steps: int) -> None:
    """In a fresh process: how far training steps raise resident memory above the steady state.

    One warm-up step first (it allocates the optimizer state, the gradients and the BLAS thread
    buffers, which stay), then `peak_above_steady` over the next steps.
    """
    c = BenchConfig(**json.loads(config_json))
    setup = tx_setup if framework == "tinygrad_tx" else torch_setup
    _, step = setup(c)
    step()
    peak, steady = peak_above_steady(step, steps)
    print(json.dumps({"peak_step_bytes": peak, "steady_bytes": steady}))


def peak_memory(framework: str, c: BenchConfig, steps: int = 2) -> int:
    out = subprocess.run([sys.executable, "-m", "tinygrad_tx.app.bench", "--memory-child", framework,
                          json.dumps(asdict(c)), str(steps)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_step_bytes"]


def time_decoding(c: BenchConfig, sentences=64, max_len=None, repeats=3, uncached=True):
    """Greedy decoding of `sentences` sources with and without the key/value cache (seconds, median).

    Returns (cached seconds, uncached seconds, whether both gave the same tokens); with uncached=False
    only the cached run is made and the last two are None."""
    from tinygrad_tx.models.decoding import greedy_decode

    import tinygrad_tx as tx
    model, _ = tx_setup(c)
    model.eval()
    src = tx.Tensor(make_batch(replace(c, batch=sentences), seed=1)[0])
    max_len = max_len or c.seq
    results = {}
    for use_cache in (True, False) if uncached else (True,):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            # eos_id=-1 never occurs: every row decodes the full max_len, so both runs do equal work
            out = greedy_decode(model, src, max_len=max_len, bos_id=BOS, eos_id=-1, use_cache=use_cache)
            times.append(time.perf_counter() - t0)
        results["cached" if use_cache else "uncached"] = (statistics.median(times), out.numpy())
    if not uncached:
        return results["cached"][0], None, None
    same = bool((results["cached"][1] == results["uncached"][1]).all())
    return results["cached"][0], results["uncached"][0], same


def length_scaling(lengths, steps, warmup, config="base", memory=True, decode=True):
    """`config` at each source/target length, with batch * length held at the config's tokens per step."""
    base = CONFIGS[config]
    tokens = base.batch * base.seq
    rows = []
    for seq in lengths:
        c = replace(base, name=f"{config}@{seq}", seq=seq, batch=max(1, tokens // seq))
        tx_times, torch_times = time_training(c, steps, warmup)
        tx_ms, torch_ms = 1e3 * statistics.median(tx_times), 1e3 * statistics.median(torch_times)
        row = {"config": asdict(c), "steps": steps, "tx_ms": tx_ms, "torch_ms": torch_ms, "ratio": tx_ms / torch_ms}
        if memory:
            row["tx_peak_mb"] = peak_memory("tinygrad_tx", c) / 2 ** 20
            row["torch_peak_mb"] = peak_memory("torch", c) / 2 ** 20
            row["memory_ratio"] = row["tx_peak_mb"] / max(row["torch_peak_mb"], 1e-9)
        if decode:
            cached_s = time_decoding(c, sentences=c.batch, repeats=1, uncached=False)[0]
            row["decode_cached_tokens_per_s"] = c.batch * seq / cached_s
        rows.append(row)
        print(f"  seq {seq} (batch {c.batch}): tinygrad_tx {tx_ms:.1f} ms, torch {torch_ms:.1f} ms, "
              f"ratio {tx_ms / torch_ms:.2f}", file=sys.stderr, flush=True)
    return rows


def run(configs, steps, warmup, memory=True, decode=True, decode_repeats=3):
    gflops = gemm_gflops()
    load = load_average()
    rows = []
    for name in configs:
        c = CONFIGS[name]
        tx_times, torch_times = time_training(c, steps, warmup)
        tx_ms, torch_ms = 1e3 * statistics.median(tx_times), 1e3 * statistics.median(torch_times)
        tokens = c.batch * c.seq
        step_flops = 3 * forward_matmul_flops(c)
        row = {"config": asdict(c), "steps": steps, "tx_ms": tx_ms, "torch_ms": torch_ms, "ratio": tx_ms / torch_ms,
               "tx_tokens_per_s": tokens / tx_ms * 1e3, "torch_tokens_per_s": tokens / torch_ms * 1e3,
               "step_gflop": step_flops / 1e9, "tx_mfu": step_flops / (tx_ms / 1e3) / (gflops * 1e9),
               "torch_mfu": step_flops / (torch_ms / 1e3) / (gflops * 1e9)}
        if memory:
            row["tx_peak_mb"] = peak_memory("tinygrad_tx", c) / 2 ** 20
            row["torch_peak_mb"] = peak_memory("torch", c) / 2 ** 20
        if decode:
            cached, uncached, same = time_decoding(c, repeats=decode_repeats)
            row.update(decode_cached_s=cached, decode_uncached_s=uncached, decode_speedup=uncached / cached,
                       decode_same_tokens=same)
        rows.append(row)
        print(f"  {name}: tinygrad_tx {tx_ms:.1f} ms, torch {torch_ms:.1f} ms, ratio {tx_ms / torch_ms:.2f}",
              file=sys.stderr, flush=True)
    return {"gemm_gflops": gflops, "machine": machine_description(), "load_average": [load, load_average()],
            "rows": rows}


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, to print beside timings on a shared machine."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def machine_description():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores, {cpu}"


def markdown(result) -> str:
    load = result.get("load_average", ["?", "?"])
    lines = [(f"Machine: {result['machine']}; NumPy float32 GEMM {result['gemm_gflops']:.0f} GFLOP/s in this run; "
             f"load average {load[0]} at the start, {load[1]} at the end.")]
    if result["rows"]:
        lines += ["", ("| config | tinygrad_tx ms/step | torch ms/step | ratio | tx tokens/s | torch tokens/s | tx MFU "
                  "| torch MFU | tx peak MB | torch peak MB | greedy 64 cached s | uncached s | cache speed-up |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        mem = (f"{r['tx_peak_mb']:.0f} | {r['torch_peak_mb']:.0f}" if "tx_peak_mb" in r else "- | -")
        dec = (f"{r['decode_cached_s']:.2f} | {r['decode_uncached_s']:.2f} | {r['decode_speedup']:.2f}x"
               if "decode_cached_s" in r else "- | - | -")
        lines.append(f"| {r['config']['name']} | {r['tx_ms']:.1f} | {r['torch_ms']:.1f} | {r['ratio']:.2f} | "
                     f"{r['tx_tokens_per_s']:.0f} | {r['torch_tokens_per_s']:.0f} | {100 * r['tx_mfu']:.0f}% | "
                     f"{100 * r['torch_mfu']:.0f}% | {mem} | {dec} |")
    if result.get("length_rows"):
        lines += ["", length_markdown(result["length_rows"])]
    return "\n".join(lines)


def length_markdown(rows) -> str:
    c = rows[0]["config"]
    name = c["name"].split("@")[0]
    lines = [f"`{name}` at each length, batch x length = {c['batch'] * c['seq']} tokens per step:", "",
             ("| seq | batch | tinygrad_tx ms/step | torch ms/step | time ratio | tx peak MB | torch peak MB "
             "| memory ratio | tx greedy tokens/s (cached) |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = (f"{r['tx_peak_mb']:.0f} | {r['torch_peak_mb']:.0f} | {r['memory_ratio']:.2f}"
               if "tx_peak_mb" in r else "- | - | -")
        dec = f"{r['decode_cached_tokens_per_s']:.0f}" if "decode_cached_tokens_per_s" in r else "-"
        lines.append(f"| {r['config']['seq']} | {r['config']['batch']} | {r['tx_ms']:.1f} | {r['torch_ms']:.1f} | "
                     f"{r['ratio']:.2f} | {mem} | {dec} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="tinygrad-tx bench", description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS),
                   help="configurations to compare (default: small base paper, or none when --seq is given)")
    p.add_argument("--seq", nargs="+", type=int, metavar="LENGTH",
                   help="also run --seq-config at each source/target LENGTH, tokens per step held constant")
    p.add_argument("--seq-config", default="base", choices=sorted(CONFIGS))
    p.add_argument("--steps", type=int, default=10, help="timed steps per framework (default 10)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-decode", action="store_true", help="skip the greedy-decoding benchmark")
    p.add_argument("--decode-repeats", type=int, default=3, help="greedy decoding runs per setting (median)")
    p.add_argument("--smoke", action="store_true", help="quick check for CI: small config, 2 steps")
    p.add_argument("--json", default="benchmarks/results.json", help="where to write the JSON results")
    p.add_argument("--profile", nargs="+", metavar="CONFIG", choices=sorted(CONFIGS),
                   help="instead of the comparison: profile a training step of each CONFIG per primitive and "
                        "with cProfile, and write the markdown to --profile-out")
    p.add_argument("--profile-out", default="benchmarks/profile.md")
    p.add_argument("--memory-child", nargs=3, metavar=("FRAMEWORK", "CONFIG_JSON", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        framework, config, steps = args.memory_child
        return peak_memory_child(framework, config, int(steps))
    if args.profile:
        from .profiler import write_report
        command = "tinygrad-tx bench " + " ".join(argv if argv is not None else sys.argv[1:])
        print(write_report(args.profile, args.profile_out, command=command))
        return None
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("tinygrad-tx bench compares against torch: pip install -e '.[test]' (torch==2.13.0)")
    if args.seq and any(n < 1 for n in args.seq):
        p.error(f"--seq: lengths must be positive, got {args.seq}")
    if args.configs is None:
        args.configs = [] if args.seq else ["small", "base", "paper"]
    if args.smoke:
        args.configs, args.steps, args.warmup = ["small"], 2, 1
    result = run(args.configs, args.steps, args.warmup, memory=not args.no_memory, decode=not args.no_decode,
                 decode_repeats=1 if args.smoke else args.decode_repeats)
    if args.seq:
        result["length_rows"] = length_scaling(args.seq, args.steps, args.warmup, args.seq_config,
                                               memory=not args.no_memory, decode=not args.no_decode)
        result["load_average"][1] = load_average()
    result["command"] = "tinygrad-tx bench " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(result)
    print(table)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
