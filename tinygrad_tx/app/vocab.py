"""Text to token ids and back: the tokenizer and the source/target vocabularies.

    Tokenizer("word").tokenize(text)                         -> ["one", "thousand", ",", "nine"]
    PairVocab.build(pairs, tokenizer).encode_pair(src, tgt)  -> ([ids..., eos], [bos, ids..., eos])
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

from tinygrad_tx.serialization import atomic_write_json

from .tasks import DataError

# ---------------------------------------------------------------------------- special tokens
PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


# ---------------------------------------------------------------------------- tokenizer
# Words (letters, digits, inner apostrophes and number separators: "it's", "1,000", "3.14"),
# otherwise any single non-space character is a token of its own.
_WORD_OR_MARK = re.compile(r"\w+(?:[.,'’]\w+)*|[^\w\s]")
_ATTACH_LEFT = set(",.;:!?)]}%…")            # no space before these
_ATTACH_RIGHT = set("([{¿¡")                  # no space after these
_JOINERS = set("-/")                          # no space on either side: quatre-vingt-dix-sept


class Tokenizer:
    """Split text into tokens and join them back.

    level='word' splits words from punctuation: "one thousand, nine" -> one | thousand | , | nine,
    and hyphens are tokens of their own: "quatre-vingt-dix-sept" -> quatre | - | vingt | - | dix |
    - | sept, so that the vocabulary holds "vingt" and "sept" once rather than every compound.
    detokenize(tokenize(s)) == s for text written with ordinary spacing: single spaces between
    words, none before , . ; : ! ? ) and none after ( or around - and /. (Straight double quotes
    alternate between opening and closing.) Other spacing is normalised to that.

    level='char' makes every character, spaces included, a token: exact for any text.
    """

    def __init__(self, level: str = "word"):
        if level not in ("word", "char"):
            raise ValueError(f"tokenizer level must be 'word' or 'char', not {level!r}")
        self.level = level

    def tokenize(self, text: str) -> list[str]:
        if self.level == "char":
            return list(text)
        return _WORD_OR_MARK.findall(text)

    def detokenize(self, tokens) -> str:
        if self.level == "char":
            return "".join(tokens)
        out, quote_open, glue_next = [], False, False
        for tok in tokens:
            if tok == '"':                      # an opening quote glues right, a closing one left
                glue = glue_next or quote_open
                glue_next = not quote_open
                quote_open = not quote_open
            else:
                glue = glue_next or tok in _ATTACH_LEFT or tok in _JOINERS
                glue_next = tok in _ATTACH_RIGHT or tok in _JOINERS
            if out and not glue:
                out.append(" ")
            out.append(tok)
        return "".join(out)

    def normalize(self, text: str) -> str:
        """The text as this tokenizer would write it back (the form evaluation compares)."""
        return self.detokenize(self.tokenize(text))


# ---------------------------------------------------------------------------- vocabulary
class Vocab:
    """A list of tokens (the four specials first) and its inverse, token -> id."""

    def __init__(self, tokens):
        tokens = list(tokens)
        if tokens[:len(SPECIALS)] != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, found {tokens[:len(SPECIALS)]}")
        if len(set(tokens)) != len(tokens):
            dupes = [t for t, c in Counter(tokens).items() if c > 1]
            raise ValueError(f"duplicate tokens in vocabulary: {dupes[:5]}")
        self.tokens = tokens
        self.index = {tok: i for i, tok in enumerate(tokens)}

    @classmethod
    def build(cls, token_lists, min_freq: int = 1) -> Vocab:
        """Tokens seen at least min_freq times, most frequent first (ties in first-seen order)."""
        counts = Counter(tok for tokens in token_lists for tok in tokens)
        kept = [tok for tok, c in counts.most_common() if c >= min_freq and tok not in SPECIALS]
        return cls(SPECIALS + kept)

    def __len__(self):
        return len(self.tokens)

    def __eq__(self, other):
        return isinstance(other, Vocab) and self.tokens == other.tokens

    def encode(self, tokens, unknown: list | None = None) -> list[int]:
        """Token ids; tokens not in the vocabulary become <unk> and are appended to `unknown`."""
        ids = []
        for tok in tokens:
            i = self.index.get(tok, UNK)
            if i == UNK and unknown is not None:
                unknown.append(tok)
            ids.append(i)
        return ids

    def decode(self, ids) -> list[str]:
        """Tokens for ids, stopping at <eos> and leaving out <pad> and <bos>."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i not in (PAD, BOS):
                out.append(self.tokens[i] if 0 <= i < len(self.tokens) else SPECIALS[UNK])
        return out


@dataclass(eq=True)
class PairVocab:
    """Everything that turns text into ids and back for one model: the tokenizer and both vocabularies.

    Saved as vocab.json next to the model, so that translate and evaluate read text exactly as
    training did.
    """
    tokenizer: Tokenizer
    src: Vocab
    tgt: Vocab

    @classmethod
    def build(cls, pairs, level: str = "word", min_freq: int = 1) -> PairVocab:
        tokenizer = Tokenizer(level)
        src = Vocab.build((tokenizer.tokenize(s) for s, _ in pairs), min_freq)
        tgt = Vocab.build((tokenizer.tokenize(t) for _, t in pairs), min_freq)
        return cls(tokenizer, src, tgt)

    def __eq__(self, other):
        return (isinstance(other, PairVocab) and self.tokenizer.level == other.tokenizer.level
                and self.src == other.src and self.tgt == other.tgt)

    def encode_source(self, text: str, unknown: list | None = None) -> list[int]:
        """Source ids followed by <eos>."""
        return self.src.encode(self.tokenizer.tokenize(text), unknown) + [EOS]

    def encode_target(self, text: str, unknown: list | None = None) -> list[int]:
        """<bos>, target ids, <eos>: the decoder reads ids[:-1] and predicts ids[1:]."""
        return [BOS] + self.tgt.encode(self.tokenizer.tokenize(text), unknown) + [EOS]

    def decode_target(self, ids) -> str:
        return self.tokenizer.detokenize(self.tgt.decode(ids))

    def to_json(self) -> dict:
        return {"format": 1, "level": self.tokenizer.level, "src": self.src.tokens, "tgt": self.tgt.tokens}

    @classmethod
    def from_json(cls, obj: dict) -> PairVocab:
        try:
            return cls(Tokenizer(obj["level"]), Vocab(obj["src"]), Vocab(obj["tgt"]))
        except (KeyError, TypeError) as e:
            raise DataError(f"vocab.json is malformed: missing or bad {e}") from e

    def save(self, path: str) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> PairVocab:
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_json(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read vocabulary {path}: {e}") from e

    def describe_difference(self, other: PairVocab) -> str:
        """Say how two vocabularies differ ('' when they are equal), for refusing a checkpoint."""
        diffs = []
        if self.tokenizer.level != other.tokenizer.level:
            diffs.append(f"tokenizer level {self.tokenizer.level!r} vs {other.tokenizer.level!r}")
        for side in ("src", "tgt"):
            a, b = getattr(self, side), getattr(other, side)
            if a != b:
                only_a = [t for t in a.tokens if t not in b.index][:5]
                only_b = [t for t in b.tokens if t not in a.index][:5]
                diffs.append(f"{side} vocabulary: {len(a)} vs {len(b)} tokens "
                             f"(only in first: {only_a}, only in second: {only_b})")
        return "; ".join(diffs)
