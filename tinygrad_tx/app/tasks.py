"""Toy translation data: generated tasks and the user's TSV files.

    load_task("numbers-en-fr", "train") or read_tsv(path)   -> [(source text, target text), ...]

Everything here is deterministic given the seed. Nothing is downloaded: the tasks are generated
(numbers with `num2words`).
"""
from __future__ import annotations

import random

from tinygrad_tx.serialization import atomic_write_text


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

    There is no header line: every non-blank line is a pair. A UTF-8 byte order mark is dropped.

    Raises:
        DataError naming the file, and the line numbers of bad lines (the first 10 of them).
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
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
