"""Generating target sequences with a trained Transformer: greedy decoding and beam search.

Both run the encoder once and the decoder once per new token. With `use_cache=True` (the default)
each decoder layer keeps the keys and values of the tokens decoded so far (models.attention.KVCache),
so step t projects one token and attends from one query; with `use_cache=False` every step re-runs
the decoder over the whole prefix. Both ways give the same tokens.
"""
from __future__ import annotations

import tinygrad_tx as tx
from tinygrad_tx import functional as F

from .transformer import causal_mask, padding_mask


class _EvalMode:
    """Run a block with the model in eval mode and without recording a graph; restore the mode after."""

    def __init__(self, model):
        self.model, self.no_grad = model, tx.no_grad()

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)
        return False


class _Prefixes:
    """The growing target prefixes (rows, t) and the decoder run that scores their next token."""

    def __init__(self, model, memory, src_mask, bos_id, use_cache):
        self.model, self.memory, self.src_mask = model, memory, src_mask
        rows = memory.shape[0]
        self.ys = tx.Tensor([[bos_id]] * rows, device=memory.device)     # (rows, 1)
        self.cache = model.decoder.init_cache() if use_cache else None

    def next_token_logits(self):
        """Logits (rows, tgt_vocab) for the token after each prefix."""
        if self.cache is not None:
            # Only the newest token goes through the decoder; earlier ones are in the cache.
            h = self.model.decode(self.memory, self.ys[:, -1:], self.src_mask, cache=self.cache)  # (rows, 1, d_model)
        else:
            # The whole prefix, causally masked (no padding mask: the cache does not use one either).
            T = self.ys.shape[1]
            mask = causal_mask(T, self.ys.device)                      # (T, T)
            h = self.model.decode(self.memory, self.ys, self.src_mask, mask)   # (rows, T, d_model)
        return self.model.generator(h[:, -1])                          # (rows, tgt_vocab)

    def append(self, tokens, rows=None):
        """Append tokens (a list, one per row), after keeping only `rows` in that order (beam search)."""
        if rows is not None:
            index = tx.Tensor(list(rows), device=self.ys.device)
            self.ys = self.ys[index]                                   # (rows, t)
            if self.cache is not None:
                for layer_cache in self.cache:
                    for kv in layer_cache.values():
                        kv.reorder(rows)
        column = tx.Tensor(list(tokens), device=self.ys.device).reshape(-1, 1)   # (rows, 1)
        self.ys = tx.cat([self.ys, column], axis=1)                    # (rows, t + 1)


def _model_device(model, default):
    """The device of the model's weights (`default` for a model without parameters)."""
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    return params[0].device if params else default


def _encode(model, src, src_mask):
    # Token ids are small: bring them to the model's device (a batch made on the host works on the GPU).
    device = _model_device(model, src.device)
    src = src.to(device)
    if src_mask is not None:
        src_mask = src_mask.to(device)
    if src_mask is None:
        src_mask = padding_mask(src, model.config.pad_id)
    return model.encode(src, src_mask), src_mask


def greedy_decode(model, src, max_len, bos_id, eos_id, src_mask=None, use_cache=True):
    """Pick the most likely next token at every step.

    Args:
        model: a models.transformer.Transformer.
        src: (B, S) source token ids, on any device (they are moved to the model's).
        max_len: the longest output, BOS included.
        src_mask: default padding_mask(src, pad_id).
        use_cache: decode incrementally with key/value caches (same tokens, faster).

    Returns:
        (B, L) int64 token ids, L <= max_len, each row starting with bos_id; after a row's eos_id
        the row holds pad_id. Decoding stops early once every row has produced eos_id.
    """
    pad_id = model.config.pad_id
    with _EvalMode(model):
        # 1. Encode the source once.
        memory, src_mask = _encode(model, src, src_mask)
        prefixes = _Prefixes(model, memory, src_mask, bos_id, use_cache)
        finished = [False] * src.shape[0]
        for _ in range(max_len - 1):
            # 2. The most likely next token of every row; finished rows get padding.
            best = prefixes.next_token_logits().argmax(axis=-1).tolist()              # (B,)
            tokens = [pad_id if done else tok for done, tok in zip(finished, best)]
            # 3. Append it and note which rows have ended.
            prefixes.append(tokens)
            finished = [done or tok == eos_id for done, tok in zip(finished, tokens)]
            if all(finished):
                break
        return prefixes.ys


def _length_penalty(length, alpha):
    """GNMT's lp(Y) = ((5 + |Y|) / 6)^alpha; a hypothesis is ranked by log P(Y) / lp(Y)."""
    return ((5.0 + length) / 6.0) ** alpha


def _top_k(x, k):
    """Indices (B, k) of the k largest entries of each row of x (B, N), best first: k rounds of argmax.

    A row with fewer than k finite entries repeats an index of a -inf entry; beam search keeps such
    picks as dead beams (log P = -inf) that can never win."""
    positions = tx.Tensor(list(range(x.shape[1])), device=x.device)   # (N,)
    picks = []
    for _ in range(k):
        best = x.argmax(axis=-1)                                      # (B,)
        picks.append(best.tolist())
        x = x.masked_fill(positions == best.unsqueeze(1), float("-inf"))
    return [list(row) for row in zip(*picks)]


def beam_search(model, src, beam_size=4, max_len=64, bos_id=1, eos_id=2, length_penalty=0.6,
                src_mask=None, use_cache=True):
    """Keep the beam_size best prefixes of every source row, ranked by GNMT's length-normalised score.

    A prefix that has produced eos_id stays in the beam, frozen: its only continuation is pad_id at
    no cost, so it competes with the growing prefixes by its final score. The search stops when
    every beam has ended or the prefixes reach max_len.

    Args:
        model: a models.transformer.Transformer.
        src: (B, S) source token ids, on any device (they are moved to the model's).
        beam_size: K, the prefixes kept per source row (beam_size=1 is greedy decoding).
        max_len: the longest output, BOS included.
        length_penalty: alpha in lp(Y) = ((5 + |Y|) / 6)^alpha, |Y| = tokens after BOS (EOS included).
        src_mask: default padding_mask(src, pad_id).
        use_cache: decode incrementally with key/value caches (same tokens, faster).

    Returns:
        (B, L) int64 token ids, the best hypothesis of each row, formatted as greedy_decode's.
    """
    B, K, pad_id = src.shape[0], beam_size, model.config.pad_id
    with _EvalMode(model):
        # 1. Encode once, then give each of the K beams of a row its own copy of the memory.
        memory, src_mask = _encode(model, src, src_mask)
        beam_rows = tx.Tensor([b for b in range(B) for _ in range(K)], device=memory.device)
        memory, src_mask = memory[beam_rows], src_mask[beam_rows]     # (B*K, S, d_model), (B*K, 1, 1, S)
        prefixes = _Prefixes(model, memory, src_mask, bos_id, use_cache)
        # Only beam 0 starts live, so the first step does not pick K copies of the same token.
        scores = [0.0 if i == 0 else float("-inf") for _ in range(B) for i in range(K)]   # log P, (B*K,)
        lengths = [0] * (B * K)
        finished = [False] * (B * K)
        V = model.config.tgt_vocab
        frozen = tx.Tensor([[0.0 if i == pad_id else float("-inf") for i in range(V)]],
                           device=memory.device)                       # (1, V): log P(pad) = 0
        for _ in range(max_len - 1):
            # 2. Log-probabilities of every next token; a finished beam may only continue with pad.
            log_probs = F.log_softmax(prefixes.next_token_logits(), axis=-1)          # (B*K, V)
            done = tx.Tensor(finished, device=log_probs.device).reshape(-1, 1)     # (B*K, 1)
            log_probs = tx.where(done, frozen.to(dtype=log_probs.dtype), log_probs)
            # 3. Score every (beam, token) candidate: log P of the prefix plus the token's log-prob,
            #    divided by the length penalty of the candidate.
            candidates = tx.Tensor(scores, dtype=log_probs.dtype, device=log_probs.device).reshape(-1, 1) + log_probs
            new_lengths = [n if f else n + 1 for n, f in zip(lengths, finished)]
            penalty = tx.Tensor([_length_penalty(n, length_penalty) for n in new_lengths],
                                dtype=log_probs.dtype, device=log_probs.device).reshape(-1, 1)   # (B*K, 1)
            ranked = (candidates / penalty).reshape(B, K * V)                          # (B, K*V)
            # 4. Keep the K best candidates of each source row.
            picks = _top_k(ranked, K)                      # (B, K) flat indices p = beam * V + token
            rows = [b * K + p // V for b in range(B) for p in picks[b]]
            tokens = [p % V for b in range(B) for p in picks[b]]
            chosen = candidates.reshape(B * K * V)[tx.Tensor([r * V + t for r, t in zip(rows, tokens)],
                                                             device=log_probs.device)]
            scores = chosen.tolist()
            lengths = [new_lengths[r] for r in rows]
            finished = [finished[r] or t == eos_id for r, t in zip(rows, tokens)]
            prefixes.append(tokens, rows)
            if all(finished):
                break
        # 5. The best hypothesis of each row by its length-normalised score.
        best = []
        for b in range(B):
            beams = range(b * K, (b + 1) * K)
            best.append(max(beams, key=lambda r: scores[r] / _length_penalty(lengths[r], length_penalty)))
        ys = prefixes.ys[tx.Tensor(best, device=prefixes.ys.device)]                   # (B, t)
        # Drop the columns past the longest chosen hypothesis (padding only).
        return ys[:, : 1 + max(lengths[r] for r in best)]
