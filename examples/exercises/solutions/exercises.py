"""Solutions to examples/exercises/exercises.py (the checks in check.py run against this file in CI)."""
import math

import numpy as np

import tinygrad_tx as tx
from tinygrad_tx.primitives import unbroadcast


class Softplus(tx.Function):
    # y = log(1 + e^x) = max(x, 0) + log(1 + e^-|x|)     dy/dx = sigmoid(x)
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * np.exp(-np.logaddexp(0.0, -x))          # sigmoid(x), without overflow at -1000


def logsumexp(x, axis=-1):
    m = x.detach().max(axis=axis, keepdims=True)           # a constant shift: any value gives the same result
    return (x - m).exp().sum(axis=axis, keepdims=True).log().squeeze(axis) + m.squeeze(axis)


class BrokenMul(tx.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return grad * a, grad * b


class FixedMul(tx.Function):
    # y = a * b     da = G * b, db = G * a, each summed back to its input's shape (broadcasting)
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return unbroadcast(grad * b, a.shape), unbroadcast(grad * a, b.shape)


def topological_order(root):
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        for parent in node.parents:
            if isinstance(parent, tx.Function) and parent not in seen:
                stack.append((parent, False))
    return order


def attention_head(x, w_q, w_k, w_v, mask=None):
    q, k, v = x @ w_q, x @ w_k, x @ w_v                                   # (T, d_k) each
    scores = (q @ k.transpose(0, 1)) * (1.0 / math.sqrt(w_q.shape[1]))    # (T, T)
    if mask is not None:
        scores = scores.masked_fill(~mask, -1e9)
    weights = scores.softmax(axis=-1)                                     # (T, T)
    return weights @ v, weights


def cross_entropy_grad(logits, targets, smoothing):
    n, c = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    q = np.full((n, c), smoothing / c)
    q[np.arange(n), targets] += 1 - smoothing
    return (p - q) / n


def central_difference_gradient(f, x, h=1e-6):
    x = np.array(x, dtype=np.float64)                                     # a copy: the caller's x stays
    grad = np.zeros_like(x)
    flat, out = x.reshape(-1), grad.reshape(-1)
    for j in range(flat.size):
        orig = flat[j]
        flat[j] = orig + h
        plus = f(x)
        flat[j] = orig - h
        minus = f(x)
        flat[j] = orig
        out[j] = (plus - minus) / (2 * h)
    return grad
