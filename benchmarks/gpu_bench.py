"""GPU benchmark: tinygrad_tx on CuPy against torch eager CUDA, training steps in one process.

    python benchmarks/gpu_bench.py                         # paper and large, 20 timed steps each
    python benchmarks/gpu_bench.py --configs paper --steps 5
    python benchmarks/gpu_bench.py --device cpu --configs small --steps 2   # dry run of the harness, no GPU

Needs an NVIDIA GPU, CuPy (`pip install -e '.[gpu]'`) and torch built with CUDA. The model, batch
and training step are tinygrad_tx/bench.py's (post-LN encoder-decoder, no dropout, Adam, label-smoothed
cross-entropy, random ragged batches), so CPU and GPU numbers describe the same work.

Per configuration:
- median ms per training step of tinygrad_tx with the fused kernels, of tinygrad_tx with the plain
  CuPy code (kernels.use_fused(False)) and of torch, steps alternating after warm-up; each step ends
  with a device synchronisation (loss.item() also waits for the GPU);
- the ratios to torch (target on `paper`: fused tinygrad_tx / torch <= 1.5), tokens/s and the
  matmul TFLOP/s achieved (3 x forward matmul FLOPs per step);
- peak GPU memory of one training step, model and Adam state included: CuPy's memory pool (bytes
  in use at the peak, followed by a memory hook, and bytes the pool holds afterwards) against torch's
  max_memory_allocated and max_memory_reserved.
Both frameworks run float32 without TF32 (torch's default; CuPy's unless CUPY_TF32=1).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict

from tinygrad_tx import backend, kernels
from tinygrad_tx.serialization import atomic_write_json
from tinygrad_tx.app.bench import CONFIGS, BenchConfig, forward_matmul_flops, torch_setup, tx_setup

LARGE = BenchConfig("large", d_model=1024, n_heads=16, d_ff=4096, n_layers=6, batch=64, seq=64, vocab=8000)
GPU_CONFIGS = {**CONFIGS, "large": LARGE}
MB = 2 ** 20


# ---------------------------------------------------------------------------- the device
def use_device(device: str):
    """Make `device` the default of both frameworks, so that bench.py's setups build everything there."""
    import torch
    if device == "cuda":
        if not backend.cuda_available():
            raise SystemExit(backend.CUDA_HINT)
        if not torch.cuda.is_available():
            raise SystemExit("torch cannot see a GPU: install a CUDA build of torch (torch==2.13.0)")
    os.environ["TX_DEVICE"] = device          # read by every tinygrad_tx tensor made without a device
    torch.set_default_device(device)


def synchronize(device: str):
    """Wait until both frameworks' GPU work is done (each step is timed to completion)."""
    if device == "cuda":
        import torch
        backend.get_xp("cuda").cuda.Device().synchronize()
        torch.cuda.synchronize()


def describe(device: str) -> dict:
    import torch
    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "torch_allow_tf32": torch.backends.cuda.matmul.allow_tf32, "CUPY_TF32": os.environ.get("CUPY_TF32", "0")}
    if device == "cuda":
        cp = backend.get_xp("cuda")
        info.update(gpu=torch.cuda.get_device_name(), cupy=cp.__version__,
                    cuda_runtime=cp.cuda.runtime.runtimeGetVersion(), cuda_driver=cp.cuda.runtime.driverGetVersion())
    return info


# ---------------------------------------------------------------------------- time
def time_training(c: BenchConfig, device: str, steps: int, warmup: int, plain: bool):
    """Alternate the contestants' steps; return {name: [seconds per step]}."""
    _, tx_step = tx_setup(c)
    _, torch_step = torch_setup(c)

    def tx_plain_step():
        with kernels.use_fused(False):
            return tx_step()

    contestants = {"tx": tx_step, "torch": torch_step}
    if plain:
        contestants["tx_plain"] = tx_plain_step
    for _ in range(warmup):
        for step in contestants.values():
            step()
    times = {name: [] for name in contestants}
    for _ in range(steps):
        for name, step in contestants.items():
            synchronize(device)
            t0 = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return times, tx_step, torch_step, tx_plain_step


# ---------------------------------------------------------------------------- memory
def cupy_step_memory(step) -> dict:
    """Peak bytes in CuPy's pool during one step: in use (followed by a hook) and held afterwards."""
    cp = backend.get_xp("cuda")
    pool = cp.get_default_memory_pool()

    class PeakInUse(cp.cuda.MemoryHook):
        name = "PeakInUse"

        def __init__(self):
            self.in_use = self.peak = pool.used_bytes()

        def malloc_postprocess(self, **kw):
            self.in_use += kw["mem_size"]
            self.peak = max(self.peak, self.in_use)

        def free_postprocess(self, **kw):
            self.in_use -= kw["mem_size"]

    synchronize("cuda")
    pool.free_all_blocks()                      # keep only what is in use: the model and Adam state
    hook = PeakInUse()
    with hook:
        step()
        synchronize("cuda")
    return {"peak_in_use_mb": hook.peak / MB, "pool_held_mb": pool.total_bytes() / MB}


def torch_step_memory(step) -> dict:
    import torch
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return {"max_allocated_mb": torch.cuda.max_memory_allocated() / MB,
            "max_reserved_mb": torch.cuda.max_memory_reserved() / MB}


# ---------------------------------------------------------------------------- run and report
def run(configs, device, steps, warmup, plain=True):
    rows = []
    for name in configs:
        c = GPU_CONFIGS[name]
        times, tx_step, torch_step, tx_plain_step = time_training(c, device, steps, warmup, plain)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        step_flops = 3 * forward_matmul_flops(c)
        tokens = c.batch * c.seq
        row = {"config": asdict(c), "steps": steps, "warmup": warmup,
               **{f"{k}_ms": v for k, v in ms.items()},
               **{f"{k}_all_ms": [1e3 * t for t in v] for k, v in times.items()},
               "ratio": ms["tx"] / ms["torch"], "step_gflop": step_flops / 1e9,
               "tx_tokens_per_s": tokens / ms["tx"] * 1e3, "torch_tokens_per_s": tokens / ms["torch"] * 1e3,
               "tx_tflops": step_flops / ms["tx"] / 1e9, "torch_tflops": step_flops / ms["torch"] / 1e9}
        if plain:
            row["plain_ratio"] = ms["tx_plain"] / ms["torch"]
        if device == "cuda":
            row["tx_memory"] = cupy_step_memory(tx_step)
            if plain:
                row["tx_plain_memory"] = cupy_step_memory(tx_plain_step)
            row["torch_memory"] = torch_step_memory(torch_step)
        rows.append(row)
        print(f"  {name}: tinygrad_tx {ms['tx']:.1f} ms, torch {ms['torch']:.1f} ms, ratio {row['ratio']:.2f}",
              file=sys.stderr, flush=True)
    return {"machine": describe(device), "rows": rows}


def markdown(result) -> str:
    m = result["machine"]
    lines = [(f"Device: {m.get('gpu', m['device'])}; torch {m['torch']}, CuPy {m.get('cupy', '-')}; "
             f"float32, TF32 off (torch allow_tf32={m['torch_allow_tf32']}, CUPY_TF32={m['CUPY_TF32']})."), "",
             ("| config | tx ms/step (fused) | tx ms/step (plain CuPy) | torch ms/step | ratio fused/torch "
             "| ratio plain/torch | tx tokens/s | torch tokens/s | tx TFLOP/s | torch TFLOP/s "
             "| tx peak MB in use / pool held | tx plain peak MB in use | torch MB max allocated / reserved |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        plain = f"{r['tx_plain_ms']:.1f}" if "tx_plain_ms" in r else "-"
        plain_ratio = f"{r['plain_ratio']:.2f}" if "plain_ratio" in r else "-"
        if "tx_memory" in r:
            tx_mem = f"{r['tx_memory']['peak_in_use_mb']:.0f} / {r['tx_memory']['pool_held_mb']:.0f}"
            tx_plain_mem = f"{r['tx_plain_memory']['peak_in_use_mb']:.0f}" if "tx_plain_memory" in r else "-"
            torch_mem = f"{r['torch_memory']['max_allocated_mb']:.0f} / {r['torch_memory']['max_reserved_mb']:.0f}"
        else:
            tx_mem = tx_plain_mem = torch_mem = "-"
        lines.append(f"| {r['config']['name']} | {r['tx_ms']:.1f} | {plain} | {r['torch_ms']:.1f} | {r['ratio']:.2f} | "
                     f"{plain_ratio} | {r['tx_tokens_per_s']:.0f} | {r['torch_tokens_per_s']:.0f} | "
                     f"{r['tx_tflops']:.1f} | {r['torch_tflops']:.1f} | {tx_mem} | {tx_plain_mem} | {torch_mem} |")
    return "\n".join(lines)


def profile(name: str, device: str, steps: int, out: str):
    """cProfile of `steps` tinygrad_tx training steps on `name` after a warm-up step, the 40 functions
    with the most time of their own, plus the calls of Function.apply per step (each one is Python
    dispatch and at least one kernel launch)."""
    import cProfile
    import io
    import pstats
    _, tx_step = tx_setup(GPU_CONFIGS[name])
    tx_step()
    synchronize(device)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(steps):
        tx_step()
    synchronize(device)
    prof.disable()
    wall = time.perf_counter() - t0
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    applies = sum(v[1] for k, v in stats.stats.items() if k[2] == "apply" and k[0].endswith("autograd.py"))
    text.write(f"{name}: {steps} steps under cProfile in {wall:.2f} s; Function.apply calls per step: "
               f"{applies / steps:.0f}\n")
    stats.sort_stats("tottime").print_stats(40)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write(text.getvalue())
    print(f"profile of {name} written to {out}", file=sys.stderr)


def write_json(path, result):
    """Write with the package's one atomic writer (a unique temporary file, then os.replace)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write_json(path, result)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["paper", "large"], choices=sorted(GPU_CONFIGS))
    p.add_argument("--steps", type=int, default=20, help="timed steps per contestant (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiles the kernels; default 3)")
    p.add_argument("--no-plain", action="store_true", help="skip tinygrad_tx without the fused kernels")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: a dry run of the harness on NumPy and torch CPU (no memory figures)")
    p.add_argument("--json", default="benchmarks/gpu_results.json", help="where to write the JSON results")
    p.add_argument("--profile", metavar="CONFIG", choices=sorted(GPU_CONFIGS),
                   help="also write a cProfile of tinygrad_tx's step on CONFIG (to --profile-out)")
    p.add_argument("--profile-out", default="benchmarks/gpu_profile.txt")
    args = p.parse_args(argv)
    use_device(args.device)
    if args.profile:
        profile(args.profile, args.device, 5, args.profile_out)
    result = run(args.configs, args.device, args.steps, args.warmup, plain=not args.no_plain)
    result["command"] = "python benchmarks/gpu_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(markdown(result))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
