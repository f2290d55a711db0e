"""Neural-network functions, as in torch.nn.functional. Each is a primitive or a short composition."""
from __future__ import annotations

import math

from . import backend
from . import primitives as fn
from .tensor import Tensor


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    return fn.Softmax.apply(x, axis)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    return fn.LogSoftmax.apply(x, axis)


def relu(x: Tensor) -> Tensor:
    return fn.ReLU.apply(x)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias, with weight of shape (out_features, in_features) as in torch."""
    if x.shape[-1:] != weight.shape[-1:]:
        raise ValueError(f"linear: input has {x.shape[-1] if x.ndim else 0} features (shape {x.shape}) but "
                         f"weight {weight.shape} expects {weight.shape[-1]}")
    return fn.Linear.apply(x, weight, bias)


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Normalise over the last axis: (x - mean) / sqrt(var + eps) * weight + bias (biased variance)."""
    return fn.LayerNorm.apply(x, weight, bias, float(eps))


def embedding(indices, weight: Tensor) -> Tensor:
    """Rows of `weight` picked by integer `indices`: output shape indices.shape + (dim,)."""
    if not isinstance(indices, Tensor):
        indices = Tensor(indices, device=weight.device)
    return fn.Embedding.apply(indices, weight)


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p); identity when not training."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return fn.Dropout.apply(x, float(p))


def cross_entropy(logits: Tensor, target, ignore_index: int = -100, label_smoothing: float = 0.0,
                  reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy with optional label smoothing, matching torch.nn.functional.cross_entropy.

    Args:
        logits: (..., C) unnormalised scores.
        target: (...) integer class ids; rows equal to ignore_index count for nothing.
        label_smoothing: s in [0, 1]: the target distribution is (1 - s) one-hot + s / C.
        reduction: 'mean' (over non-ignored rows), 'sum' or 'none'.
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if not isinstance(target, Tensor):
        target = Tensor(target, device=logits.device)
    return fn.CrossEntropy.apply(logits, target, int(ignore_index), float(label_smoothing), reduction)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """x * Phi(x), Phi the standard normal CDF: 0.5 x (1 + erf(x / sqrt 2)); approximate='tanh' uses
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as torch.nn.functional.gelu."""
    if approximate == "none":
        return 0.5 * x * (1 + (x * (1 / math.sqrt(2))).erf())
    if approximate == "tanh":
        return 0.5 * x * (1 + (math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)).tanh())
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', not {approximate!r}")


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + e^(beta x)) / beta, and x itself where beta x > threshold, as torch.

    Written as relu(z) + log(1 + e^-|z|) with z = beta x, which never overflows; its derivative is
    sigmoid(z), and the second derivative follows from the primitives' rules.
    """
    z = x * beta
    smooth = (z.relu() + ((-z.abs()).exp() + 1).log()) * (1.0 / beta)
    return smooth.masked_fill(z > threshold, 0.0) + x.masked_fill(z <= threshold, 0.0)


def one_hot(target, num_classes: int = -1) -> Tensor:
    """(...) integer ids -> (..., num_classes) int64 with a 1 at each id (num_classes=-1: max id + 1)."""
    t = target.data if isinstance(target, Tensor) else backend.host_array(target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"one_hot: ids must be integers, not {t.dtype}")
    n = int(t.max()) + 1 if num_classes < 0 else num_classes
    if t.size and (int(t.min()) < 0 or int(t.max()) >= n):
        raise IndexError(f"one_hot: ids span [{int(t.min())}, {int(t.max())}] but num_classes is {n}")
    xp = backend.array_module(t)
    return Tensor((t[..., None] == xp.arange(n)).astype(backend.int64))


def nll_loss(log_probs: Tensor, target, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """The negative log-likelihood of the target classes, as torch.nn.functional.nll_loss.

    Args:
        log_probs: (N, C) log-probabilities (log_softmax of scores).
        target: (N,) integer class ids; ids equal to ignore_index count for nothing.
        reduction: 'mean' (over non-ignored rows), 'sum' or 'none'.
    """
    t = target.data if isinstance(target, Tensor) else backend.host_array(target)
    if log_probs.ndim != 2 or t.shape != log_probs.shape[:1]:
        raise ValueError(f"nll_loss: expected log_probs (N, C) and target (N,), got {log_probs.shape} and {t.shape}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"nll_loss: reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    xp = log_probs.xp
    t = xp.asarray(t)
    valid = t != ignore_index
    picked = log_probs[xp.arange(t.shape[0]), xp.where(valid, t, 0)]       # (N,) GetItem
    losses = -picked.masked_fill(~valid, 0.0)
    if reduction == "none":
        return losses
    total = losses.sum()
    return total if reduction == "sum" else total * (1.0 / max(int(valid.sum()), 1))
