"""Tasks, TSV parsing, the tokenizer, vocabularies and batching (tinygrad_tx/app: tasks, vocab, batching)."""
import json

import numpy as np
import pytest

from tinygrad_tx.app import batching, tasks
from tinygrad_tx.app.tasks import DataError
from tinygrad_tx.app.vocab import BOS, EOS, PAD, PairVocab, Tokenizer, UNK, Vocab


# ---------------------------------------------------------------------------- tokenizer
@pytest.mark.parametrize("text, tokens", [
    ("one thousand, nine", ["one", "thousand", ",", "nine"]),
    ("quatre-vingt-dix-sept", ["quatre", "-", "vingt", "-", "dix", "-", "sept"]),
    ("Hello, world! (yes) it's 5-6.", ["Hello", ",", "world", "!", "(", "yes", ")", "it's", "5", "-", "6", "."]),
    ('He said "hi there" to me.', ["He", "said", '"', "hi", "there", '"', "to", "me", "."]),
    ("a/b costs 1,000 or 3.14", ["a", "/", "b", "costs", "1,000", "or", "3.14"]),
])
def test_word_tokenizer_splits_punctuation_and_round_trips(text, tokens):
    tok = Tokenizer("word")
    assert tok.tokenize(text) == tokens
    assert tok.detokenize(tokens) == text


@pytest.mark.parametrize("lang", ["en", "fr", "es", "it"])
def test_word_tokenizer_round_trips_number_words(lang):
    from num2words import num2words
    tok = Tokenizer("word")
    rng = np.random.default_rng(0)
    for k in list(range(200)) + rng.integers(0, 1_000_000, 300).tolist():
        text = num2words(int(k), lang=lang)
        assert tok.detokenize(tok.tokenize(text)) == text


def test_word_tokenizer_normalises_odd_spacing():
    tok = Tokenizer("word")
    assert tok.normalize("  one   thousand ,nine ") == "one thousand, nine"


@pytest.mark.parametrize("text", ["", " a  b\t,c! ", "quatre-vingt-dix-sept", "日本語 ok"])
def test_char_tokenizer_round_trips_any_text(text):
    tok = Tokenizer("char")
    assert tok.tokenize(text) == list(text)
    assert tok.detokenize(tok.tokenize(text)) == text


def test_tokenizer_rejects_unknown_level():
    with pytest.raises(ValueError, match="'byte'"):
        Tokenizer("byte")


# ---------------------------------------------------------------------------- vocabulary
def test_vocab_specials_first_and_unknown_tokens_reported():
    v = Vocab.build([["b", "a", "b"], ["c"]])
    assert v.tokens[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    assert v.tokens[4] == "b"                   # most frequent first
    unknown = []
    assert v.encode(["a", "zzz"], unknown) == [v.index["a"], UNK]
    assert unknown == ["zzz"]
    assert v.decode([BOS, v.index["a"], v.index["c"], EOS, v.index["b"], PAD]) == ["a", "c"]


def test_pair_vocab_encodes_and_saves(tmp_path):
    pairs = [("one thousand, nine", "mille neuf"), ("ninety-seven", "quatre-vingt-dix-sept")]
    pv = PairVocab.build(pairs)
    src = pv.encode_source("one thousand")
    assert src[-1] == EOS and UNK not in src
    tgt = pv.encode_target("quatre-vingt-dix-sept")
    assert tgt[0] == BOS and tgt[-1] == EOS
    assert pv.decode_target(tgt) == "quatre-vingt-dix-sept"
    path = tmp_path / "vocab.json"
    pv.save(str(path))
    assert json.loads(path.read_text())["level"] == "word"
    loaded = PairVocab.load(str(path))
    assert loaded == pv and loaded.describe_difference(pv) == ""
    other = PairVocab.build(pairs + [("two", "deux")])
    assert "src vocabulary" in other.describe_difference(pv) and "'two'" in other.describe_difference(pv)
    assert "tokenizer level" in PairVocab.build(pairs, level="char").describe_difference(pv)


# ---------------------------------------------------------------------------- TSV
def test_read_tsv_reports_bad_lines_with_numbers(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("one\tun\n\nno tab here\ntwo\tdeux\n\tempty source\nthree\ttrois\textra\n")
    with pytest.raises(DataError) as e:
        tasks.read_tsv(str(path))
    msg = str(e.value)
    assert "3 bad line(s)" in msg
    assert f"{path}:3:" in msg and f"{path}:5: empty source" in msg and f"{path}:6:" in msg
    assert f"{path}:1:" not in msg and f"{path}:4:" not in msg


def test_read_tsv_good_file_and_windows_line_endings(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"one\tun\r\ntwo\tdeux\r\n")
    assert tasks.read_tsv(str(path)) == [("one", "un"), ("two", "deux")]


def test_read_tsv_empty_or_unreadable_file_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        tasks.read_tsv(str(empty))
    with pytest.raises(DataError, match="cannot read .*missing.tsv"):
        tasks.read_tsv(str(tmp_path / "missing.tsv"))
    binary = tmp_path / "binary.tsv"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="cannot read"):
        tasks.read_tsv(str(binary))


def test_write_tsv_round_trips(tmp_path):
    pairs = tasks.load_task("reverse", "valid", size=20)
    path = str(tmp_path / "r.tsv")
    tasks.write_tsv(pairs, path)
    assert tasks.read_tsv(path) == pairs


# ---------------------------------------------------------------------------- tasks
@pytest.mark.parametrize("name, check", [
    ("copy", lambda s: s),
    ("reverse", lambda s: s[::-1]),
    ("sort", sorted),
])
def test_symbol_tasks_targets_and_disjoint_splits(name, check):
    train = tasks.load_task(name, "train", seed=3, size=2000)
    valid = tasks.load_task(name, "valid", seed=3)
    test = tasks.load_task(name, "test", seed=3)
    assert len(valid) == len(test) == 1000
    for src, tgt in train[:100] + test[:100]:
        assert tgt.split() == list(check(src.split()))
    assert not {s for s, _ in train} & {s for s, _ in test}
    assert not {s for s, _ in valid} & {s for s, _ in test}
    assert tasks.load_task(name, "train", seed=3, size=2000) == train       # deterministic by seed
    assert tasks.load_task(name, "train", seed=4, size=2000) != train


def test_numbers_task_is_disjoint_by_number_and_deterministic():
    from num2words import num2words
    test = tasks.load_task("numbers-en-fr", "test", seed=0, size=400)
    valid = tasks.load_task("numbers-en-fr", "valid", seed=0, size=200)
    train = tasks.load_task("numbers-en-fr", "train", seed=0, size=1500)
    assert len(test) == 400 and len(train) == 1500
    assert ("ninety-seven", "quatre-vingt-dix-sept") in train            # every number below 1000
    assert ("two hundred and eighty thousand", "deux cent quatre-vingt mille") in train   # multiples of 1000
    assert not {s for s, _ in train} & {s for s, _ in test}
    assert not {s for s, _ in valid} & {s for s, _ in test}
    assert tasks.load_task("numbers-en-fr", "test", seed=0, size=400) == test
    assert tasks.load_task("numbers-en-fr", "test", seed=1, size=400) != test
    fr_en = tasks.load_task("numbers-fr-en", "test", seed=0, size=5)
    assert fr_en == [(fr, en) for en, fr in test[:5]]       # the same numbers for every pair
    en_de = dict(tasks.load_task("numbers-en-de", "train", seed=0, size=100))
    assert en_de["ninety-seven"] == num2words(97, lang="de")


@pytest.mark.parametrize("name, match", [("nonsense", "unknown task"), ("numbers-en", "numbers-SRC-TGT"),
                                         ("numbers-en-xx", "no language 'xx'")])
def test_unknown_tasks_are_clear_errors(name, match):
    with pytest.raises(DataError, match=match):
        tasks.load_task(name, "test")


# ---------------------------------------------------------------------------- batches
def test_collate_pads_to_longest_and_shifts_targets():
    batch = batching.collate([([5, 6, EOS], [BOS, 7, EOS]), ([5, EOS], [BOS, 7, 8, 9, EOS])])
    np.testing.assert_array_equal(batch.src.numpy(), [[5, 6, EOS], [5, EOS, PAD]])
    np.testing.assert_array_equal(batch.tgt_in.numpy(), [[BOS, 7, PAD, PAD], [BOS, 7, 8, 9]])
    np.testing.assert_array_equal(batch.tgt_out.numpy(), [[7, EOS, PAD, PAD], [7, 8, 9, EOS]])
    assert batch.n_tokens == 6 and len(batch) == 2
    assert batch.src.dtype == np.int64


def test_batch_order_buckets_by_length_and_is_seeded():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, 1000).tolist()
    batches = batching.batch_order(lengths, 64, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) == 64 for b in batches if len(b) != 1000 % 64)
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread <= 3                          # bucketed: similar lengths share a batch
    assert batching.batch_order(lengths, 64, seed=1, epoch=0) == batches
    assert batching.batch_order(lengths, 64, seed=1, epoch=1) != batches
    assert batching.batch_order(lengths, 64, seed=2, epoch=0) != batches


def test_batch_order_in_tokens_caps_padded_size():
    lengths = [5] * 10 + [50] * 10
    batches = batching.batch_order(lengths, 100, unit="tokens", seed=0)
    assert sorted(i for b in batches for i in b) == list(range(20))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 100 or len(b) == 1
    assert batching.batch_order(lengths, 7, shuffle=False) == [list(range(7)), list(range(7, 14)), list(range(14, 20))]
    assert batching.batch_order([3, 1, 2, 1], 2, shuffle=False) == [[1, 3], [2, 0]]     # sorted by length, stable


def test_split_off_valid_is_disjoint():
    pairs = [(str(i), str(i)) for i in range(100)]
    train, valid = tasks.split_off_valid(pairs, seed=0)
    assert len(valid) == 10 and len(train) == 90 and not set(train) & set(valid)
