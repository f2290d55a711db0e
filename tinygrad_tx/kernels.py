"""Fused CUDA kernels for the row-wise primitives on CuPy: softmax, log-softmax, layer norm, cross-entropy.

On the GPU a primitive written in plain `xp` code launches one CuPy kernel per array operation:
softmax alone is max, subtract, exp, sum, divide: five launches, each writing a full intermediate
array. The kernels below give each row to one thread block, keep the row's reductions in registers
and shared memory, write only their outputs, and re-read the row (from cache, mostly) at most three times.

The primitives' maths is written once, in `xp` code, in primitives.py. A primitive that has kernels
here also defines `forward_cuda` and `backward_cuda`, which call them, and `Function.apply` chooses,
in one place (Chainer's forward_cpu/forward_gpu): the fused pair when `accepts(arrays)` holds for the
forward's arguments, else the plain pair. They do not hold on NumPy, when fused kernels are switched
off (TX_FUSED=0 or `use_fused(False)`), or for inputs the kernels do not take (dtypes other than
float32/float64, empty arrays, float arguments of mixed dtypes).

The CUDA sources are plain text (`source(name, dtype)`), compiled by CuPy's NVRTC on first use, once
per dtype. `T` is the element type: float or double. Importing this module does not import CuPy.
"""
from __future__ import annotations

import contextlib
import os

from . import backend

enabled = os.environ.get("TX_FUSED", "1") != "0"


@contextlib.contextmanager
def use_fused(on: bool):
    """Switch the fused kernels on or off inside a `with` block (benchmarks compare both)."""
    global enabled
    previous, enabled = enabled, bool(on)
    try:
        yield
    finally:
        enabled = previous


def _on_gpu(x) -> bool:
    return backend.device_of(x) == "cuda"


def accepts(arrays) -> bool:
    """Whether the fused kernels take a primitive's forward arguments: switched on, the first is a
    non-empty float32 or float64 CuPy array, and every other floating-point array has its dtype."""
    x = arrays[0] if arrays else None
    if not enabled or not backend.is_array(x) or not _on_gpu(x):
        return False
    if x.dtype not in (backend.float32, backend.float64) or x.size == 0:
        return False
    return all(a.dtype == x.dtype for a in arrays[1:] if backend.is_array(a) and backend.is_floating(a.dtype))


# ---------------------------------------------------------------------------- CUDA building blocks
# Prepended to every kernel: the element type, and block-wide reductions whose result every thread
# receives. Blocks have a multiple of 32 threads (at most 1024): each warp reduces with shuffles,
# then the first warp reduces the per-warp results.
_PRELUDE = {
    "float32": "typedef float T;\n#define T_NEG_INF __int_as_float(0xff800000)\n",
    "float64": "typedef double T;\n#define T_NEG_INF __longlong_as_double(0xfff0000000000000LL)\n",
}

_REDUCTIONS = r"""
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffff, v, offset);
    return v;
}

__device__ __forceinline__ T warp_max(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        T other = __shfl_down_sync(0xffffffff, v, offset);
        v = other > v ? other : v;
    }
    return v;
}

__device__ T block_sum(T v) {
    __shared__ T partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();                         // the previous call's readers are done with partial
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = threadIdx.x < n_warps ? partial[threadIdx.x] : T(0);
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) partial[0] = v;
    __syncthreads();
    return partial[0];
}

__device__ T block_max(T v) {
    __shared__ T partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = threadIdx.x < n_warps ? partial[threadIdx.x] : T_NEG_INF;
    if (warp == 0) v = warp_max(v);
    if (threadIdx.x == 0) partial[0] = v;
    __syncthreads();
    return partial[0];
}
"""

SOURCES: dict[str, str] = {}      # kernel name -> CUDA source of its body (without the prelude)


def source(name: str, dtype) -> str:
    """The complete CUDA source of kernel `name` for float32 or float64."""
    return _PRELUDE[backend.dtype(dtype).name] + _REDUCTIONS + SOURCES[name]


_compiled: dict = {}              # (kernel name, dtype name) -> cupy.RawKernel


def _kernel(name: str, dtype):
    """The compiled kernel, built once per dtype (CuPy also caches the binary on disk)."""
    key = (name, backend.dtype(dtype).name)
    if key not in _compiled:
        cp = backend.get_xp("cuda")
        _compiled[key] = cp.RawKernel(source(name, dtype), name)
    return _compiled[key]


def _threads(n: int) -> int:
    """Threads per block for rows of n elements: a power of two from 32 to 512."""
    return min(512, max(32, 1 << (n - 1).bit_length()))


def _launch(name, dtype, rows: int, n: int, *args):
    """Run kernel `name` with one block per row."""
    _kernel(name, dtype)((rows,), (_threads(n),), args)


def _contiguous(a, dtype):
    return backend.get_xp("cuda").ascontiguousarray(a, dtype=dtype)


def _last(a, axis):
    """`a` with `axis` moved last (a view; the launchers then make it contiguous)."""
    return a if axis in (-1, a.ndim - 1) else backend.get_xp("cuda").moveaxis(a, axis, -1)


def _back(a, axis):
    """Undo _last on a result."""
    return a if axis in (-1, a.ndim - 1) else backend.get_xp("cuda").moveaxis(a, -1, axis)


def _index(n: int):
    """A `long long` kernel argument."""
    return backend.get_xp("cuda").int64(n)


# ============================================================================== softmax
# Replaces Softmax.forward: exp(x - max), sum, divide (five CuPy kernels) -> one.
SOURCES["softmax_forward"] = r"""
extern "C" __global__ void softmax_forward(const T* x, T* y, const long long n) {
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    T m = T_NEG_INF;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) m = xr[j] > m ? xr[j] : m;
    m = block_max(m);
    T s = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) s += exp(xr[j] - m);
    s = block_sum(s);
    for (long long j = threadIdx.x; j < n; j += blockDim.x) yr[j] = exp(xr[j] - m) / s;
}
"""


def softmax_forward(x, axis=-1):
    x = _contiguous(_last(x, axis), x.dtype)
    y = backend.get_xp("cuda").empty_like(x)
    n = x.shape[-1]
    _launch("softmax_forward", x.dtype, x.size // n, n, x, y, _index(n))
    return _back(y, axis)


# Replaces Softmax.backward: dx = y * g - y * sum(y * g) (four CuPy kernels) -> one.
SOURCES["softmax_backward"] = r"""
extern "C" __global__ void softmax_backward(const T* y, const T* g, T* dx, const long long n) {
    const long long row = blockIdx.x;
    const T* yr = y + row * n;
    const T* gr = g + row * n;
    T* dr = dx + row * n;
    T dot = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) dot += gr[j] * yr[j];
    dot = block_sum(dot);
    for (long long j = threadIdx.x; j < n; j += blockDim.x) dr[j] = gr[j] * yr[j] - yr[j] * dot;
}
"""


def softmax_backward(y, g, axis=-1):
    y, g = _contiguous(_last(y, axis), y.dtype), _contiguous(_last(g, axis), y.dtype)
    dx = backend.get_xp("cuda").empty_like(y)
    n = y.shape[-1]
    _launch("softmax_backward", y.dtype, y.size // n, n, y, g, dx, _index(n))
    return _back(dx, axis)


# ============================================================================== log-softmax
# Replaces LogSoftmax.forward: x - max - log(sum(exp(x - max))) (six CuPy kernels) -> one.
SOURCES["log_softmax_forward"] = r"""
extern "C" __global__ void log_softmax_forward(const T* x, T* y, const long long n) {
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    T m = T_NEG_INF;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) m = xr[j] > m ? xr[j] : m;
    m = block_max(m);
    T s = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) s += exp(xr[j] - m);
    const T log_s = log(block_sum(s));
    for (long long j = threadIdx.x; j < n; j += blockDim.x) yr[j] = (xr[j] - m) - log_s;
}
"""


def log_softmax_forward(x, axis=-1):
    x = _contiguous(_last(x, axis), x.dtype)
    y = backend.get_xp("cuda").empty_like(x)
    n = x.shape[-1]
    _launch("log_softmax_forward", x.dtype, x.size // n, n, x, y, _index(n))
    return _back(y, axis)


# Replaces LogSoftmax.backward: dx = g - exp(y) * sum(g) (four CuPy kernels) -> one.
SOURCES["log_softmax_backward"] = r"""
extern "C" __global__ void log_softmax_backward(const T* y, const T* g, T* dx, const long long n) {
    const long long row = blockIdx.x;
    const T* yr = y + row * n;
    const T* gr = g + row * n;
    T* dr = dx + row * n;
    T total = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) total += gr[j];
    total = block_sum(total);
    for (long long j = threadIdx.x; j < n; j += blockDim.x) dr[j] = gr[j] - exp(yr[j]) * total;
}
"""


def log_softmax_backward(y, g, axis=-1):
    y, g = _contiguous(_last(y, axis), y.dtype), _contiguous(_last(g, axis), y.dtype)
    dx = backend.get_xp("cuda").empty_like(y)
    n = y.shape[-1]
    _launch("log_softmax_backward", y.dtype, y.size // n, n, y, g, dx, _index(n))
    return _back(dx, axis)


# ============================================================================== layer norm
# Replaces LayerNorm.forward: mean, centre, square, mean, sqrt, divide, scale, shift (about ten
# CuPy kernels) -> one. Returns what the primitive saves: y, xhat and rstd (shape (..., 1)).
SOURCES["layer_norm_forward"] = r"""
extern "C" __global__ void layer_norm_forward(const T* x, const T* weight, const T* bias, const int has_weight,
                                              const int has_bias, const T eps, T* y, T* xhat, T* rstd,
                                              const long long n) {
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    T* hr = xhat + row * n;
    T total = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) total += xr[j];
    const T mu = block_sum(total) / T(n);
    T squares = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) squares += (xr[j] - mu) * (xr[j] - mu);
    const T r = T(1) / sqrt(block_sum(squares) / T(n) + eps);
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const T h = (xr[j] - mu) * r;
        hr[j] = h;
        T v = has_weight ? h * weight[j] : h;
        yr[j] = has_bias ? v + bias[j] : v;
    }
    if (threadIdx.x == 0) rstd[row] = r;
}
"""


def layer_norm_forward(x, weight, bias, eps):
    cp = backend.get_xp("cuda")
    x = _contiguous(x, x.dtype)
    # a missing weight or bias is passed as x (never read) with its flag off
    w = x if weight is None else _contiguous(weight, x.dtype)
    b = x if bias is None else _contiguous(bias, x.dtype)
    y, xhat = cp.empty_like(x), cp.empty_like(x)
    rstd = cp.empty(x.shape[:-1] + (1,), dtype=x.dtype)
    n = x.shape[-1]
    _launch("layer_norm_forward", x.dtype, x.size // n, n, x, w, b, cp.int32(weight is not None),
            cp.int32(bias is not None), x.dtype.type(eps), y, xhat, rstd, _index(n))
    return y, xhat, rstd


# Replaces LayerNorm.backward: dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)) with gh = g * w
# (about ten CuPy kernels) -> one, and dw = sum_rows(g * xhat), db = sum_rows(g) -> one kernel that
# sums chunks of rows per column, plus one small sum over the chunks. dw is None without a weight.
SOURCES["layer_norm_backward"] = r"""
extern "C" __global__ void layer_norm_backward(const T* g, const T* xhat, const T* rstd, const T* weight,
                                               const int has_weight, T* dx, const long long n) {
    const long long row = blockIdx.x;
    const T* gr = g + row * n;
    const T* hr = xhat + row * n;
    T* dr = dx + row * n;
    T sum_gh = 0, sum_gh_xhat = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const T gh = has_weight ? gr[j] * weight[j] : gr[j];
        sum_gh += gh;
        sum_gh_xhat += gh * hr[j];
    }
    const T mean_gh = block_sum(sum_gh) / T(n);
    const T mean_gh_xhat = block_sum(sum_gh_xhat) / T(n);
    const T r = rstd[row];
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const T gh = has_weight ? gr[j] * weight[j] : gr[j];
        dr[j] = r * (gh - mean_gh - hr[j] * mean_gh_xhat);
    }
}
"""

# Column sums for dw and db: block (x = a run of columns, y = a chunk of rows); each thread adds up
# its column over the chunk's rows (neighbouring threads read neighbouring addresses).
SOURCES["layer_norm_backward_params"] = r"""
extern "C" __global__ void layer_norm_backward_params(const T* g, const T* xhat, T* dw_chunks, T* db_chunks,
                                                      const long long rows, const long long n,
                                                      const long long rows_per_chunk) {
    const long long col = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= n) return;
    const long long first = (long long)blockIdx.y * rows_per_chunk;
    const long long last = min(rows, first + rows_per_chunk);
    T dw = 0, db = 0;
    for (long long r = first; r < last; ++r) {
        dw += g[r * n + col] * xhat[r * n + col];
        db += g[r * n + col];
    }
    dw_chunks[blockIdx.y * n + col] = dw;
    db_chunks[blockIdx.y * n + col] = db;
}
"""
_PARAM_THREADS, _MAX_ROW_CHUNKS = 256, 128


def layer_norm_backward(g, xhat, rstd, weight):
    cp = backend.get_xp("cuda")
    xhat = _contiguous(xhat, xhat.dtype)
    g, rstd = _contiguous(g, xhat.dtype), _contiguous(rstd, xhat.dtype)
    w = xhat if weight is None else _contiguous(weight, xhat.dtype)
    dx = cp.empty_like(xhat)
    n = xhat.shape[-1]
    rows = xhat.size // n
    _launch("layer_norm_backward", xhat.dtype, rows, n, g, xhat, rstd, w, cp.int32(weight is not None), dx, _index(n))
    chunks = min(rows, _MAX_ROW_CHUNKS)
    rows_per_chunk = -(-rows // chunks)
    chunks = -(-rows // rows_per_chunk)
    dw_chunks = cp.empty((chunks, n), dtype=xhat.dtype)
    db_chunks = cp.empty((chunks, n), dtype=xhat.dtype)
    grid = (-(-n // _PARAM_THREADS), chunks)
    _kernel("layer_norm_backward_params", xhat.dtype)(
        grid, (_PARAM_THREADS,), (g, xhat, dw_chunks, db_chunks, _index(rows), _index(n), _index(rows_per_chunk)))
    dw = None if weight is None else dw_chunks.sum(axis=0)
    return dx, dw, db_chunks.sum(axis=0)


# ============================================================================== cross-entropy
# Replaces the maths of CrossEntropy.forward on (rows, C) logits, given the target ids t (ignored rows
# already set to 0) and the bool `valid`: log_softmax, pick lp[t], smoothing term, zero ignored rows
# (about ten CuPy kernels) -> one. Returns the per-row loss and the log-probabilities the primitive saves.
SOURCES["cross_entropy_forward"] = r"""
extern "C" __global__ void cross_entropy_forward(const T* x, const long long* target, const bool* valid,
                                                 const T confidence, const T smooth, T* loss, T* logp,
                                                 const long long n) {
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    T* lr = logp + row * n;
    T m = T_NEG_INF;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) m = xr[j] > m ? xr[j] : m;
    m = block_max(m);
    T s = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) s += exp(xr[j] - m);
    const T log_s = log(block_sum(s));
    T sum_logp = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const T lp = (xr[j] - m) - log_s;
        lr[j] = lp;
        sum_logp += lp;
    }
    sum_logp = block_sum(sum_logp);
    if (threadIdx.x == 0) {
        const T nll = -((xr[target[row]] - m) - log_s);
        const T l = smooth > T(0) ? confidence * nll - smooth * sum_logp : nll;
        loss[row] = valid[row] ? l : T(0);
    }
}
"""


def _smoothing_terms(smoothing, C, dtype):
    """(1 - s) and s / C, computed as the plain code does (Python floats), then cast to the dtype."""
    return dtype.type(1 - smoothing), dtype.type(smoothing / C)


def cross_entropy_forward(x, t, valid, smoothing):
    cp = backend.get_xp("cuda")
    x = _contiguous(x, x.dtype)
    t, valid = _contiguous(t, backend.int64), _contiguous(valid, backend.bool_)
    rows, C = x.shape
    loss, logp = cp.empty(rows, dtype=x.dtype), cp.empty_like(x)
    confidence, smooth = _smoothing_terms(smoothing, C, x.dtype)
    _launch("cross_entropy_forward", x.dtype, rows, C, x, t, valid, confidence, smooth, loss, logp, _index(C))
    return loss, logp


# Replaces CrossEntropy.backward's maths: dx = (softmax - (1 - s) onehot(t) - s / C) * weight per row,
# with weight = the upstream gradient per row (0 for ignored rows): four CuPy kernels and a scatter -> one.
SOURCES["cross_entropy_backward"] = r"""
extern "C" __global__ void cross_entropy_backward(const T* logp, const long long* target, const T* weight,
                                                  const T confidence, const T smooth, T* dx, const long long n) {
    const long long row = blockIdx.x;
    const T* lr = logp + row * n;
    T* dr = dx + row * n;
    const long long t = target[row];
    const T w = weight[row];
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        T d = exp(lr[j]);
        if (j == t) d -= confidence;
        dr[j] = (d - smooth) * w;
    }
}
"""


def cross_entropy_backward(logp, t, weight, smoothing):
    cp = backend.get_xp("cuda")
    logp = _contiguous(logp, logp.dtype)
    t, weight = _contiguous(t, backend.int64), _contiguous(weight, logp.dtype)
    rows, C = logp.shape
    dx = cp.empty_like(logp)
    confidence, smooth = _smoothing_terms(smoothing, C, logp.dtype)
    _launch("cross_entropy_backward", logp.dtype, rows, C, logp, t, weight, confidence, smooth, dx, _index(C))
    return dx


# ============================================================================== dropout
# Replaces the arithmetic of Dropout.forward, given the uniforms u it draws: keep = u >= p,
# scale = keep / (1 - p) in the dtype, y = x * scale (four CuPy kernels) -> one, writing y and the
# scale that backward multiplies by. Each thread walks the arrays with a grid-sized stride.
SOURCES["dropout_forward"] = r"""
extern "C" __global__ void dropout_forward(const T* x, const T* u, const T p, const T kept, T* y, T* scale,
                                           const long long n) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T s = u[i] >= p ? kept : T(0);
        scale[i] = s;
        y[i] = x[i] * s;
    }
}
"""
_STRIDE_THREADS, _STRIDE_MAX_BLOCKS = 256, 2048


def _stride_grid(n: int) -> tuple:
    """Blocks for a grid-stride loop over n elements."""
    return (max(1, min(_STRIDE_MAX_BLOCKS, -(-n // _STRIDE_THREADS))),)


def dropout_forward(x, u, p):
    cp = backend.get_xp("cuda")
    x, u = _contiguous(x, x.dtype), _contiguous(u, x.dtype)
    y, scale = cp.empty_like(x), cp.empty_like(x)
    T = x.dtype.type
    _kernel("dropout_forward", x.dtype)(_stride_grid(x.size), (_STRIDE_THREADS,),
                                        (x, u, T(p), T(1.0 / (1.0 - p)), y, scale, _index(x.size)))
    return y, scale


# ============================================================================== embedding backward
# Replaces `cupy.add.at(dw, ids, g)`: dw[ids[i]] += g[i] for every position i, repeated ids summed.
# add.at uses atomic adds, which sum a repeated id's rows in whatever order the threads arrive, so
# two identical training steps could differ in the last bit (and a resumed run would drift from a
# straight one). Here the positions are sorted by id (a stable sort: equal ids keep their order);
# the block of the first position of each run of equal ids sums that run's rows in sorted order,
# one column per thread, and writes the id's row once: the same bits every time, and the same bits
# as NumPy's add.at. Other blocks return at once. No count leaves the GPU (no host sync).
SOURCES["embedding_backward"] = r"""
extern "C" __global__ void embedding_backward(const long long* sorted_ids, const long long* order, const T* g,
                                              T* dw, const long long n_ids, const long long d) {
    const long long p = blockIdx.x;
    const long long id = sorted_ids[p];
    if (p > 0 && sorted_ids[p - 1] == id) return;           // not the first position of its run
    for (long long c = threadIdx.x; c < d; c += blockDim.x) {
        T total = 0;
        for (long long q = p; q < n_ids && sorted_ids[q] == id; ++q) total += g[order[q] * d + c];
        dw[id * d + c] += total;
    }
}
"""


def embedding_backward(dw, ids, g):
    """dw[ids[i]] += g[i] in place, deterministically: dw (V, d), ids (n,) int64 in [0, V), g (n, d)."""
    cp = backend.get_xp("cuda")
    ids, g = _contiguous(ids, backend.int64), _contiguous(g, dw.dtype)
    n, d = g.shape
    if n == 0:
        return dw
    order = cp.argsort(ids, kind="stable")
    sorted_ids = _contiguous(ids[order], backend.int64)
    order = _contiguous(order, backend.int64)
    _launch("embedding_backward", dw.dtype, n, d, sorted_ids, order, g, dw, _index(n), _index(d))
    return dw


# ============================================================================== the table
# name -> launcher: the functions that the primitives' forward_cuda and backward_cuda call.
KERNELS = {
    "softmax_forward": softmax_forward,
    "softmax_backward": softmax_backward,
    "log_softmax_forward": log_softmax_forward,
    "log_softmax_backward": log_softmax_backward,
    "layer_norm_forward": layer_norm_forward,
    "layer_norm_backward": layer_norm_backward,
    "cross_entropy_forward": cross_entropy_forward,
    "cross_entropy_backward": cross_entropy_backward,
    "dropout_forward": dropout_forward,
    "embedding_backward": embedding_backward,
}


# ============================================================================== Adam
# One Adam or AdamW step over a flat buffer: the parameters, both moments and the gradient of every
# parameter of one dtype side by side (optim.Adam keeps them so), updated by one launch instead of
# about ten CuPy kernels per parameter. The arithmetic is optim.Adam's NumPy code, operation for
# operation (so float64 agrees with it and with torch to rounding):
#   g = p * weight_decay + grad (Adam's L2 term, when l2)      p = p * decay (AdamW: 1 - lr * weight_decay)
#   v = v * beta2 + (g * (1 - beta2)) * g                      m = m + (g - m) * (1 - beta1)
#   p = p + (m / (sqrt(v) / sqrt(1 - beta2^t) + eps)) * -(lr / (1 - beta1^t))
# Each thread walks the buffer with a grid-sized stride.
SOURCES["adam_step"] = r"""
extern "C" __global__ void adam_step(T* p, T* m, T* v, const T* grad, const long long n, const T decay,
                                     const int l2, const T weight_decay, const T one_minus_beta1, const T beta2,
                                     const T one_minus_beta2, const T bias_correction2_sqrt, const T eps,
                                     const T neg_step_size) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T param = p[i];
        T g = grad[i];
        if (l2) g = param * weight_decay + g;
        param = param * decay;
        const T vi = v[i] * beta2 + (g * one_minus_beta2) * g;
        const T mi = m[i] + (g - m[i]) * one_minus_beta1;
        const T denom = sqrt(vi) / bias_correction2_sqrt + eps;
        v[i] = vi;
        m[i] = mi;
        p[i] = param + (mi / denom) * neg_step_size;
    }
}
"""


def adam_step(p, m, v, grad, *, decay, l2, weight_decay, beta1, beta2, eps, step_size, bias_correction2_sqrt):
    """Update the contiguous arrays p, m, v in place from `grad` (the scalars as optim.Adam computes them)."""
    cp = backend.get_xp("cuda")
    T = p.dtype.type
    grad = _contiguous(grad, p.dtype)
    _kernel("adam_step", p.dtype)(_stride_grid(p.size), (_STRIDE_THREADS,), (
        p, m, v, grad, _index(p.size), T(decay), cp.int32(bool(l2)), T(weight_decay), T(1 - beta1), T(beta2),
        T(1 - beta2), T(bias_correction2_sqrt), T(eps), T(-step_size)))

