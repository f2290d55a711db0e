"""Where a training step's time and memory go: a per-primitive timer and cProfile.

Run `tinygrad-tx bench --profile base paper` (or `python benchmarks/profile_step.py base paper`). For each
configuration it trains a few steps of the benchmark model and prints, as markdown:
- the step split into forward, backward and optimizer phases;
- per primitive: calls, forward and backward milliseconds, share of the step, and the memory each
  phase leaves allocated (net growth of the traced heap: outputs and saved arrays in forward,
  gradients in backward) and its transient peak above that;
- the share of the step spent in GEMM (the MatMul primitive, forward and backward);
- cProfile's top functions by own time.

The timer wraps each `Function` subclass's `forward` and `backward` for the duration of a `with`
block and puts them back afterwards; the engine itself knows nothing about it. Times come from one
pass and memory from a second pass under `tracemalloc` (which NumPy reports its buffers to), so the
bookkeeping of one does not distort the other.
"""
from __future__ import annotations

import cProfile
import io
import os
import pstats
import re
import statistics
import time
import tracemalloc
from collections import defaultdict

from tinygrad_tx.autograd import Function

from .bench import CONFIGS, PAD, load_average, make_batch

GENERATED = "## Generated"
GEMM_PRIMITIVES = ("MatMul", "Linear")     # the primitives whose time is (almost all) matrix products


def _all_functions():
    """Every Function subclass defined so far (built-in primitives and user-defined ones)."""
    found, stack = [], [Function]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            found.append(sub)
            stack.append(sub)
    return found


class PrimitiveTimer:
    """Context manager: accumulate, per primitive, the time (and optionally memory) of forward and backward.

    stats[op_name][phase] with phase 'forward' or 'backward' holds calls, seconds, kept_bytes (net
    growth of traced memory over the call) and peak_bytes (highest transient growth during a call,
    summed over calls). Memory is recorded only with memory=True, under tracemalloc.
    """

    def __init__(self, memory=False):
        self.memory = memory
        self.stats = defaultdict(lambda: {phase: {"calls": 0, "seconds": 0.0, "kept_bytes": 0, "peak_bytes": 0}
                                          for phase in ("forward", "backward")})
        self._saved = []

    def _wrap(self, cls, phase):
        original = cls.__dict__[phase]
        fn = original.__func__ if isinstance(original, staticmethod) else original
        record = self.stats[cls.op_name][phase]
        memory = self.memory

        def timed(*args, **kwargs):
            if memory:
                before = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            record["seconds"] += time.perf_counter() - t0
            record["calls"] += 1
            if memory:
                now, peak = tracemalloc.get_traced_memory()
                record["kept_bytes"] += now - before
                record["peak_bytes"] += max(peak - now, 0)
            return out
        return original, staticmethod(timed)

    def __enter__(self):
        for cls in _all_functions():
            for phase in ("forward", "backward"):
                if phase in cls.__dict__:
                    original, timed = self._wrap(cls, phase)
                    self._saved.append((cls, phase, original))
                    setattr(cls, phase, timed)
        return self

    def __exit__(self, *exc):
        for cls, phase, original in reversed(self._saved):
            setattr(cls, phase, original)
        self._saved = []
        return False


# ---------------------------------------------------------------------------- one benchmark step, in phases
def _setup(config, seed=0):
    from tinygrad_tx.models.transformer import Transformer, TransformerConfig

    import tinygrad_tx as tx
    c = CONFIGS[config]
    tx.manual_seed(seed)
    model = Transformer(TransformerConfig(src_vocab=c.vocab, tgt_vocab=c.vocab, d_model=c.d_model, n_heads=c.n_heads,
                                          d_ff=c.d_ff, n_layers=c.n_layers, dropout=0.0, pad_id=PAD))
    opt = tx.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    src, tgt_in, tgt_out = (tx.Tensor(a) for a in make_batch(c, seed))
    phases = defaultdict(list)

    def step():
        t0 = time.perf_counter()
        logits = model(src, tgt_in)
        loss = tx.functional.cross_entropy(logits, tgt_out, ignore_index=PAD, label_smoothing=0.1)
        t1 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        phases["forward"].append(t1 - t0)
        phases["backward"].append(t2 - t1)
        phases["optimizer"].append(t3 - t2)
        phases["step"].append(t3 - t0)
        return loss.item()
    return step, phases


def profile_config(config, steps=3, warmup=1, top=15):
    """Time `steps` steps per primitive, then measure their memory, then cProfile them. Returns a dict."""
    step, phases = _setup(config)
    for _ in range(warmup):
        step()
    phases.clear()
    with PrimitiveTimer() as timer:
        for _ in range(steps):
            step()
    phase_ms = {name: 1e3 * statistics.median(times) for name, times in phases.items()}
    total_s = sum(phases["step"])

    tracemalloc.start()
    try:
        with PrimitiveTimer(memory=True) as mem:
            step()
    finally:
        tracemalloc.stop()

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)

    rows = []
    for op, rec in timer.stats.items():
        fwd, bwd = rec["forward"], rec["backward"]
        if not fwd["calls"] and not bwd["calls"]:
            continue
        m = mem.stats[op]
        rows.append({"op": op, "calls": fwd["calls"] // steps,
                     "forward_ms": 1e3 * fwd["seconds"] / steps, "backward_ms": 1e3 * bwd["seconds"] / steps,
                     "share": (fwd["seconds"] + bwd["seconds"]) / total_s,
                     "forward_kept_mb": m["forward"]["kept_bytes"] / 2 ** 20,
                     "forward_peak_mb": m["forward"]["peak_bytes"] / 2 ** 20,
                     "backward_kept_mb": m["backward"]["kept_bytes"] / 2 ** 20,
                     "backward_peak_mb": m["backward"]["peak_bytes"] / 2 ** 20})
    rows.sort(key=lambda r: -(r["forward_ms"] + r["backward_ms"]))
    primitive_s = sum(r["forward_ms"] + r["backward_ms"] for r in rows) / 1e3
    gemm_ms = sum(r["forward_ms"] + r["backward_ms"] for r in rows if r["op"] in GEMM_PRIMITIVES)
    return {"config": config, "steps": steps, "phase_ms": phase_ms, "rows": rows,
            "gemm_share": gemm_ms / 1e3 * steps / total_s,
            "primitive_share": primitive_s * steps / total_s, "cprofile": _trim_pstats(text.getvalue())}


def _trim_pstats(text):
    """cProfile's table without its preamble, each path cut down to the package that holds it."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    return "\n".join(re.sub(r"\S*/(tinygrad_tx|models|site-packages)/", r"\1/", line)
                     for line in lines[start:] if line.strip())


def markdown(result) -> str:
    ph = result["phase_ms"]
    lines = [f"### `{result['config']}` ({CONFIGS[result['config']]})", "",
             (f"Median step {ph['step']:.0f} ms: forward {ph['forward']:.0f} ms, backward {ph['backward']:.0f} ms, "
             f"optimizer {ph['optimizer']:.0f} ms. GEMM (MatMul and Linear, forward and backward) is "
             f"**{100 * result['gemm_share']:.0f}%** of the step; all primitives together "
             f"{100 * result['primitive_share']:.0f}%, so the engine's own Python (graph recording, the "
             f"backward walk, gradient accumulation) and the optimizer take the rest."), "",
             ("| primitive | calls/step | forward ms | backward ms | share of step | forward kept MB "
             "| forward transient MB | backward kept MB | backward transient MB |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['op']} | {r['calls']} | {r['forward_ms']:.1f} | {r['backward_ms']:.1f} | "
                     f"{100 * r['share']:.1f}% | {r['forward_kept_mb']:.1f} | {r['forward_peak_mb']:.1f} | "
                     f"{r['backward_kept_mb']:.1f} | {r['backward_peak_mb']:.1f} |")
    lines += ["", f"cProfile, {result['steps']} steps, top functions by own time:", "", "```",
              result["cprofile"], "```", ""]
    return "\n".join(lines)


def run(configs, steps=3, warmup=1):
    return [profile_config(name, steps, warmup) for name in configs]


def write_report(configs, path, steps=3, warmup=1, command="") -> str:
    """Profile `configs` and write the markdown report to `path` (atomically); return the text."""
    from tinygrad_tx.serialization import atomic_write_text

    from .bench import machine_description
    load_before = load_average()
    results = run(configs, steps, warmup)
    notes = "# Where a training step's time goes\n\n"
    if os.path.exists(path):                # keep hand-written notes above a "## Generated" heading
        with open(path, encoding="utf-8") as f:
            old = f.read()
        if GENERATED in old:
            notes = old[:old.index(GENERATED) + len(GENERATED)] + "\n\n"
    text = notes + "\n".join([
        f"Made by `{command}`" if command else "", "",
        (f"Machine: {machine_description()}; load average {load_before} before and {load_average()} after "
        "(the machine is shared with other jobs, so absolute times are noisy; shares are steadier)."), "",
        ("Per-primitive times come from wrapping each primitive's forward and backward with a timer; memory "
        "from a second step under tracemalloc: *kept* is what a call leaves allocated (outputs and saved "
        "arrays in forward, gradients in backward), *transient* the peak of its temporaries above that, "
        "both summed over the step's calls."), "",
        *(markdown(r) for r in results)])
    atomic_write_text(path, text)
    return text
