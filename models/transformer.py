"""The encoder-decoder Transformer of "Attention Is All You Need" (section 3), from tinygrad_tx modules.

    src -> src_embed * sqrt(d_model) + positions -> Encoder (N x EncoderLayer) -> memory
    tgt -> tgt_embed * sqrt(d_model) + positions -> Decoder (N x DecoderLayer, attending to memory)
        -> generator -> logits over the target vocabulary

Post-LN (the paper's `LayerNorm(x + Sublayer(x))`) is the default; `norm_first=True` gives pre-LN
(`x + Sublayer(LayerNorm(x))`, with a final LayerNorm after the stack), which trains more easily.
Masks are bool and True means "may attend".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import tinygrad_tx as tx
from tinygrad_tx import nn

from .attention import KVCache, MultiHeadAttention


@dataclass
class TransformerConfig:
    src_vocab: int
    tgt_vocab: int
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_layers: int = 6
    dropout: float = 0.1
    max_len: int = 512
    norm_first: bool = False
    positional: str = "sinusoidal"      # "sinusoidal" (fixed, section 3.5) or "learned"
    pad_id: int = 0

    def __post_init__(self):
        if self.positional not in ("sinusoidal", "learned"):
            raise ValueError(f"TransformerConfig: positional must be 'sinusoidal' or 'learned', "
                             f"not {self.positional!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"TransformerConfig: d_model={self.d_model} is not divisible by "
                             f"n_heads={self.n_heads}")


# ---------------------------------------------------------------------------- masks
def causal_mask(T, device=None):
    """(T, T) bool, True on and below the diagonal: position t may attend to positions <= t."""
    xp = tx.backend.get_xp(tx.backend.check_device(device))
    return tx.Tensor(xp.tril(xp.ones((T, T), dtype=tx.bool_)))


def padding_mask(tokens, pad_id):
    """(B, 1, 1, T) bool, True at real tokens: broadcasts over heads and query positions."""
    B, T = tokens.shape
    return (tokens != pad_id).reshape(B, 1, 1, T)              # (B, 1, 1, T)


# ---------------------------------------------------------------------------- positions
def sinusoidal_encoding(max_len, d_model, device=None):
    """The paper's fixed table (max_len, d_model), float32:

        PE[pos, 2i]   = sin(pos / 10000^(2i / d_model))
        PE[pos, 2i+1] = cos(pos / 10000^(2i / d_model))
    """
    xp = tx.backend.get_xp(tx.backend.check_device(device))
    pos = xp.arange(max_len, dtype=tx.float64)[:, None]                     # (max_len, 1)
    even = xp.arange(0, d_model, 2, dtype=tx.float64)                       # 2i
    angle = pos / 10000.0 ** (even / d_model)                               # (max_len, ceil(d_model / 2))
    table = xp.zeros((max_len, d_model), dtype=tx.float64)
    table[:, 0::2] = xp.sin(angle)
    table[:, 1::2] = xp.cos(angle[:, : d_model // 2])
    return tx.Tensor(table, dtype=tx.float32)


class PositionalEncoding(nn.Module):
    """Adds position information to embeddings (section 3.5), then dropout.

    "sinusoidal": the fixed table (not a parameter); "learned": an Embedding of max_len rows.
    """

    def __init__(self, d_model, max_len, dropout=0.0, kind="sinusoidal"):
        super().__init__()
        self.kind, self.max_len = kind, max_len
        if kind == "sinusoidal":
            self.table = sinusoidal_encoding(max_len, d_model)      # a plain Tensor: not trained
        elif kind == "learned":
            self.embedding = nn.Embedding(max_len, d_model)
        else:
            raise ValueError(f"PositionalEncoding: kind must be 'sinusoidal' or 'learned', not {kind!r}")
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, start=0):
        """x: (B, T, d_model) embeddings of positions start, ..., start + T - 1."""
        T = x.shape[1]
        if start + T > self.max_len:
            raise ValueError(f"PositionalEncoding: positions up to {start + T} exceed max_len={self.max_len}")
        if self.kind == "sinusoidal":
            pe = self.table[start:start + T].to(device=x.device, dtype=x.dtype)   # (T, d_model)
        else:
            pe = self.embedding.weight[start:start + T]                        # (T, d_model)
        return self.dropout(x + pe)


# ---------------------------------------------------------------------------- layers
class EncoderLayer(nn.Module):
    """Self-attention then a position-wise feed-forward network, each with residual and LayerNorm."""

    def __init__(self, d_model, n_heads, d_ff, dropout=0.1, norm_first=False):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def feed_forward(self, x):
        """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (equation 2)."""
        return self.linear2(self.dropout(self.linear1(x).relu()))

    def forward(self, x, mask=None):
        """x: (B, T, d_model); mask: True = may attend, e.g. padding_mask(src) (B, 1, 1, T)."""
        if self.norm_first:
            # 1. Self-attention on the normalised input, added to the residual stream.
            h = self.norm1(x)
            x = x + self.dropout(self.self_attn(h, h, h, mask))
            # 2. Feed-forward on the normalised stream, added to it.
            x = x + self.dropout(self.feed_forward(self.norm2(x)))
        else:
            # 1. Self-attention, residual, LayerNorm.
            x = self.norm1(x + self.dropout(self.self_attn(x, x, x, mask)))
            # 2. Feed-forward, residual, LayerNorm.
            x = self.norm2(x + self.dropout(self.feed_forward(x)))
        return x


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder output, then a feed-forward network."""

    def __init__(self, d_model, n_heads, d_ff, dropout=0.1, norm_first=False):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def feed_forward(self, x):
        """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (equation 2)."""
        return self.linear2(self.dropout(self.linear1(x).relu()))

    def init_cache(self):
        """Empty key/value caches for step-by-step decoding (see MultiHeadAttention.forward)."""
        return {"self_attn": KVCache(grow=True), "cross_attn": KVCache(grow=False)}

    def forward(self, x, memory, tgt_mask=None, memory_mask=None, cache=None):
        """
        Args:
            x: (B, T, d_model) target embeddings; memory: (B, S, d_model) encoder output.
            tgt_mask: True = may attend, e.g. causal_mask(T) & padding_mask(tgt) (B, 1, T, T).
            memory_mask: e.g. padding_mask(src) (B, 1, 1, S).
            cache: a dict from init_cache(); x then holds only the new positions.
        """
        self_cache = cache["self_attn"] if cache is not None else None
        cross_cache = cache["cross_attn"] if cache is not None else None
        if self.norm_first:
            # 1. Masked self-attention: each position sees itself and the positions before it.
            h = self.norm1(x)
            x = x + self.dropout(self.self_attn(h, h, h, tgt_mask, cache=self_cache))
            # 2. Cross-attention: queries from the decoder, keys and values from the encoder output.
            h = self.norm2(x)
            x = x + self.dropout(self.cross_attn(h, memory, memory, memory_mask, cache=cross_cache))
            # 3. Feed-forward.
            x = x + self.dropout(self.feed_forward(self.norm3(x)))
        else:
            # 1. Masked self-attention, residual, LayerNorm.
            x = self.norm1(x + self.dropout(self.self_attn(x, x, x, tgt_mask, cache=self_cache)))
            # 2. Cross-attention to the encoder output, residual, LayerNorm.
            x = self.norm2(x + self.dropout(self.cross_attn(x, memory, memory, memory_mask, cache=cross_cache)))
            # 3. Feed-forward, residual, LayerNorm.
            x = self.norm3(x + self.dropout(self.feed_forward(x)))
        return x


# ---------------------------------------------------------------------------- stacks
class Encoder(nn.Module):
    """n_layers EncoderLayers, each with its own weights; a final LayerNorm when pre-LN."""

    def __init__(self, d_model, n_heads, d_ff, n_layers, dropout=0.1, norm_first=False):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, d_ff, dropout, norm_first)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model) if norm_first else None

    def forward(self, x, mask=None):
        """x: (B, S, d_model) embedded source -> memory (B, S, d_model)."""
        for layer in self.layers:
            x = layer(x, mask)
        return x if self.norm is None else self.norm(x)


class Decoder(nn.Module):
    """n_layers DecoderLayers, each with its own weights; a final LayerNorm when pre-LN."""

    def __init__(self, d_model, n_heads, d_ff, n_layers, dropout=0.1, norm_first=False):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model, n_heads, d_ff, dropout, norm_first)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model) if norm_first else None

    def init_cache(self):
        """One cache per layer, for step-by-step decoding."""
        return [layer.init_cache() for layer in self.layers]

    def forward(self, x, memory, tgt_mask=None, memory_mask=None, cache=None):
        """x: (B, T, d_model) embedded target -> (B, T, d_model)."""
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, tgt_mask, memory_mask, cache=None if cache is None else cache[i])
        return x if self.norm is None else self.norm(x)


# ---------------------------------------------------------------------------- the model
def _xavier_uniform_(p):
    """Glorot/Xavier U(-a, a), a = sqrt(6 / (fan_in + fan_out)), as the Annotated Transformer and
    torch.nn.Transformer initialise every matrix."""
    fan_out, fan_in = p.shape[0], p.shape[1]
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    values = tx.random.rng(p.device).uniform(-bound, bound, size=p.shape)
    p.data = tx.Tensor(values, dtype=p.dtype, device=p.device).data


class Transformer(nn.Module):
    """Encoder-decoder Transformer. forward(src, tgt) -> logits (B, T, tgt_vocab)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = self.config = config
        self.src_embed = nn.Embedding(c.src_vocab, c.d_model)
        self.tgt_embed = nn.Embedding(c.tgt_vocab, c.d_model)
        self.pos_encoding = PositionalEncoding(c.d_model, c.max_len, c.dropout, c.positional)
        self.encoder = Encoder(c.d_model, c.n_heads, c.d_ff, c.n_layers, c.dropout, c.norm_first)
        self.decoder = Decoder(c.d_model, c.n_heads, c.d_ff, c.n_layers, c.dropout, c.norm_first)
        self.generator = nn.Linear(c.d_model, c.tgt_vocab)
        for p in self.parameters():
            if p.ndim > 1:
                _xavier_uniform_(p)

    def _embed(self, embedding, tokens, start=0):
        """Token embeddings scaled by sqrt(d_model) (section 3.4), plus positions."""
        x = embedding(tokens) * math.sqrt(self.config.d_model)     # (B, T, d_model)
        return self.pos_encoding(x, start)

    def encode(self, src, src_mask=None):
        """src: (B, S) token ids -> memory (B, S, d_model). src_mask defaults to padding_mask(src)."""
        if src_mask is None:
            src_mask = padding_mask(src, self.config.pad_id)
        return self.encoder(self._embed(self.src_embed, src), src_mask)

    def decode(self, memory, tgt, src_mask=None, tgt_mask=None, cache=None):
        """tgt: (B, T) token ids -> decoder output (B, T, d_model); `generator` turns it into logits.

        tgt_mask defaults to causal_mask(T) & padding_mask(tgt). With a `cache` from
        decoder.init_cache(), tgt holds only the new tokens, their positions continue after the
        cached ones, and the default mask is causal only (the cached tokens are not known here).
        """
        T = tgt.shape[1]
        start = len(cache[0]["self_attn"]) if cache else 0
        if tgt_mask is None:
            tgt_mask = causal_mask(start + T, tgt.device)[start:]    # (T, start + T)
            if cache is None:
                tgt_mask = tgt_mask & padding_mask(tgt, self.config.pad_id)   # (B, 1, T, T)
        x = self._embed(self.tgt_embed, tgt, start)
        return self.decoder(x, memory, tgt_mask, src_mask, cache=cache)

    def forward(self, src, tgt, src_mask=None, tgt_mask=None):
        """
        Args:
            src: (B, S) source token ids; tgt: (B, T) target token ids (shifted right, from BOS).
            src_mask: default padding_mask(src, pad_id) (B, 1, 1, S).
            tgt_mask: default causal_mask(T) & padding_mask(tgt, pad_id) (B, 1, T, T).

        Returns:
            logits (B, T, tgt_vocab).
        """
        # 1. Masks: padding in the source; padding and the future in the target.
        if src_mask is None:
            src_mask = padding_mask(src, self.config.pad_id)
        # 2. Encode the source once.
        memory = self.encode(src, src_mask)
        # 3. Decode every target position in parallel (teacher forcing).
        h = self.decode(memory, tgt, src_mask, tgt_mask)
        # 4. Project to the target vocabulary.
        return self.generator(h)
