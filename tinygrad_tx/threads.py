"""Both CPU cores for the large elementwise and row-wise work: NumPy in worker threads.

torch runs its elementwise kernels on every core (OpenMP); NumPy runs each ufunc on one. But NumPy
lets go of Python's lock (the GIL) inside its loops, so Python threads that run ufuncs on different
slices of an array do run at the same time. `for_each_chunk` splits a range of rows into one chunk
per thread; a primitive passes it a function that does its ordinary NumPy work on rows start:stop.

It pays only for large arrays: a thread hand-off costs tens of microseconds, and below a few MB the
work is shorter than that or limited by memory bandwidth. Measured on the project's 2-core machine
(np.multiply into an existing array, median of 50): 2 MB 0.28 ms on one thread and 0.29 ms on two;
8 MB 1.02 and 0.64 ms; 32 MB 6.0 and 2.7 ms. Hence `MIN_BYTES`.

The number of threads is `set_num_threads(n)` (as torch.set_num_threads), else $TX_NUM_THREADS, else
the machine's cores (at most 8); 1 switches threads off. The cores are shared with OpenBLAS's own
threads, which must not spin between matrix products for ours to gain (see backend.py): import
tinygrad_tx before NumPy, or set OPENBLAS_THREAD_TIMEOUT=4, or the default is one thread. CuPy
arrays never come here: the GPU has its own parallelism.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from . import backend

MIN_BYTES = 4 << 20       # split work only when it touches at least this many bytes

_pool = None              # the worker threads, started on first use
_pool_size = 0
_count = None             # the number of threads, once known
_inside = threading.local()   # .chunk: this thread is running a chunk now


def num_threads() -> int:
    """How many threads the large elementwise work uses: set_num_threads(n), else $TX_NUM_THREADS,
    else the machine's cores (at most 8)."""
    global _count
    if _count is None:
        value = os.environ.get("TX_NUM_THREADS")
        try:
            _count = max(1, int(value)) if value else _default_count()
        except ValueError:
            raise ValueError(f"TX_NUM_THREADS must be a whole number, not {value!r}") from None
    return _count


def _default_count() -> int:
    """The machine's cores (at most 8), or 1 when NumPy was imported before tinygrad_tx without
    $OPENBLAS_THREAD_TIMEOUT: OpenBLAS's threads then spin on the cores after every matrix product
    (backend.py), and our threads, competing with them, made a training step slower, not faster."""
    return max(1, min(os.cpu_count() or 1, 8)) if backend.BLAS_SPINS_SHORT else 1


def set_num_threads(n: int | None) -> None:
    """Use n threads from now on (1: none besides the caller), as torch.set_num_threads; None goes
    back to $TX_NUM_THREADS or the number of cores."""
    global _count
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"set_num_threads: expected a whole number >= 1 or None, got {n!r}")
    _count = n


def for_each_chunk(fn, n: int, nbytes: int) -> None:
    """Call fn(start, stop) for consecutive chunks that cover range(n) (n rows of the work).

    With `nbytes` (the memory the whole call reads and writes) at least MIN_BYTES and more than one
    thread allowed, the chunks run at the same time: one on the calling thread, the rest on worker
    threads. Otherwise it is just fn(0, n). fn must write only rows start:stop of its outputs, and
    must not call BLAS (a matrix product): OpenBLAS called from two threads at once, each with its
    own threads, made a training step at length 256 1.5x slower (attention's stacked products), and
    a benchmark run that both did that and nested chunks hung with every thread waiting.
    """
    parts = min(num_threads(), n) if nbytes >= MIN_BYTES else 1
    if parts <= 1 or getattr(_inside, "chunk", False):
        fn(0, n)            # small work, or work inside a chunk: the pool's threads are all taken
        return
    global _pool, _pool_size
    if _pool_size < parts - 1:
        _pool, _pool_size = ThreadPoolExecutor(max_workers=parts - 1, thread_name_prefix="tinygrad_tx"), parts - 1
    bounds = [n * i // parts for i in range(parts + 1)]
    others = [_pool.submit(_as_chunk, fn, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    try:
        _as_chunk(fn, bounds[0], bounds[1])
    finally:
        for future in others:
            future.result()       # waits, and re-raises a worker's exception here


def _as_chunk(fn, start, stop):
    """fn(start, stop), marked as a chunk: a for_each_chunk inside it runs on its own thread, as
    waiting for the pool from inside the pool could wait forever."""
    _inside.chunk = True
    try:
        fn(start, stop)
    finally:
        _inside.chunk = False
