"""Neural-network functions, as in torch.nn.functional. Each is a primitive or a short composition."""
from __future__ import annotations

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
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"linear: input has {x.shape[-1]} features (shape {x.shape}) but weight "
                         f"{weight.shape} expects {weight.shape[-1]}")
    y = x @ weight.transpose(0, 1)
    return y if bias is None else y + bias


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
