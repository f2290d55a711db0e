"""The Transformer of "Attention Is All You Need", built only from tinygrad_tx's public API.

Read in order: attention (scaled dot-product and multi-head attention) -> transformer (layers,
stacks, masks, positional encodings, the model) -> decoding (greedy and beam search).
"""
from .attention import KVCache, MultiHeadAttention, scaled_dot_product_attention
from .decoding import beam_search, greedy_decode
from .transformer import (
    Decoder,
    DecoderLayer,
    Encoder,
    EncoderLayer,
    PositionalEncoding,
    Transformer,
    TransformerConfig,
    causal_mask,
    padding_mask,
    sinusoidal_encoding,
)

__all__ = [
    "Decoder",
    "DecoderLayer",
    "Encoder",
    "EncoderLayer",
    "KVCache",
    "MultiHeadAttention",
    "PositionalEncoding",
    "Transformer",
    "TransformerConfig",
    "beam_search",
    "causal_mask",
    "greedy_decode",
    "padding_mask",
    "scaled_dot_product_attention",
    "sinusoidal_encoding",
]
