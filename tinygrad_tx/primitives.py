"""The primitive ops: the whole contract of the engine.

Each primitive is one `Function` class with `forward` and `backward` side by side, and its derivative
in one line as `rule` (what `viz.explain` prints). Tensor methods, `tinygrad_tx.functional` and
`models/` only compose these. Forward receives backend arrays; `xp` is their array module (NumPy or
CuPy), so no op names either library.

Contract (grouped as below):
    elementwise    Add Sub Mul Div Neg Pow Exp Log Sqrt Tanh Sigmoid ReLU Abs Sin Cos Erf Maximum Where
                   Cast ToDevice BroadcastTo
    reduce         Sum Max Min Cumsum
    movement       Reshape Permute GetItem IndexAdd Cat
    matmul         MatMul Linear
    softmax        Softmax LogSoftmax
    masking        MaskedFill Dropout
    normalization  LayerNorm
    lookup         Embedding
    loss           CrossEntropy
Convolutions and pooling are not part of the contract.

Notation in the derivative comments: g (G in `rule`) is the gradient arriving from the output
(dL/dy), and each backward returns dL/d(input) for every forward argument (None for non-tensor
arguments).

Every backward is written once and runs two ways (see `autograd.Function`): on raw arrays for an
ordinary backward, and on Tensors, recorded, for `create_graph=True`, which makes every primitive
differentiable any number of times. Arithmetic operators and the methods arrays and Tensors share
(`.sum`, `.mean`, `.reshape`, indexing) work on both; for the rest, the helpers just below pick the
array version or the primitive by their argument. A derivative that is no composition of existing
primitives got a primitive of its own: BroadcastTo (the adjoint of Sum), IndexAdd (of GetItem).

Speed on the CPU (the same bits with any number of threads): `in_threads` and `by_rows` cut large arrays
into blocks of rows that several threads compute at once (threads.py; NumPy runs each call on one
core, torch on all of them), and `sum_along` and `max_along` reduce short rows faster than NumPy's
own reductions. Each states what it saves, measured.
"""
from __future__ import annotations

import sys

from . import backend, kernels, random, tensor, threads
from .autograd import Function
from .tensor import Tensor


def unbroadcast(grad, shape):
    """Sum `grad` down to `shape`, undoing NumPy broadcasting (the one place this happens).

    Broadcasting copies an input along new leading axes and along axes of size 1; the chain rule
    adds up the gradient over every copy.
    """
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1)
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


# =============================================================================== helpers for backward
# Each takes an array (computes at once, no graph) or a Tensor (applies the primitive, recorded).
def value(x):
    """The array inside a Tensor, or the array itself: for masks and counts, which are constants."""
    return x.data if isinstance(x, Tensor) else x


def exp(x):
    return Exp.apply(x) if isinstance(x, Tensor) else backend.array_module(x).exp(x)


def log(x):
    return Log.apply(x) if isinstance(x, Tensor) else backend.array_module(x).log(x)


def sqrt(x):
    return Sqrt.apply(x) if isinstance(x, Tensor) else backend.array_module(x).sqrt(x)


def sin(x):
    return Sin.apply(x) if isinstance(x, Tensor) else backend.array_module(x).sin(x)


def cos(x):
    return Cos.apply(x) if isinstance(x, Tensor) else backend.array_module(x).cos(x)


def multiply(a, b):
    """a * b; two large arrays are multiplied by chunks on the CPU's threads (`in_threads`)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return a * b
    return in_threads(backend.array_module(a).multiply, a, b)


def where(cond, a, b):
    """a where the constant bool array `cond` holds, else b (a or b may be a number)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        ref = a if isinstance(a, Tensor) else b
        a, b = (ref._operand(v) if not isinstance(v, Tensor) else v for v in (a, b))
        return Where.apply(Tensor._make(value(cond), False, None), a, b)
    xp = backend.array_module(cond)
    return xp.where(cond, a, b)


def broadcast_to(x, shape):
    return BroadcastTo.apply(x, tuple(shape)) if isinstance(x, Tensor) else \
        backend.array_module(x).broadcast_to(x, shape)


def transpose(x, axes):
    return Permute.apply(x, tuple(axes)) if isinstance(x, Tensor) else backend.array_module(x).transpose(x, axes)


def swap_last(x):
    """The two last axes exchanged (the matrix transpose of a batch of matrices)."""
    axes = list(range(x.ndim))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return transpose(x, axes)


def cast(x, dtype):
    return Cast.apply(x, dtype) if isinstance(x, Tensor) else x.astype(dtype)


def to_device(x, device):
    return ToDevice.apply(x, device) if isinstance(x, Tensor) else backend.to_device(x, device)


def index_add(g, shape, index):
    """Zeros of `shape` with g added at `index` (the adjoint of indexing)."""
    return IndexAdd.apply(g, tuple(shape), index) if isinstance(g, Tensor) else _index_add(g, shape, index)


def cumsum(x, axis):
    return Cumsum.apply(x, axis) if isinstance(x, Tensor) else backend.array_module(x).cumsum(x, axis=axis)


def flip(x, axis):
    """x reversed along one axis (basic indexing: a view of an array, a GetItem of a Tensor)."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(None, None, -1)
    return x[tuple(index)]


# =============================================================================== both CPU cores
def in_threads(ufunc, *args, out=None):
    """ufunc(*args, out=out) for a NumPy ufunc on arrays (and plain numbers). On the CPU,
    when the arrays are large, their first axis is cut into chunks that several threads compute at
    once (threads.py). The arrays must all have the result's number of axes and may broadcast as in
    NumPy (a row maximum (n, 1) against rows (n, C); a mask (1, 1, T, T) against scores (B, h, T, T))."""
    arrays = [a for a in args if backend.is_array(a)]
    first = arrays[0]
    if backend.device_of(first) != "cpu" or first.ndim == 0 or any(a.ndim != first.ndim for a in arrays):
        return ufunc(*args) if out is None else ufunc(*args, out=out)
    xp = backend.array_module(first)
    n = max(a.shape[0] for a in arrays)
    if out is None:       # the result's dtype and other axes, from the ufunc on empty slices
        empty = ufunc(*[a[:0] if backend.is_array(a) else a for a in args])
        out = xp.empty((n, *empty.shape[1:]), dtype=empty.dtype)

    def chunk(start, stop):
        part = [a[start:stop] if backend.is_array(a) and a.shape[0] != 1 else a for a in args]
        ufunc(*part, out=out[start:stop])

    threads.for_each_chunk(chunk, n, sum(a.nbytes for a in arrays) + out.nbytes)
    return out


ROW_PASSES = 8     # a row-wise computation (softmax) reads or writes its rows about this often


def by_rows(fn, *args):
    """fn(*args) for a computation that treats every row (the last axis) on its own, as softmax does.
    On the CPU, when there are many rows, blocks of rows are computed by several threads at once
    (threads.py) and the blocks' results joined: all the computation's passes over a block run while
    the block is in cache, on its own core. (Softmax: 1.22x and 1.12x in `base` and `paper` steps in
    one run, 1.02x and 0.87x in the next, so within the noise; layer norm, whose three results must be
    joined, 1.02x and 0.90x: it runs on one thread. benchmarks/threads_bench.py.) Arguments with the first one's leading axes
    are cut into blocks (x (B, T, n) and rstd (B, T, 1)); the others (weights, numbers) go whole.
    fn returns an array or a tuple of arrays with those leading axes. On Tensors it is fn(*args)."""
    first = args[0]
    if any(isinstance(a, Tensor) for a in args) or backend.device_of(first) != "cpu" or first.ndim < 2 \
            or first.size == 0:
        return fn(*args)
    lead = first.shape[:-1]
    cut = [backend.is_array(a) and a.ndim == first.ndim and a.shape[:-1] == lead for a in args]
    rows = [a.reshape(-1, a.shape[-1]) if c else a for a, c in zip(args, cut)]     # (R, n)
    blocks = {}

    def block(start, stop):
        blocks[start] = fn(*[a[start:stop] if c else a for a, c in zip(rows, cut)])

    threads.for_each_chunk(block, rows[0].shape[0], ROW_PASSES * sum(a.nbytes for a, c in zip(args, cut) if c))
    parts = [blocks[start] for start in sorted(blocks)]
    single = not isinstance(parts[0], tuple)
    if single:
        parts = [(part,) for part in parts]
    xp = backend.array_module(first)
    joined = [pieces[0] if len(pieces) == 1 else xp.concatenate(pieces) for pieces in zip(*parts)]
    results = tuple(j.reshape(*lead, j.shape[-1]) for j in joined)              # (..., k)
    return results[0] if single else results


# =============================================================================== row reductions
# Softmax, layer norm and cross-entropy reduce every row along the last axis, and NumPy's reductions
# walk a short last axis one row at a time. These give the same sums and maxima of arrays faster (a
# Tensor, in a create_graph backward, gets the plain recorded reduction).
def sum_along(x, axis):
    """x.sum(axis, keepdims=True). Along an array's last axis, with einsum's summing loop, which adds
    a short row with vector instructions where NumPy's reduction walks it element by element (on the
    (64, 8, 32, 32) attention scores 0.11 ms against 0.36 ms, on (2048, 256) layer-norm rows 0.09
    against 0.14 ms). BLAS (x @ ones) is as fast on an idle machine, but its threads wait for each
    other when the cores are busy: 8 ms for the same (2048, 256) rows at a load average of 2."""
    if isinstance(x, Tensor) or axis not in (-1, x.ndim - 1) or x.ndim == 0:
        return x.sum(axis=axis, keepdims=True)
    return backend.array_module(x).einsum("...i->...", x)[..., None]


def max_along(x, axis):
    """x.max(axis, keepdims=True) of an array. A short last axis (up to 64) is folded in halves:
    log2(n) whole-array np.maximum passes instead of one slow reduction per row (0.8 ms against
    1.5 ms on the (64, 8, 32, 32) attention scores)."""
    n = x.shape[axis] if x.ndim else 0
    if axis not in (-1, x.ndim - 1) or not 1 < n <= 64:
        return x.max(axis=axis, keepdims=True)
    xp = backend.array_module(x)
    while n > 1:
        half = n // 2
        folded = xp.maximum(x[..., :half], x[..., half:2 * half])
        if n % 2:                                   # the odd one out joins the first column
            xp.maximum(folded[..., :1], x[..., 2 * half:], out=folded[..., :1])
        x, n = folded, half
    return x


# =============================================================================== elementwise
class Add(Function):
    # y = a + b        dy/da = 1, dy/db = 1
    rule = "dA = G, dB = G"

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a + b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return unbroadcast(g, sa), unbroadcast(g, sb)


class Sub(Function):
    # y = a - b        dy/da = 1, dy/db = -1
    rule = "dA = G, dB = -G"

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a - b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return unbroadcast(g, sa), unbroadcast(-g, sb)


class Mul(Function):
    # y = a * b        dy/da = b, dy/db = a
    rule = "dA = G * B, dB = G * A"

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g * b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(g * a, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    # y = a / b        dy/da = 1/b, dy/db = -a/b^2
    rule = "dA = G / B, dB = -G * A / B^2"

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g / b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    # y = -x           dy/dx = -1
    rule = "dX = -G"

    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, g):
        return -g


class Pow(Function):
    # y = a ** b       dy/da = b * a^(b-1),  dy/db = a^b * log(a)
    rule = "dA = G * B * A^(B-1), dB = G * A^B * log(A)"

    @staticmethod
    def forward(ctx, a, b):
        y = a ** b
        ctx.save_for_backward(a, b, y)
        return y

    @staticmethod
    def backward(ctx, g):
        a, b, y = ctx.saved_tensors
        ga = unbroadcast(g * b * a ** (b - 1), a.shape) if ctx.needs_input_grad[0] else None
        gb = None
        if ctx.needs_input_grad[1]:
            safe_log = log(where(value(a) > 0, a, 1))       # 0 where a <= 0, as torch
            gb = unbroadcast(g * y * safe_log, b.shape)
        return ga, gb


class Exp(Function):
    # y = e^x          dy/dx = e^x = y   (keep the output: cheaper than recomputing)
    rule = "dX = G * exp(X) = G * Y"
    floating_inputs = (0,)

    @staticmethod
    def forward(ctx, x):
        y = backend.array_module(x).exp(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y


class Log(Function):
    # y = log x        dy/dx = 1/x
    rule = "dX = G / X"
    floating_inputs = (0,)

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return backend.array_module(x).log(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / x


class Sqrt(Function):
    # y = sqrt x       dy/dx = 1 / (2 sqrt x) = 1 / (2y)
    rule = "dX = G / (2 sqrt(X)) = G / (2Y)"
    floating_inputs = (0,)

    @staticmethod
    def forward(ctx, x):
        y = backend.array_module(x).sqrt(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g / (2 * y)


class Tanh(Function):
    # y = tanh x       dy/dx = 1 - y^2
    rule = "dX = G * (1 - Y^2)"
    floating_inputs = (0,)

    @staticmethod
    def forward(ctx, x):
        y = backend.array_module(x).tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class Sigmoid(Function):
    # y = 1 / (1 + e^-x)      dy/dx = y (1 - y)
    rule = "dX = G * Y * (1 - Y)"
    floating_inputs = (0,)

    @staticmethod
    def forward(ctx, x):
        xp = backend.array_module(x)
        # 0.5 * (1 + tanh(x/2)) is sigmoid without overflow in e^-x for very negative x
        y = (0.5 * (1 + xp.tanh(0.5 * x))).astype(x.dtype, copy=False)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y * (1 - y)


class ReLU(Function):
    # y = max(x, 0)    dy/dx = 1 where x > 0, else 0
    rule = "dX = G where X > 0, else 0"

    @staticmethod
    def forward(ctx, x):
        xp = backend.array_module(x)
        ctx.save_for_backward(in_threads(xp.greater, x, 0))   # the mask: 1 byte per value
        return in_threads(xp.maximum, x, 0)

    @staticmethod
    def backward(ctx, g):
        (positive,) = ctx.saved_tensors
        return multiply(g, positive)


class Abs(Function):
    # y = |x|          dy/dx = sign(x)   (0 at x = 0, as torch)
    rule = "dX = G * sign(X)"

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return abs(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        sign = backend.array_module(value(x)).sign(value(x))
        return g * sign


class Sin(Function):
    # y = sin x        dy/dx = cos x
    rule = "dX = G * cos(X)"
    floating_inputs = (0,)

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return backend.array_module(x).sin(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * cos(x)


class Cos(Function):
    # y = cos x        dy/dx = -sin x
    rule = "dX = -G * sin(X)"
    floating_inputs = (0,)

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return backend.array_module(x).cos(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return -g * sin(x)


class Erf(Function):
    # y = erf x = 2/sqrt(pi) * integral_0^x e^(-t^2) dt       dy/dx = 2/sqrt(pi) * e^(-x^2)
    rule = "dX = G * 2/sqrt(pi) * exp(-X^2)"
    floating_inputs = (0,)

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return backend.erf(x).astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1.1283791670955126 * exp(-(x * x)))


class Maximum(Function):
    # y = max(a, b) elementwise    dy/da = 1 where a > b, 1/2 where a == b, else 0 (as torch); dy/db mirrors
    rule = "dA = G where A > B (G/2 at ties), dB = G where B > A (G/2 at ties)"

    @staticmethod
    def forward(ctx, a, b):
        xp = backend.array_module(a)
        ctx.shapes = a.shape, b.shape
        wins = (a > b) + 0.5 * (a == b)             # share of the gradient that a gets
        ctx.save_for_backward(wins.astype(xp.result_type(a, b), copy=False))
        return xp.maximum(a, b)

    @staticmethod
    def backward(ctx, g):
        (wins,) = ctx.saved_tensors
        sa, sb = ctx.shapes
        ga = unbroadcast(g * wins, sa) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(g * (1 - wins), sb) if ctx.needs_input_grad[1] else None
        return ga, gb


class Where(Function):
    # y = cond ? a : b       dy/da = cond, dy/db = not cond   (cond gets no gradient)
    rule = "dA = G where cond, else 0; dB = G where not cond, else 0"

    @staticmethod
    def forward(ctx, cond, a, b):
        ctx.save_for_backward(cond)
        ctx.shapes = a.shape, b.shape
        return backend.array_module(a).where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        (cond,) = ctx.saved_tensors
        cond = value(cond)
        zero = backend.array_module(cond).zeros((), dtype=g.dtype)
        sa, sb = ctx.shapes
        ga = unbroadcast(where(cond, g, zero), sa) if ctx.needs_input_grad[1] else None
        gb = unbroadcast(where(cond, zero, g), sb) if ctx.needs_input_grad[2] else None
        return None, ga, gb


class Cast(Function):
    # y = x as another dtype      dy/dx = 1, cast back
    rule = "dX = G cast back to X's dtype"

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.in_dtype = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return cast(g, ctx.in_dtype), None


class ToDevice(Function):
    # y = x on another device     dy/dx = 1, moved back
    rule = "dX = G moved back to X's device"

    @staticmethod
    def forward(ctx, x, device):
        ctx.in_device = backend.device_of(x)
        return backend.to_device(x, device)

    @staticmethod
    def backward(ctx, g):
        return to_device(g, ctx.in_device), None


class BroadcastTo(Function):
    # y = x copied along new or size-1 axes up to `shape`     dx = g summed over those axes
    # (the adjoint of Sum: each is the other's backward)
    rule = "dX = G summed over the broadcast axes"

    @staticmethod
    def forward(ctx, x, shape):
        ctx.in_shape = x.shape
        return backend.array_module(x).broadcast_to(x, shape)

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(g, ctx.in_shape), None


# =============================================================================== reduce
def _expand_reduced(g, in_shape, axes, keepdims):
    """Put back the reduced axes of g (as size 1) so it broadcasts against the input."""
    if axes is not None and not keepdims:
        g = g.reshape([1 if i in axes else n for i, n in enumerate(in_shape)])
    return g


class Sum(Function):
    # y = sum_i x_i    dy/dx_i = 1: the gradient is copied back to every summed element
    rule = "dX = G copied back to every element that was summed"

    @staticmethod
    def forward(ctx, x, axes, keepdims):
        ctx.in_shape, ctx.axes, ctx.keepdims = x.shape, axes, keepdims
        return x.sum(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        g = _expand_reduced(g, ctx.in_shape, ctx.axes, ctx.keepdims)
        return broadcast_to(g, ctx.in_shape), None, None


def _extreme(ctx, x, axes, keepdims, largest):
    """Forward of Max and Min: the reduction, plus the share of the gradient each element gets."""
    if x.size == 0:
        raise ValueError(f"{ctx.op} of an empty tensor")
    y = x.max(axis=axes, keepdims=True) if largest else x.min(axis=axes, keepdims=True)
    if ctx.recording:
        hit = x == y
        ctx.save_for_backward((hit / hit.sum(axis=axes, keepdims=True)).astype(x.dtype, copy=False))
    ctx.axes, ctx.keepdims, ctx.in_shape = axes, keepdims, x.shape
    return y if keepdims else y.reshape([n for i, n in enumerate(y.shape) if axes is not None and i not in axes])


def _extreme_backward(ctx, g):
    (share,) = ctx.saved_tensors
    return _expand_reduced(g, ctx.in_shape, ctx.axes, ctx.keepdims) * share, None, None


class Max(Function):
    # y = max_i x_i    dy/dx_i = 1 at the maximum (shared equally among ties), else 0
    rule = "dX = G at the maximum (shared among ties), 0 elsewhere"

    @staticmethod
    def forward(ctx, x, axes, keepdims):
        return _extreme(ctx, x, axes, keepdims, largest=True)

    backward = staticmethod(_extreme_backward)


class Min(Function):
    # y = min_i x_i    dy/dx_i = 1 at the minimum (shared equally among ties), else 0
    rule = "dX = G at the minimum (shared among ties), 0 elsewhere"

    @staticmethod
    def forward(ctx, x, axes, keepdims):
        return _extreme(ctx, x, axes, keepdims, largest=False)

    backward = staticmethod(_extreme_backward)


class Cumsum(Function):
    # y_i = sum_{j <= i} x_j along an axis      dx_j = sum_{i >= j} g_i: a cumulative sum run backwards
    rule = "dX = reversed cumsum of reversed G along the axis"

    @staticmethod
    def forward(ctx, x, axis):
        ctx.axis = axis
        return backend.array_module(x).cumsum(x, axis=axis)

    @staticmethod
    def backward(ctx, g):
        return flip(cumsum(flip(g, ctx.axis), ctx.axis), ctx.axis), None


# =============================================================================== movement
class Reshape(Function):
    # y = x viewed with another shape     dx = g viewed with x's shape
    rule = "dX = G reshaped back to X's shape"

    @staticmethod
    def forward(ctx, x, shape):
        ctx.in_shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.in_shape), None


class Permute(Function):
    # y = x with axes reordered           dx = g with the inverse order
    rule = "dX = G with the axes put back (inverse permutation)"

    @staticmethod
    def forward(ctx, x, axes):
        ctx.axes = axes
        return backend.array_module(x).transpose(x, axes)

    @staticmethod
    def backward(ctx, g):
        inverse = [0] * len(ctx.axes)
        for i, a in enumerate(ctx.axes):
            inverse[a] = i
        return transpose(g, inverse), None


def _is_advanced(index):
    """True when the index holds an integer or bool array (NumPy's advanced indexing)."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(backend.is_array(p) or isinstance(p, list) for p in parts)


def _index_add(g, shape, index):
    """Zeros of `shape`, with g written at a basic index or added at an advanced one (repeats sum)."""
    xp = backend.array_module(g)
    dx = xp.zeros(shape, dtype=g.dtype)
    if _is_advanced(index):
        xp.add.at(dx, index, g)
    else:
        dx[index] = g
    return dx


class GetItem(Function):
    # y = x[index]     dx = zeros with g written (basic) or added (repeated integer indices) at index
    rule = "dX = zeros of X's shape, G written (or added, for repeated indices) at the index"

    @staticmethod
    def forward(ctx, x, index):
        if backend.is_array(index) and backend.device_of(index) != backend.device_of(x):
            index = backend.to_device(index, backend.device_of(x))
        ctx.in_shape, ctx.index = x.shape, index
        return x[index]

    @staticmethod
    def backward(ctx, g):
        return index_add(g, ctx.in_shape, ctx.index), None


class IndexAdd(Function):
    # y = zeros(shape) with x added at index      dx = g[index]
    # (the adjoint of GetItem: GetItem's backward, and GetItem is its backward)
    rule = "dX = G[index]"

    @staticmethod
    def forward(ctx, x, shape, index):
        ctx.index = index
        return _index_add(x, shape, index)

    @staticmethod
    def backward(ctx, g):
        return g[ctx.index], None, None


class Cat(Function):
    # y = [x1, x2, ...] along axis        dx_i = the slice of g that x_i filled
    rule = "dX_i = the slice of G that X_i filled"

    @staticmethod
    def forward(ctx, *xs, axis=0):
        xp = backend.array_module(xs[0])
        ctx.axis = axis % max(xs[0].ndim, 1)
        ctx.sizes = [x.shape[ctx.axis] for x in xs]
        return xp.concatenate(xs, axis=ctx.axis)

    @staticmethod
    def backward(ctx, g):
        grads, start = [], 0
        for n in ctx.sizes:
            index = [slice(None)] * g.ndim
            index[ctx.axis] = slice(start, start + n)
            grads.append(g[tuple(index)])
            start += n
        return tuple(grads)


# =============================================================================== matmul
class MatMul(Function):
    # Y = A @ B        dA = G @ B^T,  dB = A^T @ G   (batch axes broadcast, then unbroadcast)
    op = "matmul"
    rule = "dA = G @ B^T, dB = A^T @ G"

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
            raise ValueError(f"cannot multiply {tuple(a.shape)} by {tuple(b.shape)}")
        ctx.save_for_backward(a, b)
        if b.ndim == 2 and a.ndim > 2:
            return _rows_matmul(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = gb = None
        shared_weight = b.ndim == 2 and a.ndim > 2     # (..., n, k) @ (k, m): x @ W in every layer
        if ctx.needs_input_grad[0]:
            bt = swap_last(b)
            ga = _rows_matmul(g, bt) if shared_weight else unbroadcast(g @ bt, a.shape)
        if ctx.needs_input_grad[1]:
            if shared_weight:
                # Fold the batch axes into rows: one GEMM instead of a batched product followed by
                # a sum over the batch (plain version: unbroadcast(A^T @ G, B.shape)).
                gb = a.reshape(-1, a.shape[-1]).T @ g.reshape(-1, g.shape[-1])
            else:
                gb = unbroadcast(swap_last(a) @ g, b.shape)
        return ga, gb


def _rows_matmul(a, b):
    """(..., n, k) @ (k, m) as one 2-D GEMM over all rows: NumPy would otherwise call BLAS once per
    batch element (same result as `a @ b`, about 1.5x faster for Transformer-sized activations)."""
    return (a.reshape(-1, a.shape[-1]) @ b).reshape(*a.shape[:-1], b.shape[-1])


def _add_into(y, b):
    """y + b written into y (a new array of the forward's own, so no one else sees it), unless b's wider
    dtype would promote the sum: then a new array, as NumPy would give."""
    xp = backend.array_module(y)
    if y.dtype != xp.result_type(y, b):
        return y + b
    if b.ndim < y.ndim:                           # a bias (n,) against rows (..., n): as (1, ..., n)
        b = b.reshape((1,) * (y.ndim - b.ndim) + b.shape)
    return in_threads(xp.add, y, b, out=y)


class Linear(Function):
    # y = x W^T + b,  x (..., in), W (out, in), b (out,)
    # dx = g W,   dW = g^T x,   db = sum of g     (dW and db summed over every leading axis of x)
    # One primitive instead of x @ W.T + b (Permute, MatMul and Add nodes): the leading axes fold into
    # the rows of one GEMM, the bias is added in place into the GEMM's output instead of into a new
    # array, and dW comes out as (out, in) directly instead of as a transposed view that the weight's
    # .grad would have to copy. Measured on the `base` benchmark step, alternating in one process with
    # the same model built from x @ W.T + b: 17.8 s against 21.4 s per step (a shared 2-core machine
    # under a load average of 13 to 18, where every extra BLAS call and array costs the most).
    op = "linear"
    rule = "dX = G @ W, dW = G^T @ X, db = sum of G over the rows  (Y = X @ W^T + b)"
    floating_inputs = (0,)

    @staticmethod
    def forward(ctx, x, weight, bias):
        if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
            raise ValueError(f"input has {x.shape[-1] if x.ndim else 0} features (shape {tuple(x.shape)}) but "
                             f"weight {tuple(weight.shape)} expects (out_features, {x.shape[-1] if x.ndim else 0})")
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ValueError(f"bias has shape {tuple(bias.shape)} but weight {tuple(weight.shape)} "
                             f"has {weight.shape[0]} output features")
        ctx.save_for_backward(x, weight)
        y = x.reshape(-1, x.shape[-1]) @ weight.T                  # (rows, out)
        if bias is not None:
            y = _add_into(y, bias)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])                            # (rows, out)
        gx = (g2 @ weight).reshape(x.shape) if ctx.needs_input_grad[0] else None
        gw = g2.T @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        gb = g2.sum(axis=0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


# =============================================================================== softmax
# The primitives below also have fused CUDA versions (kernels.py): forward_cuda and backward_cuda
# take and return the same arrays as forward and backward, and save the same things. Function.apply
# runs them on CuPy arrays that kernels.accepts (a create_graph backward runs the plain backward).
# The xp maths in forward and backward stays the definition, and is what the kernels are tested against.
def _softmax(x, axis):
    xp = backend.array_module(x)
    y = x - max_along(x, axis)                               # one new array, then in place
    xp.exp(y, out=y)
    y /= sum_along(y, axis)
    return y


def _softmax_grad(y, g, axis):
    return y * (g - sum_along(g * y, axis))


class Softmax(Function):
    # y_i = e^(x_i - m) / sum_j e^(x_j - m)   (m = max x: the same value, no overflow)
    # dx = y * (g - sum_j g_j y_j)
    rule = "dX = Y * (G - sum(G * Y, axis))"
    floating_inputs = (0,)

    @staticmethod
    def forward(ctx, x, axis):
        y = by_rows(_softmax, x, -1) if axis in (-1, x.ndim - 1) else _softmax(x, axis)
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        if ctx.axis in (-1, y.ndim - 1):
            return by_rows(_softmax_grad, y, g, -1), None
        return _softmax_grad(y, g, ctx.axis), None

    @staticmethod
    def forward_cuda(ctx, x, axis):
        y = kernels.softmax_forward(x, axis)
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward_cuda(ctx, g):
        (y,) = ctx.saved_tensors
        return kernels.softmax_backward(y, g, ctx.axis), None


class LogSoftmax(Function):
    # y_i = x_i - m - log sum_j e^(x_j - m)
    # dx = g - softmax(x) * sum_j g_j,  with softmax(x) = e^y
    rule = "dX = G - softmax(X) * sum(G, axis)"
    floating_inputs = (0,)

    @staticmethod
    def forward(ctx, x, axis):
        xp = backend.array_module(x)
        shifted = x - max_along(x, axis)
        y = shifted - xp.log(sum_along(xp.exp(shifted), axis))
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g - exp(y) * sum_along(g, ctx.axis), None

    @staticmethod
    def forward_cuda(ctx, x, axis):
        y = kernels.log_softmax_forward(x, axis)
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward_cuda(ctx, g):
        (y,) = ctx.saved_tensors
        return kernels.log_softmax_backward(y, g, ctx.axis), None


# =============================================================================== masking
class MaskedFill(Function):
    # y = mask ? value : x     dx = g where the mask is False, else 0
    rule = "dX = G where the mask is False, 0 where it is True"

    @staticmethod
    def forward(ctx, x, mask, value):
        xp = backend.array_module(x)
        ctx.save_for_backward(mask)
        ctx.in_shape = x.shape
        return xp.where(mask, backend.full_scalar(xp, value, x.dtype), x)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        mask = value(mask)
        zero = backend.array_module(mask).zeros((), dtype=g.dtype)
        return unbroadcast(where(mask, zero, g), ctx.in_shape), None, None


def _uniform_like(x):
    """Uniform draws in [0, 1) of x's shape, from x's device generator, in x's dtype (float16, which
    has no generator of its own, draws in float32)."""
    dtype = x.dtype if x.dtype in (backend.float32, backend.float64) else backend.float32
    return random.rng(backend.device_of(x)).random(x.shape, dtype=dtype)


class Dropout(Function):
    # y = x * m / (1 - p), m ~ Bernoulli(1 - p)      dx = g * m / (1 - p)
    rule = "dX = G * keep / (1 - p), the same kept positions as forward"
    floating_inputs = (0,)

    @staticmethod
    def forward(ctx, x, p):
        keep = _uniform_like(x) >= p
        scale = (keep * (1.0 / (1.0 - p))).astype(x.dtype, copy=False)
        ctx.save_for_backward(scale)
        return x * scale

    @staticmethod
    def backward(ctx, g):
        (scale,) = ctx.saved_tensors
        return g * scale, None

    @staticmethod
    def forward_cuda(ctx, x, p):
        u = _uniform_like(x)                      # the draws forward makes
        y, scale = kernels.dropout_forward(x, u, p)
        ctx.save_for_backward(scale)
        return y

    backward_cuda = backward                  # g * scale: one kernel already


# =============================================================================== normalization
def _mean_last(x):
    return sum_along(x, -1) * (1.0 / x.shape[-1])


def _standardize(x, eps):
    """(x - mean) / sqrt(var + eps) over the last axis, and 1/sqrt(var + eps), of Tensors (recorded:
    the create_graph backward). LayerNorm.forward computes the same on arrays, in place."""
    centred = x - _mean_last(x)
    rstd = 1.0 / sqrt(_mean_last(centred * centred) + eps)
    return centred * rstd, rstd


def _layer_norm(x, weight, bias, eps):
    """LayerNorm's forward on arrays: y, xhat and rstd, with two new (..., n) arrays, the rest in place."""
    xp = backend.array_module(x)
    xhat = x - _mean_last(x)                        # centred
    squares = xhat * xhat
    rstd = _mean_last(squares)                      # var, (..., 1)
    rstd += eps
    xp.sqrt(rstd, out=rstd)
    xp.reciprocal(rstd, out=rstd)                   # 1 / sqrt(var + eps)
    xhat *= rstd
    if weight is None:
        y = xhat if bias is None else xhat + bias
    elif squares.dtype == xp.result_type(xhat, weight):
        y = xp.multiply(xhat, weight, out=squares)  # into the squares' buffer, no longer needed
    else:
        y = xhat * weight                           # a wider weight: NumPy's promoted dtype
    if weight is not None and bias is not None:
        y = _add_into(y, bias)
    return y, xhat, rstd


def _layer_norm_grad(g, xhat, rstd, weight):
    gh = g if weight is None else g * weight
    return rstd * (gh - _mean_last(gh) - xhat * _mean_last(gh * xhat))


def _check_affine(x, weight, bias):
    n = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (n,):
            raise ValueError(f"{name} has shape {tuple(p.shape)} but the last axis of x has {n} features")


class LayerNorm(Function):
    # Over the last axis (n features):
    #   mu = mean x,  var = mean (x - mu)^2,  r = 1/sqrt(var + eps),  xh = (x - mu) r
    #   y = xh * w + b
    # Backward, with gh = g * w:
    #   dx = r * (gh - mean(gh) - xh * mean(gh * xh))
    #   dw = sum over rows of g * xh,  db = sum over rows of g
    # With create_graph, xh and r are recomputed from x as Tensors, so the same lines are recorded
    # and the second derivative reaches x through them.
    rule = "dX = r (Gw - mean(Gw) - xh mean(Gw xh)), dw = sum(G xh), db = sum(G)  (xh = normalised X, r = 1/std)"
    floating_inputs = (0,)

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        _check_affine(x, weight, bias)
        ctx.eps = eps
        y, xhat, rstd = _layer_norm(x, weight, bias, eps)
        ctx.save_for_backward(xhat, rstd, weight, x)
        return y

    @staticmethod
    def backward(ctx, g):
        xhat, rstd, weight, x = ctx.saved_tensors
        if isinstance(g, Tensor):
            xhat, rstd = _standardize(x, ctx.eps)
        dx = _layer_norm_grad(g, xhat, rstd, weight)
        rows = tuple(range(g.ndim - 1))
        dw = (g * xhat).sum(axis=rows) if ctx.needs_input_grad[1] else None
        db = g.sum(axis=rows) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None

    @staticmethod
    def forward_cuda(ctx, x, weight, bias, eps):
        _check_affine(x, weight, bias)
        ctx.eps = eps
        y, xhat, rstd = kernels.layer_norm_forward(x, weight, bias, eps)
        ctx.save_for_backward(xhat, rstd, weight, x)
        return y

    @staticmethod
    def backward_cuda(ctx, g):
        xhat, rstd, weight, _ = ctx.saved_tensors
        dx, dw, db = kernels.layer_norm_backward(g, xhat, rstd, weight)
        return dx, dw if ctx.needs_input_grad[1] else None, db if ctx.needs_input_grad[2] else None, None


# =============================================================================== lookup
def index_add_rows(dst, index, src):
    """dst[index[i]] += src[i] for every i, summing repeated indices (the embedding backward).

    The plain version is `xp.add.at(dst, index, src)`. NumPy runs it one row at a time, so on the
    CPU we sort the indices instead and sum each run of equal ids with one `add.reduceat`. CuPy runs
    it with atomic adds, whose order (and so the last bit of a sum) changes from run to run; the fused
    kernel sorts too and gives the same bits every time (kernels.embedding_backward).
    """
    xp = backend.array_module(dst)
    if backend.device_of(dst) != "cpu":
        if kernels.accepts((dst, src)):
            return kernels.embedding_backward(dst, index, src)
        xp.add.at(dst, index, src)
        return dst
    if index.size == 0:
        return dst
    order = xp.argsort(index, kind="stable")
    sorted_index = index[order]
    run_starts = xp.flatnonzero(xp.concatenate(([True], sorted_index[1:] != sorted_index[:-1])))
    dst[sorted_index[run_starts]] += xp.add.reduceat(src[order], run_starts, axis=0)
    return dst


class Embedding(Function):
    # y[...] = W[idx[...]]     dW[k] = sum of g over every position where idx == k
    rule = "dW[k] = sum of G over the positions whose index is k"

    @staticmethod
    def forward(ctx, idx, weight):
        if idx.dtype.kind not in "iu":
            raise TypeError(f"indices must be integers, not {idx.dtype}")
        n = weight.shape[0]
        backend.check((idx < 0) | (idx >= n), ctx.op, lambda: IndexError(
            f"index out of range: ids span [{int(idx.min())}, {int(idx.max())}] but the table has {n} rows"))
        ctx.save_for_backward(idx)
        ctx.weight_shape = weight.shape
        return weight[idx]

    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved_tensors
        idx = value(idx)
        if isinstance(g, Tensor):
            return None, index_add(g, ctx.weight_shape, idx)
        dw = backend.array_module(g).zeros(ctx.weight_shape, dtype=g.dtype)
        index_add_rows(dw, idx.reshape(-1), g.reshape(-1, ctx.weight_shape[-1]))   # fast index_add
        return None, dw


# =============================================================================== loss
def _cross_entropy_rows(ctx, logits, target, ignore_index, reduction):
    """Check the arguments; return the logits as (rows, C), the target ids with ignored rows set to 0,
    and `valid` (the rows that count). An out-of-range id raises (on the GPU at the next read)."""
    C = logits.shape[-1]
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)} "
                         f"(expected {tuple(logits.shape[:-1])})")
    if target.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class ids, not {target.dtype}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    xp = backend.array_module(logits)
    t = target.reshape(-1)
    valid = t != ignore_index
    in_range = (t >= 0) & (t < C)
    bad = valid & ~in_range
    backend.check(bad, ctx.op, lambda: IndexError(f"target id {int(t[bad][0])} is out of range for {C} classes"))
    return logits.reshape(-1, C), xp.where(valid & in_range, t, 0), valid


def _cross_entropy_reduce(ctx, loss, kept, t, valid, logits, target_shape, smoothing, reduction):
    """Save what backward needs and reduce the per-row losses. `kept` is the (rows, C) array that
    backward starts from: the probabilities (NumPy code) or the log-probabilities (CUDA kernels).
    The count of rows stays an array (no int(): on the GPU that would wait for every queued kernel)."""
    ctx.save_for_backward(kept, t, valid, logits)
    ctx.shape, ctx.smoothing, ctx.reduction, ctx.n_valid = logits.shape, smoothing, reduction, valid.sum()
    if reduction == "none":
        return loss.reshape(target_shape)
    total = loss.sum()
    if reduction == "sum":
        return total
    with backend.quiet_nan():                   # every row ignored: 0 / 0 = nan, as torch's mean
        return total / ctx.n_valid.astype(total.dtype)


def _cross_entropy_row_weight(ctx, g, valid, dtype):
    """The upstream gradient of each row's loss: 0 for ignored rows; 'mean' divides by the number of
    rows that count (every row ignored: the gradient is 0, there is nothing to learn)."""
    if ctx.reduction == "none":
        return g.reshape(-1) * valid
    per_row = 1.0
    if ctx.reduction == "mean":
        per_row = 1.0 / backend.array_module(valid).maximum(ctx.n_valid, 1)
    return g * (valid * per_row).astype(dtype, copy=False)


class CrossEntropy(Function):
    # Per row i with target t, C classes, smoothing s, log-probabilities lp = log_softmax(x):
    #   loss_i = -(1 - s) lp[t] - (s / C) sum_c lp[c]     (0 for ignored rows)
    #   dloss_i/dx = softmax(x) - q,  with q = (1 - s) onehot(t) + s / C
    # 'mean' divides by the number of non-ignored rows, as torch does (no row left: the gradient is 0).
    # Forward keeps softmax(x), which it computes on the way to lp anyway (lp = x - m - log sum e^(x-m)
    # needs only the row sums of e^(x-m), the picked entries and, for smoothing, the row sums of x - m),
    # so backward neither recomputes it nor holds lp. With create_graph, softmax(x) is recomputed from
    # the logits as a Tensor (the Softmax primitive), so the same formula is recorded.
    op = "cross_entropy"
    rule = "dlogits = (softmax(logits) - target distribution) * G / rows"
    floating_inputs = (0,)

    @staticmethod
    def forward(ctx, logits, target, ignore_index, label_smoothing, reduction):
        x, t, valid = _cross_entropy_rows(ctx, logits, target, ignore_index, reduction)
        xp = backend.array_module(x)
        rows, C = xp.arange(x.shape[0]), x.shape[1]
        shifted = in_threads(xp.subtract, x, max_along(x, -1))  # x - m: the one new (rows, C) array
        picked = shifted[rows, t]                               # x[t] - m
        if label_smoothing > 0:
            shifted_sum = sum_along(shifted, -1)[:, 0]          # sum_c (x[c] - m)
        probs = in_threads(xp.exp, shifted, out=shifted)       # e^(x - m), in place
        sums = sum_along(probs, -1)                             # (rows, 1)
        log_sums = xp.log(sums[:, 0])
        loss = log_sums - picked                                # -lp[t]
        if label_smoothing > 0:                                 # sum_c lp[c] = shifted_sum - C log_sums
            loss = (1 - label_smoothing) * loss - (label_smoothing / C) * (shifted_sum - C * log_sums)
        loss = xp.where(valid, loss, xp.zeros((), dtype=loss.dtype))
        in_threads(xp.divide, probs, sums, out=probs)          # softmax(x), kept for backward
        return _cross_entropy_reduce(ctx, loss, probs, t, valid, logits, target.shape, label_smoothing, reduction)

    @staticmethod
    def backward(ctx, g):
        probs, t, valid, logits = ctx.saved_tensors
        s, C = ctx.smoothing, probs.shape[1]
        weight = _cross_entropy_row_weight(ctx, g, valid, probs.dtype)
        xp = backend.array_module(probs)
        if isinstance(g, Tensor):
            q = xp.full(probs.shape, s / C, dtype=probs.dtype)  # the target distribution, a constant
            q[xp.arange(q.shape[0]), t] += 1 - s
            probs = Softmax.apply(logits.reshape(-1, C), 1)
            return ((probs - q) * weight.reshape(-1, 1)).reshape(ctx.shape), None, None, None, None
        dx = in_threads(xp.subtract, probs, s / C)     # a new array: probs may be read again (retain_graph)
        dx[xp.arange(dx.shape[0]), t] -= 1 - s
        in_threads(xp.multiply, dx, weight.astype(dx.dtype, copy=False)[:, None], out=dx)
        return dx.reshape(ctx.shape), None, None, None, None

    @staticmethod
    def forward_cuda(ctx, logits, target, ignore_index, label_smoothing, reduction):
        x, t, valid = _cross_entropy_rows(ctx, logits, target, ignore_index, reduction)
        loss, logp = kernels.cross_entropy_forward(x, t, valid, label_smoothing)
        return _cross_entropy_reduce(ctx, loss, logp, t, valid, logits, target.shape, label_smoothing, reduction)

    @staticmethod
    def backward_cuda(ctx, g):
        logp, t, valid, _ = ctx.saved_tensors
        weight = _cross_entropy_row_weight(ctx, g, valid, logp.dtype)
        return kernels.cross_entropy_backward(logp, t, weight, ctx.smoothing).reshape(ctx.shape), None, None, None, None


tensor.register_primitives(sys.modules[__name__])     # Tensor's methods call the classes above
