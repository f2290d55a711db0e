"""The primitive ops: the whole contract of the engine.

Each primitive is one `Function` class with `forward` and `backward` side by side. Tensor methods,
`tinygrad_tx.functional` and `models/` only compose these. Forward receives backend arrays; `xp`
is their array module (NumPy or CuPy), so no op names either library.

Contract (grouped as below):
    elementwise    Add Sub Mul Div Neg Pow Exp Log Sqrt Tanh Sigmoid ReLU Abs Where Cast ToDevice
    reduce         Sum Max
    movement       Reshape Permute GetItem Cat
    matmul         MatMul
    softmax        Softmax LogSoftmax
    masking        MaskedFill Dropout
    normalization  LayerNorm
    lookup         Embedding
    loss           CrossEntropy
Notation in the derivative comments: g is the gradient arriving from the output (dL/dy), and each
backward returns dL/d(input) for every forward argument (None for non-tensor arguments).
"""
from __future__ import annotations

import sys

from . import backend, kernels, random, tensor
from .autograd import Function


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


# =============================================================================== elementwise
class Add(Function):
    # y = a + b        dy/da = 1, dy/db = 1
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
    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, g):
        return -g


class Pow(Function):
    # y = a ** b       dy/da = b * a^(b-1),  dy/db = a^b * log(a)
    @staticmethod
    def forward(ctx, a, b):
        y = a ** b
        ctx.save_for_backward(a, b, y)
        return y

    @staticmethod
    def backward(ctx, g):
        a, b, y = ctx.saved_tensors
        xp = backend.array_module(a)
        ga = unbroadcast(g * b * a ** (b - 1), a.shape) if ctx.needs_input_grad[0] else None
        gb = None
        if ctx.needs_input_grad[1]:
            safe_log = xp.log(xp.where(a > 0, a, 1))        # 0 where a <= 0, as torch
            gb = unbroadcast(g * y * safe_log, b.shape)
        return ga, gb


class Exp(Function):
    # y = e^x          dy/dx = e^x = y   (keep the output: cheaper than recomputing)
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
    @staticmethod
    def forward(ctx, x):
        y = backend.array_module(x).maximum(x, 0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (y > 0)


class Abs(Function):
    # y = |x|          dy/dx = sign(x)   (0 at x = 0, as torch)
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return abs(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * backend.array_module(x).sign(x)


class Where(Function):
    # y = cond ? a : b       dy/da = cond, dy/db = not cond   (cond gets no gradient)
    @staticmethod
    def forward(ctx, cond, a, b):
        ctx.save_for_backward(cond)
        ctx.shapes = a.shape, b.shape
        return backend.array_module(a).where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        (cond,) = ctx.saved_tensors
        xp = backend.array_module(g)
        sa, sb = ctx.shapes
        zero = xp.zeros((), dtype=g.dtype)
        ga = unbroadcast(xp.where(cond, g, zero), sa) if ctx.needs_input_grad[1] else None
        gb = unbroadcast(xp.where(cond, zero, g), sb) if ctx.needs_input_grad[2] else None
        return None, ga, gb


class Cast(Function):
    # y = x as another dtype      dy/dx = 1, cast back
    @staticmethod
    def forward(ctx, x, dtype):
        ctx.in_dtype = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.in_dtype), None


class ToDevice(Function):
    # y = x on another device     dy/dx = 1, moved back
    @staticmethod
    def forward(ctx, x, device):
        ctx.in_device = backend.device_of(x)
        return backend.to_device(x, device)

    @staticmethod
    def backward(ctx, g):
        return backend.to_device(g, ctx.in_device), None


# =============================================================================== reduce
def _expand_reduced(g, in_shape, axes, keepdims):
    """Put back the reduced axes of g (as size 1) so it broadcasts against the input."""
    if axes is not None and not keepdims:
        g = g.reshape([1 if i in axes else n for i, n in enumerate(in_shape)])
    return g


class Sum(Function):
    # y = sum_i x_i    dy/dx_i = 1: the gradient is copied back to every summed element
    @staticmethod
    def forward(ctx, x, axes, keepdims):
        ctx.in_shape, ctx.axes, ctx.keepdims = x.shape, axes, keepdims
        return x.sum(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        xp = backend.array_module(g)
        g = _expand_reduced(g, ctx.in_shape, ctx.axes, ctx.keepdims)
        return xp.broadcast_to(g, ctx.in_shape), None, None


class Max(Function):
    # y = max_i x_i    dy/dx_i = 1 at the maximum (shared equally among ties), else 0
    @staticmethod
    def forward(ctx, x, axes, keepdims):
        if x.size == 0:
            raise ValueError("max of an empty tensor")
        y = x.max(axis=axes, keepdims=True)
        ctx.save_for_backward(x, y)
        ctx.axes, ctx.keepdims = axes, keepdims
        return y if keepdims else y.reshape([n for i, n in enumerate(y.shape) if axes is not None and i not in axes])

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        is_max = x == y
        count = is_max.sum(axis=ctx.axes, keepdims=True)
        g = _expand_reduced(g, x.shape, ctx.axes, ctx.keepdims)
        return (is_max * (g / count)).astype(x.dtype, copy=False), None, None


# =============================================================================== movement
class Reshape(Function):
    # y = x viewed with another shape     dx = g viewed with x's shape
    @staticmethod
    def forward(ctx, x, shape):
        ctx.in_shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.in_shape), None


class Permute(Function):
    # y = x with axes reordered           dx = g with the inverse order
    @staticmethod
    def forward(ctx, x, axes):
        ctx.axes = axes
        return backend.array_module(x).transpose(x, axes)

    @staticmethod
    def backward(ctx, g):
        inverse = [0] * len(ctx.axes)
        for i, a in enumerate(ctx.axes):
            inverse[a] = i
        return backend.array_module(g).transpose(g, inverse), None


def _is_advanced(index):
    """True when the index holds an integer or bool array (NumPy's advanced indexing)."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(backend.is_array(p) or isinstance(p, list) for p in parts)


class GetItem(Function):
    # y = x[index]     dx = zeros with g written (basic) or added (repeated integer indices) at index
    @staticmethod
    def forward(ctx, x, index):
        if backend.is_array(index) and backend.device_of(index) != backend.device_of(x):
            index = backend.to_device(index, backend.device_of(x))
        ctx.in_shape, ctx.index = x.shape, index
        return x[index]

    @staticmethod
    def backward(ctx, g):
        xp = backend.array_module(g)
        dx = xp.zeros(ctx.in_shape, dtype=g.dtype)
        if _is_advanced(ctx.index):
            xp.add.at(dx, ctx.index, g)
        else:
            dx[ctx.index] = g
        return dx, None


class Cat(Function):
    # y = [x1, x2, ...] along axis        dx_i = the slice of g that x_i filled
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
        xp = backend.array_module(g)
        ga = gb = None
        shared_weight = b.ndim == 2 and a.ndim > 2     # (..., n, k) @ (k, m): x @ W in every layer
        if ctx.needs_input_grad[0]:
            bt = xp.swapaxes(b, -1, -2)
            ga = _rows_matmul(g, bt) if shared_weight else unbroadcast(g @ bt, a.shape)
        if ctx.needs_input_grad[1]:
            if shared_weight:
                # Fold the batch axes into rows: one GEMM instead of a batched product followed by
                # a sum over the batch (plain version: unbroadcast(A^T @ G, B.shape)).
                gb = a.reshape(-1, a.shape[-1]).T @ g.reshape(-1, g.shape[-1])
            else:
                gb = unbroadcast(xp.swapaxes(a, -1, -2) @ g, b.shape)
        return ga, gb


def _rows_matmul(a, b):
    """(..., n, k) @ (k, m) as one 2-D GEMM over all rows: NumPy would otherwise call BLAS once per
    batch element (same result as `a @ b`, about 1.5x faster for Transformer-sized activations)."""
    return (a.reshape(-1, a.shape[-1]) @ b).reshape(*a.shape[:-1], b.shape[-1])


# =============================================================================== softmax
class Softmax(Function):
    # y_i = e^(x_i - m) / sum_j e^(x_j - m)   (m = max x: the same value, no overflow)
    # dx = y * (g - sum_j g_j y_j)
    @staticmethod
    def forward(ctx, x, axis):
        fused = kernels.lookup("softmax_forward", x, axis)      # on CuPy: one kernel for all of it
        if fused is not None:
            y = fused(x)
        else:
            xp = backend.array_module(x)
            e = xp.exp(x - x.max(axis=axis, keepdims=True))
            y = e / e.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        fused = kernels.lookup("softmax_backward", y, ctx.axis)
        if fused is not None:
            return fused(y, g), None
        gy = g * y
        return gy - y * gy.sum(axis=ctx.axis, keepdims=True), None


class LogSoftmax(Function):
    # y_i = x_i - m - log sum_j e^(x_j - m)
    # dx = g - softmax(x) * sum_j g_j,  with softmax(x) = e^y
    @staticmethod
    def forward(ctx, x, axis):
        fused = kernels.lookup("log_softmax_forward", x, axis)  # on CuPy: one kernel for all of it
        if fused is not None:
            y = fused(x)
        else:
            xp = backend.array_module(x)
            shifted = x - x.max(axis=axis, keepdims=True)
            y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        fused = kernels.lookup("log_softmax_backward", y, ctx.axis)
        if fused is not None:
            return fused(y, g), None
        xp = backend.array_module(g)
        return g - xp.exp(y) * g.sum(axis=ctx.axis, keepdims=True), None


# =============================================================================== masking
class MaskedFill(Function):
    # y = mask ? value : x     dx = g where the mask is False, else 0
    @staticmethod
    def forward(ctx, x, mask, value):
        xp = backend.array_module(x)
        ctx.save_for_backward(mask)
        ctx.in_shape = x.shape
        return xp.where(mask, xp.asarray(value, dtype=x.dtype), x)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        xp = backend.array_module(g)
        return unbroadcast(xp.where(mask, xp.zeros((), dtype=g.dtype), g), ctx.in_shape), None, None


class Dropout(Function):
    # y = x * m / (1 - p), m ~ Bernoulli(1 - p)      dx = g * m / (1 - p)
    @staticmethod
    def forward(ctx, x, p):
        keep = random.rng(backend.device_of(x)).random(x.shape, dtype=x.dtype) >= p
        scale = (keep * (1.0 / (1.0 - p))).astype(x.dtype, copy=False)
        ctx.save_for_backward(scale)
        return x * scale

    @staticmethod
    def backward(ctx, g):
        (scale,) = ctx.saved_tensors
        return g * scale, None


# =============================================================================== normalization
class LayerNorm(Function):
    # Over the last axis (n features):
    #   mu = mean x,  var = mean (x - mu)^2,  r = 1/sqrt(var + eps),  xh = (x - mu) r
    #   y = xh * w + b
    # Backward, with gh = g * w:
    #   dx = r * (gh - mean(gh) - xh * mean(gh * xh))
    #   dw = sum over rows of g * xh,  db = sum over rows of g
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        xp = backend.array_module(x)
        n = x.shape[-1]
        for name, p in (("weight", weight), ("bias", bias)):
            if p is not None and p.shape != (n,):
                raise ValueError(f"{name} has shape {tuple(p.shape)} but the last axis of x has {n} features")
        fused = kernels.lookup("layer_norm_forward", x)         # on CuPy: one kernel for all of it
        if fused is not None:
            y, xhat, rstd = fused(x, weight, bias, eps)
            ctx.save_for_backward(xhat, rstd, weight)
            return y
        mu = x.mean(axis=-1, keepdims=True)
        centred = x - mu
        var = (centred * centred).mean(axis=-1, keepdims=True)
        rstd = 1.0 / xp.sqrt(var + eps)
        xhat = centred * rstd
        ctx.save_for_backward(xhat, rstd, weight)
        y = xhat if weight is None else xhat * weight
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, g):
        xhat, rstd, weight = ctx.saved_tensors
        fused = kernels.lookup("layer_norm_backward", xhat)
        if fused is not None:
            dx, dw, db = fused(g, xhat, rstd, weight)
            return dx, dw if ctx.needs_input_grad[1] else None, db if ctx.needs_input_grad[2] else None, None
        gh = g if weight is None else g * weight
        dx = rstd * (gh - gh.mean(axis=-1, keepdims=True) - xhat * (gh * xhat).mean(axis=-1, keepdims=True))
        rows = tuple(range(g.ndim - 1))
        dw = (g * xhat).sum(axis=rows) if ctx.needs_input_grad[1] else None
        db = g.sum(axis=rows) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None


# =============================================================================== lookup
def index_add_rows(dst, index, src):
    """dst[index[i]] += src[i] for every i, summing repeated indices (the embedding backward).

    The plain version is `xp.add.at(dst, index, src)`. The GPU runs it with atomic adds, but NumPy
    runs it one row at a time, so on the CPU we sort the indices instead and sum each run of equal
    ids with one `add.reduceat`.
    """
    xp = backend.array_module(dst)
    if backend.device_of(dst) != "cpu":
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
    @staticmethod
    def forward(ctx, idx, weight):
        if idx.dtype.kind not in "iu":
            raise TypeError(f"indices must be integers, not {idx.dtype}")
        n = weight.shape[0]
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"index out of range: ids span [{int(idx.min())}, {int(idx.max())}] "
                             f"but the table has {n} rows")
        ctx.save_for_backward(idx)
        ctx.weight_shape = weight.shape
        return weight[idx]

    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved_tensors
        xp = backend.array_module(g)
        dw = xp.zeros(ctx.weight_shape, dtype=g.dtype)
        index_add_rows(dw, idx.reshape(-1), g.reshape(-1, ctx.weight_shape[-1]))
        return None, dw


# =============================================================================== loss
class CrossEntropy(Function):
    # Per row i with target t, C classes, smoothing s, log-probabilities lp = log_softmax(x):
    #   loss_i = -(1 - s) lp[t] - (s / C) sum_c lp[c]     (0 for ignored rows)
    #   dloss_i/dx = softmax(x) - q,  with q = (1 - s) onehot(t) + s / C
    # 'mean' divides by the number of non-ignored rows, as torch does.
    op = "cross_entropy"

    @staticmethod
    def forward(ctx, logits, target, ignore_index, label_smoothing, reduction):
        xp = backend.array_module(logits)
        C = logits.shape[-1]
        if target.shape != logits.shape[:-1]:
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)} "
                             f"(expected {tuple(logits.shape[:-1])})")
        if target.dtype.kind not in "iu":
            raise TypeError(f"target must hold integer class ids, not {target.dtype}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
        x = logits.reshape(-1, C)
        t = target.reshape(-1)
        valid = t != ignore_index
        bad = valid & ((t < 0) | (t >= C))
        if bad.any():
            raise IndexError(f"target id {int(t[bad][0])} is out of range for {C} classes")
        t_safe = xp.where(valid, t, 0)
        fused = kernels.lookup("cross_entropy_forward", x)      # on CuPy: one kernel for the rows' losses
        if fused is not None:
            loss, logp = fused(x, t_safe, valid, label_smoothing)
        else:
            shifted = x - x.max(axis=1, keepdims=True)
            logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
            rows = xp.arange(x.shape[0])
            loss = -logp[rows, t_safe]
            if label_smoothing > 0:
                loss = (1 - label_smoothing) * loss - (label_smoothing / C) * logp.sum(axis=1)
            loss = xp.where(valid, loss, xp.zeros((), dtype=loss.dtype))
        n_valid = int(valid.sum())
        ctx.save_for_backward(logp, t_safe, valid)
        ctx.shape, ctx.smoothing, ctx.reduction, ctx.n_valid = logits.shape, label_smoothing, reduction, n_valid
        if reduction == "none":
            return loss.reshape(target.shape)
        total = loss.sum()
        return total if reduction == "sum" else total / xp.asarray(n_valid, dtype=total.dtype)

    @staticmethod
    def backward(ctx, g):
        logp, t, valid = ctx.saved_tensors
        xp = backend.array_module(g)
        s, C = ctx.smoothing, logp.shape[1]
        if ctx.reduction == "none":
            weight = g.reshape(-1) * valid
        else:
            scale = g / ctx.n_valid if ctx.reduction == "mean" else g
            weight = valid * scale
        fused = kernels.lookup("cross_entropy_backward", logp)
        if fused is not None:
            return fused(logp, t, weight, s).reshape(ctx.shape), None, None, None, None
        dx = xp.exp(logp)                              # softmax
        dx[xp.arange(dx.shape[0]), t] -= 1 - s
        if s > 0:
            dx -= s / C
        dx *= weight.astype(dx.dtype, copy=False)[:, None]
        return dx.reshape(ctx.shape), None, None, None, None


tensor.register_primitives(sys.modules[__name__])     # Tensor's methods call the classes above
