"""Data for toy translation: tasks, TSV files, the tokenizer, vocabularies and padded batches.

The pipeline, in the order training uses it:
    load_task("numbers-en-fr", "train") or read_tsv(path)   -> [(source text, target text), ...]
    Tokenizer("word").tokenize(text)                         -> ["one", "thousand", ",", "nine"]
    PairVocab.build(pairs, tokenizer).encode_pair(src, tgt)  -> ([ids..., eos], [bos, ids..., eos])
    batch_order(lengths, batch_size, ..., seed, epoch)       -> [[example index, ...], ...]
    collate(examples, device)                                -> Batch of padded int64 Tensors

Everything here is deterministic given the seed, so an interrupted run can resume on exactly the
same batches. Nothing is downloaded: the tasks are generated (numbers with `num2words`).
"""
from __future__ import annotations

import json
import os
import random
import re
import uuid
from collections import Counter
from dataclasses import dataclass

from . import backend
from .tensor import Tensor

# ---------------------------------------------------------------------------- special tokens
PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


class DataError(ValueError):
    """Bad user data: an unreadable or empty file, malformed lines, an unknown task."""


# ---------------------------------------------------------------------------- tasks
SPLITS = ("train", "valid", "test")
SYMBOL_TASKS = ("copy", "reverse", "sort")
SYMBOLS = [str(d) for d in range(10)]          # the alphabet of the symbol tasks: "0" ... "9"
SYMBOL_LENGTHS = (1, 10)                       # sequence lengths, inclusive
NUMBER_RANGE = 1_000_000                       # numbers-SRC-TGT covers 0 .. 999,999
DEFAULT_SIZES = {"train": 100_000, "valid": 1000, "test": 1000}
NUMBER_TRAIN_SIZE = 40_000                     # num2words costs ~0.1 ms a call: keep startup short
DEFAULT_TASK = "numbers-en-fr"


def task_names() -> list[str]:
    """Example task names (any `numbers-SRC-TGT` pair that num2words supports also works)."""
    return list(SYMBOL_TASKS) + ["numbers-en-fr", "numbers-en-de", "numbers-en-es", "numbers-fr-en"]


def load_task(name: str, split: str, seed: int = 0, size: int | None = None) -> list[tuple[str, str]]:
    """The (source, target) text pairs of one split of a generated task.

    Args:
        name: 'copy', 'reverse', 'sort' (random symbol sequences, as in The Annotated
            Transformer), or 'numbers-SRC-TGT' such as 'numbers-en-fr' (number words, 0..999,999).
        split: 'train', 'valid' or 'test'. The splits never share a sequence (or a number).
        seed: the same seed gives the same pairs; valid and test do not depend on `size`.
        size: how many pairs (default: 1000 for valid/test; a task-specific size for train).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    if name in SYMBOL_TASKS:
        return _symbol_task(name, split, seed, size)
    if name.startswith("numbers-"):
        return _number_task(name, split, seed, size)
    raise DataError(f"unknown task {name!r}; expected one of {', '.join(SYMBOL_TASKS)} or numbers-SRC-TGT "
                    f"(for example {DEFAULT_TASK})")


def _split_size(split, size, train_default):
    if size is not None:
        return int(size)
    return train_default if split == "train" else DEFAULT_SIZES[split]


def _symbol_task(name, split, seed, size):
    """Random digit sequences; the target is the source copied, reversed or sorted."""
    rng = random.Random(f"{name}:{seed}")

    def draw():
        length = rng.randint(*SYMBOL_LENGTHS)
        return tuple(rng.choice(SYMBOLS) for _ in range(length))

    # Held-out sequences are drawn first, so they do not depend on the training size.
    held_out = {"valid": [], "test": []}
    seen = set()
    for part in ("valid", "test"):
        while len(held_out[part]) < DEFAULT_SIZES[part]:
            seq = draw()
            if seq not in seen:
                seen.add(seq)
                held_out[part].append(seq)
    if split == "train":
        sequences = []
        while len(sequences) < _split_size(split, size, DEFAULT_SIZES["train"]):
            seq = draw()
            if seq not in seen:             # training may repeat itself, never a held-out sequence
                sequences.append(seq)
    else:
        sequences = held_out[split][:_split_size(split, size, 0)]
    transform = {"copy": list, "reverse": lambda s: s[::-1], "sort": sorted}[name]
    return [(" ".join(seq), " ".join(transform(seq))) for seq in sequences]


def _number_task(name, split, seed, size):
    """English (or any num2words language) number words -> another language's number words.

    Valid and test numbers are drawn uniformly from 0..999,999. Training uses the building blocks
    first, every number below 1000 and every multiple of 1000 ("two hundred and eighty thousand",
    rare among uniform draws), then uniform draws, and never a held-out number.
    """
    parts = name.split("-")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise DataError(f"task {name!r}: expected numbers-SRC-TGT, for example {DEFAULT_TASK}")
    src_lang, tgt_lang = parts[1], parts[2]
    try:
        from num2words import CONVERTER_CLASSES, num2words
    except ImportError as e:
        raise DataError("the numbers tasks need num2words: pip install 'tinygrad-tx[train]'") from e
    for lang in (src_lang, tgt_lang):
        if lang not in CONVERTER_CLASSES:
            raise DataError(f"task {name!r}: num2words has no language {lang!r}; "
                            f"it knows {', '.join(sorted(CONVERTER_CLASSES))}")
    rng = random.Random(f"numbers:{seed}")
    held = rng.sample(range(NUMBER_RANGE), DEFAULT_SIZES["valid"] + DEFAULT_SIZES["test"])
    held_out = {"valid": held[:DEFAULT_SIZES["valid"]], "test": held[DEFAULT_SIZES["valid"]:]}
    if split == "train":
        n = _split_size(split, size, NUMBER_TRAIN_SIZE)
        excluded = set(held)
        blocks = list(range(1000)) + list(range(1000, NUMBER_RANGE, 1000))
        numbers = [k for k in blocks if k not in excluded][:n]
        chosen = excluded | set(numbers)
        while len(numbers) < n and len(chosen) < NUMBER_RANGE:
            k = rng.randrange(NUMBER_RANGE)
            if k not in chosen:
                chosen.add(k)
                numbers.append(k)
    else:
        numbers = held_out[split][:_split_size(split, size, 0)]
    return [(num2words(k, lang=src_lang), num2words(k, lang=tgt_lang)) for k in numbers]


# ---------------------------------------------------------------------------- TSV files
def read_tsv(path: str) -> list[tuple[str, str]]:
    """Read `source<TAB>target` lines. Blank lines are skipped; any other bad line is an error.

    Raises:
        DataError naming the file, and the line numbers of bad lines (the first 10 of them).
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    pairs, bad = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            bad.append(f"{path}:{number}: expected 'source<TAB>target', found {len(fields) - 1} tabs")
        elif not fields[0].strip() or not fields[1].strip():
            bad.append(f"{path}:{number}: empty {'source' if not fields[0].strip() else 'target'}")
        else:
            pairs.append((fields[0].strip(), fields[1].strip()))
    if bad:
        more = f"\n... and {len(bad) - 10} more bad lines" if len(bad) > 10 else ""
        raise DataError(f"{len(bad)} bad line(s) in {path}:\n" + "\n".join(bad[:10]) + more)
    if not pairs:
        raise DataError(f"{path} holds no 'source<TAB>target' pairs (the file is empty)")
    return pairs


def write_tsv(pairs, path: str) -> None:
    """Write (source, target) pairs as a TSV file, atomically."""
    for src, tgt in pairs:
        if "\t" in src + tgt or "\n" in src + tgt:
            raise DataError(f"cannot write a pair holding a tab or newline to TSV: {src!r} / {tgt!r}")
    atomic_write_text(path, "".join(f"{src}\t{tgt}\n" for src, tgt in pairs))


def split_off_valid(pairs, seed: int, size: int = 1000):
    """Hold out a random validation set (at most 10% of the pairs) when the user gave none."""
    n_valid = min(size, len(pairs) // 10)
    order = list(range(len(pairs)))
    random.Random(f"valid:{seed}").shuffle(order)
    valid_idx = set(order[:n_valid])
    train = [p for i, p in enumerate(pairs) if i not in valid_idx]
    valid = [pairs[i] for i in sorted(valid_idx)]
    return train, valid


# ---------------------------------------------------------------------------- atomic files
def atomic_write_text(path: str, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never half of it."""
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)    # the umask decides, as for open()
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


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


def collate(examples, device: str = "cpu") -> Batch:
    """Pad (source ids, target ids) examples to the longest of each side and make int64 tensors."""
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
