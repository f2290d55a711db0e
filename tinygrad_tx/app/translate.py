"""A trained model with its vocabulary: text in, text out, and the scores of a translation."""
from __future__ import annotations

import warnings

from tinygrad_tx.models.decoding import beam_search, greedy_decode

from . import batching
from .checkpoint import load_model
from .vocab import BOS, EOS, PairVocab


# ---------------------------------------------------------------------------- metrics
def score(hypotheses: list[str], references: list[str]) -> dict:
    """exact_match (% of sentences identical to the reference), corpus BLEU and chrF (sacrebleu).

    Without sacrebleu (a plain `pip install tinygrad-tx`), BLEU and chrF are None and a warning
    says how to get them; the exact match needs nothing.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"score: {len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        raise ValueError("score: nothing to score (no references)")
    exact = sum(h == r for h, r in zip(hypotheses, references))
    metrics = {"exact_match": 100.0 * exact / len(references), "bleu": None, "chrf": None}
    try:
        import sacrebleu
    except ImportError:
        warnings.warn("BLEU and chrF need sacrebleu: pip install 'tinygrad-tx[train]'", stacklevel=2)
        return metrics
    metrics["bleu"] = sacrebleu.corpus_bleu(hypotheses, [references]).score
    metrics["chrf"] = sacrebleu.corpus_chrf(hypotheses, [references]).score
    return metrics


def format_score(value, digits: int = 1) -> str:
    """A metric for printing: 'n/a' where it could not be computed (BLEU without sacrebleu)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------- translating
class Translator:
    """A trained model with its vocabulary: text in, text out (greedy or beam search)."""

    def __init__(self, model, vocab: PairVocab, batch_size: int = 64):
        self.model, self.vocab, self.batch_size = model, vocab, batch_size

    @classmethod
    def load(cls, run_dir: str, device: str | None = None) -> Translator:
        _cfg, vocab, model = load_model(run_dir, device)
        return cls(model, vocab)

    def decode_len(self, src_len: int) -> int:
        """The longest output (BOS included) for a source of src_len tokens: generous, within max_len."""
        return min(self.model.config.max_len, 2 * src_len + 16)

    def decode_ids(self, src_ids: list[list[int]], beam: int = 1) -> list[list[int]]:
        """Output token ids per source (BOS..EOS/padding included), batched by similar length."""
        lengths = [len(s) for s in src_ids]
        out = [None] * len(src_ids)
        for rows in batching.batch_order(lengths, self.batch_size, shuffle=False):
            batch = batching.collate([(src_ids[i], [BOS, EOS]) for i in rows], self.model_device)
            max_len = self.decode_len(batch.src.shape[1])
            if beam <= 1:
                ys = greedy_decode(self.model, batch.src, max_len, BOS, EOS)
            else:
                ys = beam_search(self.model, batch.src, beam_size=beam, max_len=max_len, bos_id=BOS, eos_id=EOS)
            for i, row in zip(rows, ys.tolist()):
                out[i] = row
        return out

    @property
    def model_device(self) -> str:
        return next(iter(self.model.parameters())).device

    def length_problem(self, text: str) -> str | None:
        """Why `text` is too long for the model, or None when it fits."""
        n = len(self.vocab.encode_source(text))
        max_len = self.model.config.max_len
        if n > max_len:
            return f"{text[:60]!r} has {n} tokens (with <eos>), more than the model's max_len={max_len}"
        return None

    def translate(self, texts: list[str], beam: int = 1, warn=None) -> list[str]:
        """Translate sentences, one output per input. Source tokens missing from the vocabulary become
        <unk>, and a sentence longer than the model's max_len gives '' (not translated); both with a
        warning (`warn(message)`, default warnings.warn)."""
        if beam < 1:
            raise ValueError(f"translate: beam must be at least 1, got {beam}")
        warn = warn or (lambda m: warnings.warn(m, stacklevel=3))
        fitting = []
        for i, text in enumerate(texts):
            problem = self.length_problem(text)
            if problem:
                warn(f"sentence {i + 1} not translated: {problem}")
            else:
                fitting.append(i)
        unknown: list[str] = []
        src_ids = [self.vocab.encode_source(texts[i], unknown) for i in fitting]
        if unknown:
            warn(f"{len(unknown)} source token(s) not in the vocabulary, translated as <unk>: "
                 + ", ".join(repr(t) for t in dict.fromkeys(unknown)))
        out = [""] * len(texts)
        for i, ids in zip(fitting, self.decode_ids(src_ids, beam) if src_ids else []):
            out[i] = self.vocab.decode_target(ids)
        return out

    def evaluate(self, pairs, beam: int = 1, warn=None) -> dict:
        """exact_match, bleu and chrf of translating the sources against the (normalised) targets."""
        hypotheses = self.translate([s for s, _ in pairs], beam, warn)
        references = [self.vocab.tokenizer.normalize(t) for _, t in pairs]
        return score(hypotheses, references)
