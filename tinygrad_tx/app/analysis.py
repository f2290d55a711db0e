"""The guide's model and the live computations its pages show; the CLI imports some of them too.

    trained = load_or_train("runs/guide")              # load that run, or train numbers-en-fr into it
    ex = translate_and_attend(trained.model, trained.vocab, SENTENCE)
    permutation_check(attention, tokens, perm)         # attention is permutation-equivariant
    out, weights, named = one_head(attention, x, head) # one head written out with named weights

Plain functions on top of the models: no prose and no pictures (docs/src/ holds the prose,
tinygrad_tx/app/figures.py the pictures).
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import dataclass

from tinygrad_tx.models.attention import scaled_dot_product_attention

import tinygrad_tx as tx
from tinygrad_tx.nn import Parameter
from tinygrad_tx.viz import host_array

from . import tasks
from .checkpoint import committed_step, has_checkpoint, load_model, read_metrics
from .config import TrainConfig
from .train import train
from .translate import Translator
from .vocab import EOS, PairVocab

TASK = "numbers-en-fr"
SENTENCE = "nine hundred and seventy-one"          # the guide's running example
SECOND_SENTENCE = "eight hundred and forty-three thousand, two hundred and fifty-six"
DEFAULT_MINUTES = 3.0
# quick=True: a tiny model on a small slice of the task, for tests that rebuild the whole guide
QUICK_MODEL = {"d_model": 32, "n_heads": 4, "d_ff": 64, "n_layers": 1, "dropout": 0.0}
QUICK_PAIRS = {"train": 2000, "valid": 50, "test": 20}
QUICK_STEPS = 30
TEST_PAIRS = 1000


def _log(message: str) -> None:
    print(f"guide: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------- the model
@dataclass
class TrainedModel:
    model: object              # models.transformer.Transformer, in eval mode
    vocab: PairVocab
    summary: str               # how it was trained, in one sentence of markdown
    steps: int | None          # training steps of the run (None: unknown)
    test_pairs: list           # held-out (english, french) pairs to report exact match on


def _quick_config(folder: str):
    """A TrainConfig for a tiny model on TSV slices of the task (written into `folder`)."""
    paths = {}
    for split in ("train", "valid"):
        paths[split] = os.path.join(folder, f"{split}.tsv")
        tasks.write_tsv(tasks.load_task(TASK, split, size=QUICK_PAIRS[split]), paths[split])
    return TrainConfig(task=None, data=paths["train"], valid=paths["valid"], model=dict(QUICK_MODEL),
                       eval_every=QUICK_STEPS)


def _last_metrics(run_dir: str) -> dict:
    """The metrics record of the run's committed checkpoint ({} when there is none)."""
    records = read_metrics(run_dir, committed_step(run_dir))
    return records[-1] if records else {}


def _describe_run(m: dict, cfg, model) -> str:
    """The model and its training in one sentence (m: the run's last metrics record, or {})."""
    c = model.config
    n_params = sum(p.data.size for p in model.parameters())
    trained = ""
    if m:
        sample = f" on {m['decoded']} of {m['valid_pairs']} pairs" if m.get("decoded", 0) < m.get("valid_pairs", 0) else ""
        trained = (f", trained for {m['step']} steps ({m['seconds'] / 60:.1f} minutes of training"
                   f"; validation exact match {m['exact_match']:.1f}%{sample})")
    data_name = cfg.task or "a slice of " + TASK
    return (f"a Transformer with d_model={c.d_model}, n_heads={c.n_heads}, d_ff={c.d_ff}, "
            f"{c.n_layers}+{c.n_layers} layers ({n_params:,} parameters) on {data_name}{trained}")


def load_or_train(checkpoint: str | None = None, steps: int | None = None, minutes: float | None = None,
                  quick: bool = False) -> TrainedModel:
    """The guide's model. A `checkpoint` run directory that holds a trained run is loaded as it is;
    otherwise a model is trained (into `checkpoint`, kept for the next build, or into a temporary
    directory), for `steps` or `minutes` (default: 3 minutes, or a few steps when `quick`)."""
    test_size = QUICK_PAIRS["test"] if quick else TEST_PAIRS
    with tempfile.TemporaryDirectory(prefix="tinygrad-tx-guide-") as tmp:
        run_dir = checkpoint or os.path.join(tmp, "run")
        if checkpoint is not None and has_checkpoint(checkpoint):
            if steps is not None or minutes is not None:
                _log(f"{checkpoint} already holds a trained run: using it as it is (steps/minutes ignored)")
            _log(f"loading {checkpoint}")
        else:
            cfg = _quick_config(tmp) if quick else TrainConfig(task=TASK)
            if steps is None and minutes is None:
                steps, minutes = (QUICK_STEPS, None) if quick else (None, DEFAULT_MINUTES)
            budget = f"{steps} steps" if steps is not None else f"{minutes:g} minutes"
            _log(f"training {TASK} for {budget} into {run_dir}")
            train(cfg, run_dir, steps=steps, minutes=minutes, progress=not quick, log=_log)
        cfg, vocab, model = load_model(run_dir)
        metrics = _last_metrics(run_dir)
        summary, steps_done = _describe_run(metrics, cfg, model), metrics.get("step")
    unknown: list[str] = []
    for sentence in (SENTENCE, SECOND_SENTENCE):
        vocab.encode_source(sentence, unknown)
    if unknown:
        raise ValueError(f"the guide needs a {TASK} model, but the checkpoint's source vocabulary lacks "
                         f"{sorted(set(unknown))} (words of its examples)")
    test_pairs = tasks.load_task(TASK, "test", seed=cfg.seed, size=test_size)
    return TrainedModel(model, vocab, summary, steps_done, test_pairs)


# ---------------------------------------------------------------------------- live computations
@dataclass
class Translation:
    """One sentence through the model: its tokens on both sides, with every layer's `.attn` filled."""
    sentence: str
    translation: str
    src_ids: list
    src_tokens: list           # the encoder's tokens, <eos> included
    tgt_in_tokens: list        # the decoder's input: <bos> and the translation
    tgt_out_tokens: list       # what the decoder predicts at each position: the translation and <eos>


def translate_and_attend(model, vocab, sentence: str) -> Translation:
    """Translate greedily, then run the model once more on its own translation (teacher forcing), so
    that every MultiHeadAttention keeps the weights of this sentence in `.attn`."""
    translator = Translator(model, vocab)
    src_ids = vocab.encode_source(sentence)
    out_ids = translator.decode_ids([src_ids])[0]
    if EOS in out_ids:
        out_ids = out_ids[:out_ids.index(EOS) + 1]
    with tx.no_grad():
        model.eval()
        src = tx.Tensor([src_ids], dtype=tx.int64, device=translator.model_device)
        tgt_in = tx.Tensor([out_ids[:-1]], dtype=tx.int64, device=translator.model_device)
        model(src, tgt_in)
    return Translation(sentence, vocab.decode_target(out_ids), src_ids,
                       [vocab.src.tokens[i] for i in src_ids],
                       [vocab.tgt.tokens[i] for i in out_ids[:-1]],
                       [vocab.tgt.tokens[i] for i in out_ids[1:]])


def embed_source(model, src_ids, positions: bool = True):
    """The encoder's input for one sentence, (T, d_model): token embeddings * sqrt(d_model), plus
    the positional encoding when `positions` (eval mode: no dropout)."""
    src = tx.Tensor([src_ids], dtype=tx.int64, device=model.src_embed.weight.device)   # (1, T)
    x = model.src_embed(src) * math.sqrt(model.config.d_model)             # (1, T, d_model)
    if positions:
        x = model.pos_encoding(x)
    return x[0]                                                             # (T, d_model)


def shuffle_through(attention, tokens, perm: list[int], positions=None):
    """Self-attention of a sentence and of its shuffled copy, compared row by row.

    Args:
        attention: a MultiHeadAttention.
        tokens: (T, d_model) token embeddings of one sentence.
        perm: the shuffle, a permutation of range(T).
        positions: None, or a function adding positions to (1, T, d_model) embeddings: they are added
            after the shuffle, as a model reading the shuffled sentence would.

    Returns:
        (attention of the shuffled tokens, the attention output shuffled), each (T, d_model).
    """
    index = tx.Tensor(perm, dtype=tx.int64, device=tokens.device)
    with tx.no_grad():
        x = tokens.unsqueeze(0)                                             # (1, T, d_model)
        xs = tokens[index].unsqueeze(0)                                     # (1, T, d_model)
        if positions is not None:
            x, xs = positions(x), positions(xs)
        of_shuffled = attention(xs, xs, xs)[0]                              # (T, d_model)
        shuffled_out = attention(x, x, x)[0][index]                         # (T, d_model)
    return of_shuffled, shuffled_out


def permutation_check(attention, tokens, perm: list[int], positions=None) -> float:
    """max |attention(shuffled tokens) - shuffle(attention(tokens))| (see shuffle_through).

    Attention compares every token with every other token and never looks at where a token sits, so
    shuffling its input rows shuffles its output rows the same way: without positions the result is
    float32 rounding (~1e-7). Positions added after the shuffle break the symmetry."""
    a, b = shuffle_through(attention, tokens, perm, positions)
    return (a - b).abs().max().item()


def one_head(attention, x, head: int, mask=None):
    """Head `head` of a MultiHeadAttention written out with its own weights, for drawing.

    The head's slices of W^Q, W^K, W^V (and biases) become leaf Parameters named after the paper,
    so the graph shows Q = x W^Q + b^Q, K, V, then models.attention.scaled_dot_product_attention.

    Returns:
        (output (T, d_k), weights (T, T), the named leaves and Q, K, V: keep them alive while drawing,
        so the drawing shows their names and values).
    """
    cols = slice(head * attention.d_k, (head + 1) * attention.d_k)
    named, projected = [], {}
    for name, proj in (("Q", attention.q_proj), ("K", attention.k_proj), ("V", attention.v_proj)):
        w = Parameter(proj.weight.data[cols].T.copy())                     # (d_model, d_k): x @ W
        w.name = f"W^{name} (head {head})"
        projected[name] = x @ w                                             # (T, d_k)
        named.append(w)
        if proj.bias is not None:
            b = Parameter(proj.bias.data[cols].copy())                      # (d_k,)
            b.name = f"b^{name}"
            projected[name] = projected[name] + b                           # (T, d_k)
            named.append(b)
        projected[name].name = name
        named.append(projected[name])
    out, weights = scaled_dot_product_attention(projected["Q"], projected["K"], projected["V"], mask)
    weights.name = "attention weights"
    out.name = f"head {head} output"
    return out, weights, named


def strongest(weights, query_tokens, key_tokens) -> list[tuple[str, str, float]]:
    """(query, the key it gives the most weight, that weight) for every row of weights (Tq, Tk)."""
    w = host_array(weights)
    return [(q, key_tokens[int(w[i].argmax())], float(w[i].max())) for i, q in enumerate(query_tokens)]



def translations_table(trained: TrainedModel, example: Translation, shown: int = 5) -> tuple[str, dict]:
    """A markdown table of the running example and the first `shown` held-out pairs, and the scores
    (exact_match, bleu, chrf) on all the held-out pairs (greedy decoding)."""
    translator = Translator(trained.model, trained.vocab)
    metrics = translator.evaluate(trained.test_pairs, warn=lambda m: None)
    pairs = trained.test_pairs[:shown]
    outputs = translator.translate([s for s, _ in pairs], warn=lambda m: None)
    lines = ["| English | model output | reference |", "|---|---|---|",
             f"| {example.sentence} | {example.translation} | (the running example) |"]
    for (src, ref), hyp in zip(pairs, outputs):
        lines.append(f"| {src} | {hyp} | {trained.vocab.tokenizer.normalize(ref)} |")
    return "\n".join(lines), metrics


