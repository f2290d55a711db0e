"""Scaled dot-product attention and multi-head attention ("Attention Is All You Need", section 3.2).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V
    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O,   head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)

Built only from tinygrad_tx's public API: linear, cat, slicing, matmul, masked_fill, softmax, dropout,
reshape, transpose.
"""
from __future__ import annotations

import math

import tinygrad_tx as tx
from tinygrad_tx import functional as F
from tinygrad_tx import nn


def scaled_dot_product_attention(q, k, v, mask=None, dropout_p=0.0, training=False):
    """softmax(q k^T / sqrt(d_k)) v, for any number of leading batch axes.

    Args:
        q: (..., Tq, d_k) queries.
        k: (..., Tk, d_k) keys.
        v: (..., Tk, d_v) values.
        mask: bool Tensor broadcastable to the scores (..., Tq, Tk); True means "may attend".
            Masked scores become the most negative finite value of the dtype (not -inf), so a
            query row that may attend nowhere gets uniform weights instead of NaN.
        dropout_p: dropout on the attention weights, applied only when `training`.

    Returns:
        (output (..., Tq, d_v), weights (..., Tq, Tk)).
    """
    d_k = q.shape[-1]
    # 1. Similarity of every query with every key, scaled so the softmax does not saturate (the
    #    queries are scaled rather than the scores: (q / sqrt(d_k)) k^T is the same, and q is the
    #    smaller array once Tk > d_k).
    scores = (q * (1.0 / math.sqrt(d_k))) @ k.transpose(-2, -1)    # (..., Tq, Tk)
    # 2. Positions a query may not see (padding, the future) get no weight.
    if mask is not None:
        if not isinstance(mask, tx.Tensor):
            mask = tx.Tensor(mask, device=scores.device)
        scores = scores.masked_fill(~mask, float(tx.backend.finfo(scores.dtype).min))
    # 3. Each query's weights over the keys sum to 1.
    weights = scores.softmax(axis=-1)                                # (..., Tq, Tk)
    weights = F.dropout(weights, dropout_p, training)
    # 4. The output is the weighted average of the values.
    return weights @ v, weights                                      # (..., Tq, d_v)


class KVCache:
    """The keys and values one attention layer has already projected, kept between decoding steps.

    grow=True  (decoder self-attention): each step appends the keys and values of the new tokens,
               so step t projects one token instead of all t.
    grow=False (cross-attention): the encoder memory is projected at the first step and reused.
    """

    def __init__(self, grow: bool):
        self.grow = grow
        self.k = None       # (B, n_heads, T_cached, d_k)
        self.v = None       # (B, n_heads, T_cached, d_k)

    def __len__(self):
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k, v):
        """Store the newly projected keys/values (appended when growing); return all of them."""
        if self.grow and self.k is not None:
            k = tx.cat([self.k, k], axis=2)                          # (B, n_heads, T_cached + T, d_k)
            v = tx.cat([self.v, v], axis=2)                          # (B, n_heads, T_cached + T, d_k)
        self.k, self.v = k, v
        return k, v

    def reorder(self, rows):
        """Keep batch rows `rows` (a list of ints) in that order: beam search follows its beams."""
        if self.k is not None:
            index = tx.Tensor(list(rows), device=self.k.device)
            self.k, self.v = self.k[index], self.v[index]            # (len(rows), n_heads, T_cached, d_k)


class MultiHeadAttention(nn.Module):
    """n_heads attentions side by side, each in its own d_k = d_model / n_heads subspace.

    The same module does self-attention (query = key = value = x) and cross-attention (queries from
    the decoder, keys and values from the encoder output). The last attention weights are kept in
    `.attn`, shape (B, n_heads, Tq, Tk), detached from the graph, for pictures.

    W^Q, W^K and W^V are three Linear modules (checkpoints name them `q_proj`, `k_proj`, `v_proj`),
    each one GEMM for all heads. Stacking the three weights into one matrix, so that one product
    makes Q, K and V, was measured slower on the CPU: slicing the stacked output apart costs a
    zero-filled gradient of the full stacked width per slice in backward (a `base` training step
    757 ms stacked against 748 ms separate, `paper` 2836 against 2693 ms, alternating in one process).
    """

    def __init__(self, d_model, n_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MultiHeadAttention: d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.d_k = d_model, n_heads, d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)       # W^Q of all heads side by side
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)       # W^K
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)       # W^V
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)     # W^O
        self.attn = None

    def _split_heads(self, x):
        B, T, _ = x.shape
        x = x.reshape(B, T, self.n_heads, self.d_k)                # (B, T, n_heads, d_k)
        return x.transpose(1, 2)                                   # (B, n_heads, T, d_k)

    def forward(self, query, key, value, mask=None, cache=None):
        """
        Args:
            query: (B, Tq, d_model); key, value: (B, Tk, d_model).
            mask: bool, broadcastable to (B, n_heads, Tq, Tk), True = may attend. A padding mask
                (B, 1, 1, Tk), a causal mask (Tq, Tk), or both combined with &.
            cache: a KVCache for step-by-step decoding. Growing: key/value hold only the new
                tokens and attention covers every cached token too. Not growing: key/value are
                projected on the first call only.

        Returns:
            (B, Tq, d_model).
        """
        B, Tq, _ = query.shape
        # 1. Project the queries, keys and values, and split d_model into n_heads subspaces.
        q = self.q_proj(query)                                     # (B, Tq, d_model)
        if cache is not None and not cache.grow and cache.k is not None:
            k, v = cache.k, cache.v                                # (B, n_heads, Tk, d_k)
        else:
            k = self._split_heads(self.k_proj(key))                # (B, n_heads, Tk, d_k)
            v = self._split_heads(self.v_proj(value))              # (B, n_heads, Tk, d_k)
            if cache is not None:
                k, v = cache.update(k, v)                          # (B, n_heads, T_cached + Tk, d_k)
        q = self._split_heads(q)                                   # (B, n_heads, Tq, d_k)
        # 2. Attention in every head at once (the heads are a batch axis).
        x, weights = scaled_dot_product_attention(q, k, v, mask, self.dropout, self.training)
        self.attn = weights.detach()                               # (B, n_heads, Tq, Tk)
        # 3. Concatenate the heads back into d_model.
        x = x.transpose(1, 2)                                      # (B, Tq, n_heads, d_k)
        x = x.reshape(B, Tq, self.d_model)                         # (B, Tq, d_model)
        # 4. Mix the heads with the output projection W^O.
        return self.out_proj(x)

    def extra_repr(self):
        return f"d_model={self.d_model}, n_heads={self.n_heads}, dropout={self.dropout}"
