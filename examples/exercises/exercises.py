"""Exercises: write these pieces of an autodiff engine and a Transformer yourself.

Each function or class below raises NotImplementedError. Fill it in, then run the checks:

    python examples/exercises/check.py                    # every exercise, against this file
    python examples/exercises/check.py softplus           # one exercise
    python -m pytest examples/exercises/check.py          # the same checks as pytest tests

A check says PASS when your answer is right, and otherwise what went wrong. The lesson
(docs/autodiff.md) and the guide (docs/illustrated.md) explain everything used here. The solutions
are in solutions/ -- try first.
"""
import numpy as np

import tinygrad_tx as tx


# 1. Softplus as a new primitive. softplus(x) = log(1 + e^x), a smooth ReLU.
#    forward: keep it finite for x = +-1000 (hint: log(1 + e^x) = max(x, 0) + log(1 + e^-|x|), np.log1p).
#    backward: d softplus / dx = sigmoid(x) = 1 / (1 + e^-x); save what you need with ctx.save_for_backward.
class Softplus(tx.Function):
    @staticmethod
    def forward(ctx, x):                # x: a NumPy array
        raise NotImplementedError("exercise 1: Softplus.forward")

    @staticmethod
    def backward(ctx, grad):            # grad: dL/d(output), an array of x's shape
        raise NotImplementedError("exercise 1: Softplus.backward")


# 2. log-sum-exp along an axis, composed from Tensor operations (no new primitive): the engine
#    differentiates it for you. Make it stable: logsumexp([1000, 1000]) is 1000 + log 2, not inf.
#    Its gradient is softmax(x) along that axis: the check compares.
def logsumexp(x: tx.Tensor, axis: int = -1) -> tx.Tensor:
    raise NotImplementedError("exercise 2: logsumexp")


# 3. Find the bug. BrokenMul's backward is wrong in two ways when its inputs broadcast, e.g.
#    (2, 3) * (3,). Write FixedMul with a correct backward (hint: tinygrad_tx.primitives.unbroadcast).
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
    @staticmethod
    def forward(ctx, a, b):
        raise NotImplementedError("exercise 3: FixedMul.forward")

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("exercise 3: FixedMul.backward")


# 4. The topological order of a graph, without recursion. `root` is a graph node (y._ctx for a
#    tensor y); a node's inputs are in node.parents (a parent is a tx.Function node, a leaf Tensor, or
#    None). Return every node reachable from root (Functions only), each after all of its parents,
#    each once. A chain 10,000 ops deep must work.
def topological_order(root: tx.Function) -> list:
    raise NotImplementedError("exercise 4: topological_order")


# 5. One attention head from Tensor operations: x (T, d_model); w_q, w_k, w_v (d_model, d_k);
#    mask (T, T) bool, True = may attend, or None. Return (output (T, d_k), weights (T, T)) with
#    weights = softmax(Q K^T / sqrt(d_k)) over the keys, masked positions set to a large negative
#    score first (Tensor.masked_fill), and output = weights V.
def attention_head(x, w_q, w_k, w_v, mask=None):
    raise NotImplementedError("exercise 5: attention_head")


# 6. The gradient of the label-smoothed cross-entropy, by hand, in NumPy.
#    logits (N, C), targets (N,) ints, smoothing s: the target distribution q puts 1 - s + s/C on the
#    target and s/C on every other class; L = mean over rows of -sum_j q_j log softmax(logits)_j.
#    Return dL/dlogits (N, C). The guide derives it in two lines.
def cross_entropy_grad(logits: np.ndarray, targets: np.ndarray, smoothing: float) -> np.ndarray:
    raise NotImplementedError("exercise 6: cross_entropy_grad")


# 7. A gradient checker: the gradient of a scalar function f (NumPy array -> float) at x, by central
#    differences with step h, one pair of evaluations per element. Do not change x.
def central_difference_gradient(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    raise NotImplementedError("exercise 7: central_difference_gradient")
