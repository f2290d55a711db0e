"""Fused CUDA kernels for the row-wise primitives on CuPy: softmax, masked softmax, layer norm, cross-entropy.

On the GPU a primitive written in plain `xp` code launches one CuPy kernel per array operation:
softmax alone is max, subtract, exp, sum, divide: five launches, each writing a full intermediate
array. The kernels below give each row to one thread block, keep the row's reductions in registers
and shared memory, write only their outputs, and re-read the row (from cache, mostly) at most three times.

Each fused kernel has its plain version beside it: the same `xp` maths as the primitive's NumPy path
in primitives.py (repeated here on purpose, so that each kernel can be read against what it
replaces and tested against it; the primitive stays the definition). The primitives ask

    fused = kernels.lookup("softmax_forward", x)

and get None on NumPy, when fused kernels are switched off (TX_FUSED=0 or `use_fused(False)`), or for
inputs a kernel does not handle (other dtypes than float32/float64, a reduction over another axis
than the last, empty arrays). They then run their plain code.

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


def lookup(name: str, x, axis: int = -1):
    """The fused kernel `name` for arrays like `x` reduced over `axis`, or None (then run the plain code)."""
    if not enabled or backend.device_of(x) != "cuda" or not handles(x, axis):
        return None
    return FUSED[name]


def handles(x, axis: int = -1) -> bool:
    """Whether the kernels take this input: float32 or float64, not empty, reduced over the last axis."""
    return x.dtype in (backend.float32, backend.float64) and x.size > 0 and axis in (-1, x.ndim - 1)


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


def _index(n: int):
    """A `long long` kernel argument."""
    return backend.get_xp("cuda").int64(n)


# ============================================================================== softmax
# Replaces Softmax.forward: exp(x - max), sum, divide (five CuPy kernels) -> one.
def softmax_forward_plain(x):
    xp = backend.array_module(x)
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


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


def softmax_forward(x):
    x = _contiguous(x, x.dtype)
    y = backend.get_xp("cuda").empty_like(x)
    n = x.shape[-1]
    _launch("softmax_forward", x.dtype, x.size // n, n, x, y, _index(n))
    return y


# Replaces Softmax.backward: dx = y * g - y * sum(y * g) (four CuPy kernels) -> one.
def softmax_backward_plain(y, g):
    gy = g * y
    return gy - y * gy.sum(axis=-1, keepdims=True)


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


def softmax_backward(y, g):
    y, g = _contiguous(y, y.dtype), _contiguous(g, y.dtype)
    dx = backend.get_xp("cuda").empty_like(y)
    n = y.shape[-1]
    _launch("softmax_backward", y.dtype, y.size // n, n, y, g, dx, _index(n))
    return dx


# ============================================================================== log-softmax
# Replaces LogSoftmax.forward: x - max - log(sum(exp(x - max))) (six CuPy kernels) -> one.
def log_softmax_forward_plain(x):
    xp = backend.array_module(x)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


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


def log_softmax_forward(x):
    x = _contiguous(x, x.dtype)
    y = backend.get_xp("cuda").empty_like(x)
    n = x.shape[-1]
    _launch("log_softmax_forward", x.dtype, x.size // n, n, x, y, _index(n))
    return y


# Replaces LogSoftmax.backward: dx = g - exp(y) * sum(g) (four CuPy kernels) -> one.
def log_softmax_backward_plain(y, g):
    xp = backend.array_module(g)
    return g - xp.exp(y) * g.sum(axis=-1, keepdims=True)


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


def log_softmax_backward(y, g):
    y, g = _contiguous(y, y.dtype), _contiguous(g, y.dtype)
    dx = backend.get_xp("cuda").empty_like(y)
    n = y.shape[-1]
    _launch("log_softmax_backward", y.dtype, y.size // n, n, y, g, dx, _index(n))
    return dx


# ============================================================================== masked softmax
# Replaces MaskedFill followed by Softmax, as attention uses them: where(mask, value, x) writes a
# whole filled copy of the scores before the softmax reads it again. The kernel reads the mask
# where it broadcasts (a (B, 1, 1, Tk) padding mask is never expanded to (B, n_heads, Tq, Tk)).
# With value = finfo(dtype).min a row whose every position is masked gets uniform weights, as the
# plain composition does, and masked positions receive no gradient (MaskedFill's backward).
def masked_softmax_forward_plain(x, mask, value):
    xp = backend.array_module(x)
    return softmax_forward_plain(xp.where(mask, xp.asarray(value, dtype=x.dtype), x))


# The mask is addressed through `layout`: the leading shape of x (n_lead entries), the mask's strides
# along those axes and then along the last axis, in elements, 0 where it broadcasts.
_MASK_ROW_OFFSET = r"""
__device__ long long mask_row_offset(long long row, const long long* layout, const int n_lead) {
    long long offset = 0;
    for (int d = n_lead - 1; d >= 0; --d) {
        offset += (row % layout[d]) * layout[n_lead + d];
        row /= layout[d];
    }
    return offset;
}
"""

SOURCES["masked_softmax_forward"] = _MASK_ROW_OFFSET + r"""
extern "C" __global__ void masked_softmax_forward(const T* x, const bool* mask, const long long* layout,
                                                  const int n_lead, const T value, T* y, const long long n) {
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    const bool* mr = mask + mask_row_offset(row, layout, n_lead);
    const long long mask_step = layout[2 * n_lead];
    T* yr = y + row * n;
    T m = T_NEG_INF;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const T v = mr[j * mask_step] ? value : xr[j];
        m = v > m ? v : m;
    }
    m = block_max(m);
    T s = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) s += exp((mr[j * mask_step] ? value : xr[j]) - m);
    s = block_sum(s);
    for (long long j = threadIdx.x; j < n; j += blockDim.x) yr[j] = exp((mr[j * mask_step] ? value : xr[j]) - m) / s;
}
"""


def _mask_layout(mask, shape):
    """The device array `layout` that the masked kernels read the broadcast mask through."""
    cp = backend.get_xp("cuda")
    view = cp.broadcast_to(mask, shape)               # strides 0 along broadcast axes, no copy
    strides = [s // view.itemsize for s in view.strides]
    return cp.asarray(list(shape[:-1]) + strides, dtype=cp.int64), len(shape) - 1


def masked_softmax_forward(x, mask, value):
    cp = backend.get_xp("cuda")
    x = _contiguous(x, x.dtype)
    mask = cp.asarray(mask, dtype=backend.bool_)
    layout, n_lead = _mask_layout(mask, x.shape)
    y = cp.empty_like(x)
    n = x.shape[-1]
    _launch("masked_softmax_forward", x.dtype, x.size // n, n, x, mask, layout, cp.int32(n_lead),
            x.dtype.type(value), y, _index(n))
    return y


# Replaces Softmax.backward followed by MaskedFill.backward (zero where masked).
def masked_softmax_backward_plain(y, g, mask):
    xp = backend.array_module(g)
    return xp.where(mask, xp.zeros((), dtype=g.dtype), softmax_backward_plain(y, g))


SOURCES["masked_softmax_backward"] = _MASK_ROW_OFFSET + r"""
extern "C" __global__ void masked_softmax_backward(const T* y, const T* g, const bool* mask, const long long* layout,
                                                   const int n_lead, T* dx, const long long n) {
    const long long row = blockIdx.x;
    const T* yr = y + row * n;
    const T* gr = g + row * n;
    const bool* mr = mask + mask_row_offset(row, layout, n_lead);
    const long long mask_step = layout[2 * n_lead];
    T* dr = dx + row * n;
    T dot = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) dot += gr[j] * yr[j];
    dot = block_sum(dot);
    for (long long j = threadIdx.x; j < n; j += blockDim.x)
        dr[j] = mr[j * mask_step] ? T(0) : gr[j] * yr[j] - yr[j] * dot;
}
"""


def masked_softmax_backward(y, g, mask):
    cp = backend.get_xp("cuda")
    y, g = _contiguous(y, y.dtype), _contiguous(g, y.dtype)
    mask = cp.asarray(mask, dtype=backend.bool_)
    layout, n_lead = _mask_layout(mask, y.shape)
    dx = cp.empty_like(y)
    n = y.shape[-1]
    _launch("masked_softmax_backward", y.dtype, y.size // n, n, y, g, mask, layout, cp.int32(n_lead), dx, _index(n))
    return dx


# ============================================================================== layer norm
# Replaces LayerNorm.forward: mean, centre, square, mean, sqrt, divide, scale, shift (about ten
# CuPy kernels) -> one. Returns what the primitive saves: y, xhat and rstd (shape (..., 1)).
def layer_norm_forward_plain(x, weight, bias, eps):
    xp = backend.array_module(x)
    mu = x.mean(axis=-1, keepdims=True)
    centred = x - mu
    var = (centred * centred).mean(axis=-1, keepdims=True)
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat = centred * rstd
    y = xhat if weight is None else xhat * weight
    return (y if bias is None else y + bias), xhat, rstd


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
    if any(p is not None and p.dtype != x.dtype for p in (weight, bias)):
        return layer_norm_forward_plain(x, weight, bias, eps)     # mixed dtypes promote, as NumPy does
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
def layer_norm_backward_plain(g, xhat, rstd, weight):
    gh = g if weight is None else g * weight
    dx = rstd * (gh - gh.mean(axis=-1, keepdims=True) - xhat * (gh * xhat).mean(axis=-1, keepdims=True))
    rows = tuple(range(g.ndim - 1))
    dw = None if weight is None else (g * xhat).sum(axis=rows)
    return dx, dw, g.sum(axis=rows)


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
def cross_entropy_forward_plain(x, t, valid, smoothing):
    xp = backend.array_module(x)
    C = x.shape[1]
    shifted = x - x.max(axis=1, keepdims=True)
    logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    loss = -logp[xp.arange(x.shape[0]), t]
    if smoothing > 0:
        loss = (1 - smoothing) * loss - (smoothing / C) * logp.sum(axis=1)
    return xp.where(valid, loss, xp.zeros((), dtype=loss.dtype)), logp


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
def cross_entropy_backward_plain(logp, t, weight, smoothing):
    xp = backend.array_module(logp)
    C = logp.shape[1]
    dx = xp.exp(logp)
    dx[xp.arange(dx.shape[0]), t] -= 1 - smoothing
    if smoothing > 0:
        dx -= smoothing / C
    dx *= weight.astype(dx.dtype, copy=False)[:, None]
    return dx


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


# ============================================================================== the table
# name -> (fused kernel, plain version); both take and return the same arrays.
KERNELS = {
    "softmax_forward": (softmax_forward, softmax_forward_plain),
    "softmax_backward": (softmax_backward, softmax_backward_plain),
    "log_softmax_forward": (log_softmax_forward, log_softmax_forward_plain),
    "log_softmax_backward": (log_softmax_backward, log_softmax_backward_plain),
    "masked_softmax_forward": (masked_softmax_forward, masked_softmax_forward_plain),
    "masked_softmax_backward": (masked_softmax_backward, masked_softmax_backward_plain),
    "layer_norm_forward": (layer_norm_forward, layer_norm_forward_plain),
    "layer_norm_backward": (layer_norm_backward, layer_norm_backward_plain),
    "cross_entropy_forward": (cross_entropy_forward, cross_entropy_forward_plain),
    "cross_entropy_backward": (cross_entropy_backward, cross_entropy_backward_plain),
}
FUSED = {name: fused for name, (fused, _) in KERNELS.items()}
