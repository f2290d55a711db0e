"""Padded batches of token ids, grouped by length in an order fixed by the seed.

    batch_order(lengths, batch_size, ..., seed, epoch)       -> [[example index, ...], ...]
    collate(examples, device)                                -> Batch of padded int64 Tensors

The order depends only on (seed, epoch), so an interrupted run resumes on exactly the same batches.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from tinygrad_tx import backend
from tinygrad_tx.tensor import Tensor

from .vocab import PAD

# ---------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """One padded batch. src (B, S) ends each row with <eos>; tgt_in (B, T) starts with <bos>;
    tgt_out (B, T) is tgt_in shifted left by one (the labels). Padding is PAD everywhere."""
    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    n_tokens: int               # real (non-pad) target tokens: the loss is averaged over these

    def __len__(self):
        return self.src.shape[0]


def _pad(rows, width):
    return [row + [PAD] * (width - len(row)) for row in rows]


def collate(examples, device: str | None = None) -> Batch:
    """Pad (source ids, target ids) examples to the longest of each side and make int64 tensors
    on `device` (default $TX_DEVICE, else 'cpu')."""
    if not examples:
        raise ValueError("collate: cannot make a batch of zero examples")
    src = [s for s, _ in examples]
    tgt = [t for _, t in examples]
    S = max(len(s) for s in src)
    T = max(len(t) for t in tgt) - 1
    tgt_in = _pad([t[:-1] for t in tgt], T)
    tgt_out = _pad([t[1:] for t in tgt], T)
    n_tokens = sum(len(t) - 1 for t in tgt)
    return Batch(Tensor(_pad(src, S), dtype=backend.int64, device=device),
                 Tensor(tgt_in, dtype=backend.int64, device=device),
                 Tensor(tgt_out, dtype=backend.int64, device=device), n_tokens)


def batch_order(lengths, batch_size: int, unit: str = "sentences", seed: int = 0, epoch: int = 0,
                shuffle: bool = True) -> list[list[int]]:
    """Group example indices into batches of similar length, in an order fixed by (seed, epoch).

    Examples are shuffled, stably sorted by length (so ties stay random), cut into batches of
    `batch_size` sentences, or of at most `batch_size` padded tokens when unit='tokens'
    (fairseq's --max-tokens), and the batches themselves are shuffled. Batching by similar length
    keeps padding, and wasted work, small.

    Args:
        lengths: per example, its padded cost: max(source length, target length).
        shuffle: False sorts by length without any randomness (for evaluation and decoding).
    """
    if unit not in ("sentences", "tokens"):
        raise ValueError(f"batch unit must be 'sentences' or 'tokens', not {unit!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = list(range(len(lengths)))
    rng = random.Random(f"batches:{seed}:{epoch}")
    if shuffle:
        rng.shuffle(order)
    order.sort(key=lambda i: lengths[i])
    batches, current, longest = [], [], 0
    for i in order:
        new_longest = max(longest, lengths[i])
        full = (len(current) >= batch_size if unit == "sentences"
                else (len(current) + 1) * new_longest > batch_size)
        if current and full:
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches
