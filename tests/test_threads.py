"""threads.py and the primitives that use it: work split over CPU threads gives the very same bits.

The primitives switch to threads only for arrays of a few MB (threads.MIN_BYTES); the tests lower
that threshold to 0 and ask for 3 threads, so that small arrays with awkward sizes (fewer rows than
threads, rows that do not divide evenly) take the threaded path, and compare it with one thread.
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_tx as tx
from tinygrad_tx import functional as F
from tinygrad_tx import primitives, threads


@pytest.fixture(autouse=True)
def default_count():
    threads.set_num_threads(None)
    yield
    threads.set_num_threads(None)


@pytest.fixture
def split_everything(monkeypatch):
    monkeypatch.setattr(threads, "MIN_BYTES", 0)
    threads.set_num_threads(3)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 7, 100])
@pytest.mark.parametrize("count", ["1", "2", "3", "5"])
def test_chunks_cover_the_range_once_and_in_order(monkeypatch, n, count):
    threads.set_num_threads(int(count))
    seen, lock = [], threading.Lock()

    def record(start, stop):
        with lock:
            seen.append((start, stop))

    threads.for_each_chunk(record, n, nbytes=threads.MIN_BYTES)
    covered = [i for start, stop in sorted(seen) for i in range(start, stop)]
    assert covered == list(range(n))
    assert len(seen) == max(1, min(int(count), n))


def test_small_work_stays_on_the_calling_thread():
    threads.set_num_threads(4)
    names = []
    threads.for_each_chunk(lambda a, b: names.append(threading.current_thread().name), 100, nbytes=1024)
    assert names == [threading.current_thread().name]


def test_large_work_uses_the_worker_threads():
    threads.set_num_threads(2)
    names = []
    threads.for_each_chunk(lambda a, b: names.append(threading.current_thread().name), 10, nbytes=threads.MIN_BYTES)
    assert len(names) == 2 and any(name.startswith("tinygrad_tx") for name in names)


def test_a_workers_exception_reaches_the_caller():
    threads.set_num_threads(2)

    def fail_in_second_half(start, stop):
        if start > 0:
            raise ValueError("chunk failed")

    with pytest.raises(ValueError, match="chunk failed"):
        threads.for_each_chunk(fail_in_second_half, 10, nbytes=threads.MIN_BYTES)


def test_thread_count_comes_from_the_environment_and_bad_values_are_named(monkeypatch):
    monkeypatch.setenv("TX_NUM_THREADS", "5")
    assert threads.num_threads() == 5
    threads.set_num_threads(None)
    monkeypatch.setenv("TX_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="TX_NUM_THREADS"):
        threads.num_threads()
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="set_num_threads"):
            threads.set_num_threads(bad)


@pytest.mark.parametrize("ufunc, args", [
    (np.greater, lambda x, m: (x, 0)),
    (np.maximum, lambda x, m: (x, 0)),
    (np.subtract, lambda x, m: (x, m)),
    (np.multiply, lambda x, m: (x, x > 0)),
    (np.divide, lambda x, m: (x[:1], m)),
])
def test_in_threads_equals_the_plain_ufunc(split_everything, ufunc, args):
    x = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    operands = args(x, x.max(axis=1, keepdims=True))
    expected = ufunc(*operands)
    got = primitives.in_threads(ufunc, *operands)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_in_threads_writes_into_out(split_everything):
    x = np.random.default_rng(1).standard_normal((5, 4, 3))
    y = x.copy()
    assert primitives.in_threads(np.exp, y, out=y) is y
    assert np.array_equal(y, np.exp(x))


def test_by_rows_cuts_row_arguments_and_joins_every_result(split_everything):
    rng = np.random.default_rng(3)
    x, scale = rng.standard_normal((4, 5, 6)), rng.standard_normal((4, 5, 1))
    weight = rng.standard_normal(6)

    def rows(x, scale, weight, k):
        return x * scale + weight * k, (x * scale).sum(axis=-1, keepdims=True)

    a, b = primitives.by_rows(rows, x, scale, weight, 2.0)
    ea, eb = rows(x, scale, weight, 2.0)
    assert a.shape == ea.shape and b.shape == eb.shape
    assert np.array_equal(a, ea) and np.array_equal(b, eb)


def test_chunks_inside_a_chunk_run_on_their_own_thread():
    threads.set_num_threads(2)
    seen = []

    def inner(start, stop):
        seen.append((start, stop))

    def outer(start, stop):
        threads.for_each_chunk(inner, 4, nbytes=threads.MIN_BYTES)     # waiting for the pool here would hang

    worker = threading.Thread(target=threads.for_each_chunk, args=(outer, 2, threads.MIN_BYTES), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "a for_each_chunk inside a chunk waited for the pool forever"
    assert sorted(seen) == [(0, 4), (0, 4)]


def _step(x, target, mask, w, gain):
    """Forward and backward through every primitive that uses threads; the gradients as arrays."""
    x = tx.Tensor(x, requires_grad=True)
    w = tx.Tensor(w, requires_grad=True)
    gain = tx.Tensor(gain, requires_grad=True)
    scores = (x @ x.transpose(-2, -1)).masked_fill(~tx.Tensor(mask), -1e9)     # (B, h, T, T)
    h = (scores.softmax(axis=-1) @ x).relu()                                      # (B, h, T, d)
    h = F.layer_norm(h, gain, gain * 0.5)                                         # (B, h, T, d)
    logits = F.linear(h.reshape(-1, h.shape[-1]), w, w[:, 0] * 0.25)            # (B h T, C)
    loss = F.cross_entropy(logits, tx.Tensor(target), ignore_index=0, label_smoothing=0.1)
    loss.backward()
    return [loss.numpy(), x.grad.numpy(), w.grad.numpy(), gain.grad.numpy()]


@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 5), heads=st.integers(1, 3), T=st.integers(1, 6), d=st.integers(1, 5),
       C=st.integers(2, 7), seed=st.integers(0, 2 ** 16))
def test_training_step_is_bit_identical_with_threads(B, heads, T, d, C, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, heads, T, d)).astype(np.float32)
    w = rng.standard_normal((C, d)).astype(np.float32)
    target = rng.integers(0, C, B * heads * T)
    mask = np.tril(np.ones((T, T), dtype=bool))[None, None]
    gain = rng.standard_normal(d).astype(np.float32)
    with pytest.MonkeyPatch.context() as mp:
        threads.set_num_threads(1)
        one = _step(x, target, mask, w, gain)
        mp.setattr(threads, "MIN_BYTES", 0)
        threads.set_num_threads(3)
        three = _step(x, target, mask, w, gain)
    for a, b in zip(one, three):
        assert np.array_equal(a, b, equal_nan=True)     # (nan: every target ignored)


def _child_threads(code, **env):
    """get_num_threads() and $OPENBLAS_THREAD_TIMEOUT as seen by a fresh interpreter running `code`."""
    environ = {k: v for k, v in os.environ.items() if k not in ("TX_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT")}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", code + "; import os, tinygrad_tx as tx; "
                          "print(tx.get_num_threads(), os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"],
                         env=environ, capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), out[1]


def test_default_thread_count_depends_on_whether_openblas_spins():
    cores = max(1, min(os.cpu_count() or 1, 8))
    # imported first, tinygrad_tx makes OpenBLAS's threads sleep soon after a product: all cores
    assert _child_threads("import tinygrad_tx") == (cores, "4")
    # NumPy first, without the setting: OpenBLAS spins, and our threads would only compete with it
    assert _child_threads("import numpy") == (1, "4")
    # NumPy first, but the user set it: their value, and all cores
    assert _child_threads("import numpy", OPENBLAS_THREAD_TIMEOUT="6") == (cores, "6")
    assert _child_threads("import numpy", TX_NUM_THREADS="3") == (3, "4")
