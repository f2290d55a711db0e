"""models/decoding.py: greedy decoding and beam search, with and without the key/value cache."""
import itertools
import math

import numpy as np
import pytest
from conftest import to_host

import tinygrad_tx as tx
from tinygrad_tx.models.decoding import beam_search, greedy_decode
from tinygrad_tx.models.transformer import Transformer, TransformerConfig, causal_mask, padding_mask

PAD, BOS, EOS = 0, 1, 2


def tiny_model(device, seed=0, tgt_vocab=13, norm_first=False):
    tx.manual_seed(seed)
    config = TransformerConfig(src_vocab=11, tgt_vocab=tgt_vocab, d_model=16, n_heads=2, d_ff=32, n_layers=2,
                               dropout=0.1, max_len=32, norm_first=norm_first, pad_id=PAD)
    return Transformer(config).to(device=device, dtype="float64")


def source(device):
    return tx.Tensor([[3, 4, 5, 6, 7, EOS], [8, 9, 10, EOS, PAD, PAD], [5, 5, EOS, PAD, PAD, PAD]], device=device)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_cached_decoder_steps_equal_the_full_decoder(device, norm_first):
    model = tiny_model(device, norm_first=norm_first).eval()
    src = source(device)
    tgt = tx.Tensor([[BOS, 3, 7, 4, 9], [BOS, 5, 5, 6, 2], [BOS, 8, 3, 3, 10]], device=device)
    memory = model.encode(src)
    full = to_host(model.decode(memory, tgt, None, causal_mask(5, device)))             # (B, 5, d_model)
    cache = model.decoder.init_cache()
    steps = [to_host(model.decode(memory, tgt[:, t:t + 1], None, cache=cache)) for t in range(5)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-10, atol=1e-10)
    assert len(cache[0]["self_attn"]) == 5 and len(cache[1]["cross_attn"]) == src.shape[1]


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_greedy_with_and_without_cache_give_the_same_tokens(device, norm_first):
    model = tiny_model(device, norm_first=norm_first)
    src = source(device)
    cached = to_host(greedy_decode(model, src, 12, BOS, EOS))
    uncached = to_host(greedy_decode(model, src, 12, BOS, EOS, use_cache=False))
    np.testing.assert_array_equal(cached, uncached)
    assert model.training                       # decoding ran in eval mode, then restored the mode


def test_greedy_format_and_reference(device):
    model = tiny_model(device, seed=3)
    src = source(device)
    ys = to_host(greedy_decode(model, src, 10, BOS, EOS))
    assert ys.dtype == np.int64 and ys.shape[0] == 3 and ys.shape[1] <= 10
    assert np.all(ys[:, 0] == BOS)
    for row in ys:
        ends = np.flatnonzero(row == EOS)
        if ends.size:
            assert np.all(row[ends[0] + 1:] == PAD)
    # Reference: the argmax of the full model's logits at the last position, one row at a time.
    model.eval()
    for b in range(3):
        prefix = [BOS]
        with tx.no_grad():
            while len(prefix) < 10 and prefix[-1] != EOS:
                logits = model(src[b:b + 1], tx.Tensor([prefix], device=device), tgt_mask=causal_mask(len(prefix)))
                prefix.append(int(to_host(logits)[0, -1].argmax()))
        np.testing.assert_array_equal(ys[b, :len(prefix)], prefix)


def test_greedy_stops_early_when_every_row_ends(device):
    model = tiny_model(device)
    with tx.no_grad():                          # make EOS the only likely token
        model.generator.bias.data[EOS] = 1e3
    ys = to_host(greedy_decode(model, source(device), 20, BOS, EOS))
    np.testing.assert_array_equal(ys, [[BOS, EOS]] * 3)


@pytest.mark.parametrize("beam_size", [2, 4])
def test_beam_search_with_and_without_cache_give_the_same_tokens(device, beam_size):
    model = tiny_model(device, seed=1)
    src = source(device)
    cached = to_host(beam_search(model, src, beam_size=beam_size, max_len=10, bos_id=BOS, eos_id=EOS))
    uncached = to_host(beam_search(model, src, beam_size=beam_size, max_len=10, bos_id=BOS, eos_id=EOS,
                                   use_cache=False))
    np.testing.assert_array_equal(cached, uncached)
    assert cached.shape[0] == 3 and cached.shape[1] <= 10 and np.all(cached[:, 0] == BOS)


def test_beam_size_one_is_greedy(device):
    for seed in range(3):
        model = tiny_model(device, seed=seed)
        src = source(device)
        np.testing.assert_array_equal(
            to_host(beam_search(model, src, beam_size=1, max_len=12, bos_id=BOS, eos_id=EOS)),
            to_host(greedy_decode(model, src, 12, BOS, EOS)))


def exhaustive_best(model, src_row, max_len, alpha, device):
    """Score every possible output of at most max_len tokens (BOS included); return the best by
    log P(Y) / ((5 + |Y|) / 6)^alpha. Tiny vocabularies only."""
    vocab = model.config.tgt_vocab
    best, best_score = None, -math.inf
    src_mask = padding_mask(src_row, PAD)
    memory = model.encode(src_row, src_mask)
    for n in range(1, max_len):
        for body in itertools.product(range(vocab), repeat=n):
            if EOS in body[:-1]:
                continue                        # a hypothesis ends at its first EOS
            if body[-1] != EOS and n < max_len - 1:
                continue                        # unfinished hypotheses only at max_len
            ys = tx.Tensor([[BOS, *body]], device=device)
            h = model.decode(memory, ys[:, :-1], src_mask, causal_mask(n, device))
            log_probs = to_host(tx.functional.log_softmax(model.generator(h), axis=-1))[0]
            score = sum(log_probs[i, tok] for i, tok in enumerate(body)) / ((5 + n) / 6) ** alpha
            if score > best_score:
                best, best_score = [BOS, *body], score
    return best


def test_beam_search_wide_enough_finds_the_exhaustive_best(device):
    """With beam_size >= vocab^(max_len - 1) nothing is pruned: beam search must return the
    hypothesis with the best length-normalised score among all of them."""
    vocab, max_len = 5, 4
    for seed in (0, 1, 3, 4, 11):               # seeds where greedy misses the best hypothesis, and others
        model = tiny_model(device, seed=seed, tgt_vocab=vocab).eval()
        src = source(device)[:1]
        with tx.no_grad():
            expected = exhaustive_best(model, src, max_len, 0.6, device)
        got = to_host(beam_search(model, src, beam_size=vocab ** (max_len - 1), max_len=max_len,
                                  bos_id=BOS, eos_id=EOS, length_penalty=0.6))[0]
        np.testing.assert_array_equal(got[:len(expected)], expected)
        assert np.all(got[len(expected):] == PAD)



def reference_beam_search(model, src_row, beam_size, max_len, alpha, device):
    """The same search written plainly: hypotheses as Python lists, the full decoder for every
    prefix, candidates sorted by log P / lp(length); a finished hypothesis carries over unchanged."""
    def normalised(h):
        _, logp, length, _ = h
        return logp / ((5 + length) / 6) ** alpha

    src_mask = padding_mask(src_row, PAD)
    memory = model.encode(src_row, src_mask)
    beams = [([BOS], 0.0, 0, False)]                                  # (tokens, log P, length, finished)
    for _ in range(max_len - 1):
        if all(h[3] for h in beams):
            break
        candidates = []
        for tokens, logp, length, done in beams:
            if done:
                candidates.append((tokens + [PAD], logp, length, True))
                continue
            h = model.decode(memory, tx.Tensor([tokens], device=device), src_mask, causal_mask(len(tokens), device))
            log_probs = to_host(tx.functional.log_softmax(model.generator(h[:, -1]), axis=-1))[0]
            candidates += [(tokens + [tok], logp + log_probs[tok], length + 1, tok == EOS)
                           for tok in range(len(log_probs))]
        beams = sorted(candidates, key=normalised, reverse=True)[:beam_size]
    tokens, _, length, _ = max(beams, key=normalised)
    return tokens[:1 + length]


@pytest.mark.parametrize("beam_size", [2, 3])
def test_beam_search_matches_a_plain_reference(device, beam_size):
    for seed in range(4):
        model = tiny_model(device, seed=seed).eval()
        src = source(device)
        got = to_host(beam_search(model, src, beam_size=beam_size, max_len=8, bos_id=BOS, eos_id=EOS))
        with tx.no_grad():
            for b in range(src.shape[0]):
                expected = reference_beam_search(model, src[b:b + 1], beam_size, 8, 0.6, device)
                np.testing.assert_array_equal(got[b, :len(expected)], expected)
                assert np.all(got[b, len(expected):] == PAD)


class ScriptedModel:
    """Stands in for a Transformer in beam_search(use_cache=False): the next-token probabilities
    are looked up by prefix, so a test can set up exactly the competition it wants to check."""

    def __init__(self, table, vocab):
        self.table, self.training = table, False
        self.config = TransformerConfig(src_vocab=vocab, tgt_vocab=vocab, pad_id=PAD)
        self.generator = lambda h: h                               # decode already returns logits

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def encode(self, src, src_mask):
        return tx.Tensor(np.zeros((src.shape[0], 1, 1)))

    def next_log_probs(self, prefix):
        probs = np.full(self.config.tgt_vocab, 1e-6)               # every other token: nearly impossible
        for token, p in self.table.get(tuple(prefix), {}).items():
            probs[token] = p
        return np.log(probs / probs.sum())

    def decode(self, memory, tgt, src_mask=None, tgt_mask=None, cache=None):
        rows = tgt.tolist()
        return tx.Tensor(np.stack([[self.next_log_probs(row[:t + 1]) for t in range(len(row))] for row in rows]))


def test_length_penalty_decides_between_a_short_finished_and_a_longer_hypothesis():
    """[BOS EOS] has the best log P (log 0.4); [BOS a a b EOS] the best GNMT score when alpha = 2.
    Ranking the candidates of each step by log P alone would prune [BOS a a b] at step 3, and so
    would a finished hypothesis whose length kept growing."""
    a, b = 3, 4
    table = {(BOS,): {EOS: 0.4, a: 0.6},
             (BOS, a): {a: 0.9, b: 0.1},
             (BOS, a, a): {a: 0.6, b: 0.4},
             (BOS, a, a, a): {a: 0.6, EOS: 0.4},
             (BOS, a, a, b): {EOS: 1.0}}
    model = ScriptedModel(table, vocab=5)
    src = tx.Tensor([[3, 4]])
    for alpha, expected in [(2.0, [BOS, a, a, b, EOS]), (0.0, [BOS, EOS, PAD, PAD, PAD])]:
        got = to_host(beam_search(model, src, beam_size=2, max_len=5, bos_id=BOS, eos_id=EOS,
                                  length_penalty=alpha, use_cache=False))
        np.testing.assert_array_equal(got[0], expected[:got.shape[1]])
        assert got.shape[1] == len(np.trim_zeros(np.array(expected), "b"))


def test_a_host_batch_decodes_on_the_models_device(device):
    """Batches are made on the host (batching.collate); decoding moves the ids to the model."""
    model = tiny_model(device, seed=3)
    on_device = to_host(greedy_decode(model, source(device), 10, BOS, EOS))
    host_src = source("cpu")
    greedy = greedy_decode(model, host_src, 10, BOS, EOS)
    beam = beam_search(model, host_src, beam_size=2, max_len=10, bos_id=BOS, eos_id=EOS)
    assert greedy.device == device and beam.device == device
    np.testing.assert_array_equal(to_host(greedy), on_device)
