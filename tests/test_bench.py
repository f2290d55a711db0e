"""The benchmark's smoke mode, as CI runs it: both frameworks train, the table and JSON come out."""
import json
import sys

import numpy as np
import pytest

from tinygrad_tx.app import bench


def test_forward_flops_count_every_matmul():
    c = bench.BenchConfig("t", d_model=8, n_heads=2, d_ff=16, n_layers=1, batch=2, seq=3, vocab=10)
    tokens = 6
    proj = 4 * 2 * tokens * 8 * 8                  # W^Q, W^K, W^V, W^O
    scores = 2 * 2 * 2 * 3 * 3 * 8                 # Q K^T and A V over the batch
    ffn = 2 * 2 * tokens * 8 * 16
    expected = (proj + scores + ffn) + (2 * (proj + scores) + ffn) + 2 * tokens * 8 * 10
    assert bench.forward_matmul_flops(c) == expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux only)")
def test_peak_memory_sees_a_step_that_allocates_and_forgets_what_ran_before():
    mib = 2 ** 20
    big = np.ones(256 * mib // 8)                  # touched pages: resident memory rises by 256 MiB ...
    del big                                        # ... and falls again, before the measurement starts
    quiet, _ = bench.peak_above_steady(lambda: None, steps=2)
    busy, steady = bench.peak_above_steady(lambda: np.ones(64 * mib // 8).sum(), steps=2)
    assert quiet < 16 * mib, f"a step that allocates nothing measured {quiet / mib:.0f} MiB"
    assert 60 * mib <= busy < 128 * mib, f"a step that allocates 64 MiB measured {busy / mib:.0f} MiB"
    assert steady > 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_smoke_run_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = bench.main(["--smoke", "--json", str(out)])
    (row,) = result["rows"]
    assert row["config"]["name"] == "small" and row["steps"] == 2
    assert row["tx_ms"] > 0 and row["torch_ms"] > 0 and row["ratio"] == pytest.approx(row["tx_ms"] / row["torch_ms"])
    assert isinstance(row["tx_peak_mb"], float) and isinstance(row["torch_peak_mb"], float)
    assert row["decode_same_tokens"], "cached and uncached greedy decoding must give the same tokens"
    assert result["gemm_gflops"] > 0
    assert json.loads(out.read_text())["rows"][0]["config"]["name"] == "small"
    table = capsys.readouterr().out
    assert "| small |" in table and "GFLOP/s" in table


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_length_table_keeps_tokens_per_step_and_compares_time_and_memory(tmp_path, capsys):
    result = bench.main(["--seq", "6", "12", "--seq-config", "small", "--steps", "1", "--warmup", "1",
                         "--json", str(tmp_path / "bench.json")])
    assert result["rows"] == []                        # --seq alone runs only the length table
    short, long = result["length_rows"]
    small = bench.CONFIGS["small"]
    for row, seq in ((short, 6), (long, 12)):
        assert row["config"]["seq"] == seq
        assert row["config"]["batch"] * seq == small.batch * small.seq
        assert row["ratio"] == pytest.approx(row["tx_ms"] / row["torch_ms"])
        assert row["memory_ratio"] == pytest.approx(row["tx_peak_mb"] / row["torch_peak_mb"])
        assert row["decode_cached_tokens_per_s"] > 0
    table = capsys.readouterr().out
    assert "| 6 | 256 |" in table and "| 12 | 128 |" in table


def test_primitive_timer_counts_forward_and_backward_and_puts_the_methods_back():
    import tracemalloc

    import tinygrad_tx as tx
    from tinygrad_tx import primitives
    from tinygrad_tx.app.profiler import PrimitiveTimer
    original = primitives.Mul.__dict__["forward"]
    # on the CPU: the timer counts host memory (tracemalloc), which a GPU array barely touches
    x = tx.Tensor(np.ones(1000, dtype=np.float32), requires_grad=True, device="cpu")
    tracemalloc.start()
    try:
        with PrimitiveTimer(memory=True) as timer:
            (x * x).sum().backward()
    finally:
        tracemalloc.stop()
    mul = timer.stats["Mul"]
    assert mul["forward"]["calls"] == 1 and mul["backward"]["calls"] == 1
    assert mul["forward"]["seconds"] > 0 and mul["forward"]["kept_bytes"] >= 4000     # x * x: 1000 float32
    assert primitives.Mul.__dict__["forward"] is original
