"""Training, checkpoints, exact resume, translation and metrics (tinygrad_tx/train.py)."""
import json
import os
import signal
import sys

import numpy as np
import pytest

import tinygrad_tx as tx
from tinygrad_tx.app import batching, tasks, vocab
from tinygrad_tx.app.checkpoint import file_digest, load_checkpoint, load_model
from tinygrad_tx.app.config import CheckpointError, TrainConfig
from tinygrad_tx.app.train import Trainer, TrainingDiverged, TrainingInterrupted, train
from tinygrad_tx.app.translate import Translator, format_score, score

TINY = {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1, "dropout": 0.1}


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    paths = {}
    for name, split, size in [("train", "train", 200), ("valid", "valid", 24)]:
        paths[name] = str(folder / f"{name}.tsv")
        tasks.write_tsv(tasks.load_task("reverse", split, seed=0, size=size), paths[name])
    return paths


def tiny_config(tsv, **changes):
    settings = {"task": None, "data": tsv["train"], "valid": tsv["valid"], "model": TINY, "batch_size": 16,
                    "warmup_steps": 10, "eval_every": 4}
    settings.update(changes)
    return TrainConfig(**settings)


def quiet_train(cfg, run_dir, **kwargs):
    return train(cfg, str(run_dir), progress=False, log=lambda m: None, **kwargs)


def read_checkpoint(run_dir):
    ckpt = load_checkpoint(str(run_dir))
    trainer = dict(ckpt.trainer)
    trainer.pop("seconds")
    return ckpt.model, ckpt.optimizer, trainer


def assert_same_checkpoint(a, b):
    model_a, opt_a, trainer_a = read_checkpoint(a)
    model_b, opt_b, trainer_b = read_checkpoint(b)
    assert model_a.keys() == model_b.keys() and opt_a.keys() == opt_b.keys()
    for key in model_a:
        np.testing.assert_array_equal(model_a[key], model_b[key], err_msg=key)
    for key in opt_a:
        np.testing.assert_array_equal(opt_a[key], opt_b[key], err_msg=key)
    assert trainer_a == trainer_b


def test_run_directory_holds_every_file(tsv, tmp_path):
    metrics = quiet_train(tiny_config(tsv), tmp_path / "run", steps=5)
    files = sorted(os.listdir(tmp_path / "run"))
    assert files == ["checkpoint.json", "config.json", "metrics.jsonl", "step-00000005", "vocab.json"]
    assert sorted(os.listdir(tmp_path / "run" / "step-00000005")) == ["model.npz", "optimizer.npz", "trainer.json"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [4, 5]
    assert metrics["step"] == 5 and {"exact_match", "bleu", "chrf", "valid_loss", "lr"} <= set(metrics)
    trainer_json = json.loads((tmp_path / "run" / "step-00000005" / "trainer.json").read_text())
    assert trainer_json["scheduler"]["step"] == 5
    pointer = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert pointer["step"] == 5 and pointer["folder"] == "step-00000005"
    assert set(pointer["files"]) == {"config.json", "vocab.json", "step-00000005/model.npz",
                                     "step-00000005/optimizer.npz", "step-00000005/trainer.json"}


def test_loss_goes_down(tsv, tmp_path):
    trainer = Trainer(tiny_config(tsv, lr_factor=2.0), str(tmp_path / "run"), progress=False, log=lambda m: None)
    first = trainer.validate()["valid_loss"]
    trainer.run(steps=30)
    assert trainer.validate()["valid_loss"] < first - 0.3


def test_validation_scores_every_pair_teacher_forced_and_decodes_a_bounded_sample(tsv, tmp_path, monkeypatch):
    """Loss and token accuracy: one teacher-forced pass over all 24 validation pairs. Greedy decoding
    (one decoder run per output token, up to max_len before a model learns to stop) only of the first
    `decode_pairs`; the default covers the whole of a small validation set."""
    trainer = Trainer(tiny_config(tsv), str(tmp_path / "run"), progress=False, log=lambda m: None, decode_pairs=5)
    trainer.run(steps=3)
    decoded = []
    real = Translator.evaluate
    monkeypatch.setattr(Translator, "evaluate", lambda self, pairs, **kw: decoded.append(list(pairs))
                        or real(self, pairs, **kw))
    result = trainer.validate()
    assert decoded == [trainer.valid_pairs[:5]]
    assert result["decoded"] == 5 and result["valid_pairs"] == 24
    # The token accuracy and the loss, by hand from the model's teacher-forced logits.
    hits = tokens = 0
    total = 0.0
    with tx.no_grad():
        for src, tgt in trainer.valid_examples:
            logits = trainer.model(tx.Tensor([src]), tx.Tensor([tgt[:-1]])).numpy()[0]     # (T, V)
            hits += int((logits.argmax(-1) == np.array(tgt[1:])).sum())
            tokens += len(tgt) - 1
            shifted = logits - logits.max(-1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
            total -= float(log_probs[np.arange(len(tgt) - 1), tgt[1:]].sum())
    assert result["valid_accuracy"] == pytest.approx(100.0 * hits / tokens)
    assert result["valid_loss"] == pytest.approx(total / tokens, rel=1e-4)
    assert 0 < hits < tokens                                      # three steps: some right, not all
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["decoded"]) for r in records] == [(3, 5)]
    whole = Trainer(tiny_config(tsv), str(tmp_path / "whole"), progress=False, log=lambda m: None)
    decoded.clear()
    assert whole.validate()["decoded"] == 24 and decoded == [whole.valid_pairs]
    with pytest.raises(ValueError, match="decode_pairs must be a whole number >= 1 or None, got 0"):
        Trainer(tiny_config(tsv), str(tmp_path / "bad"), progress=False, log=lambda m: None, decode_pairs=0)


def test_resume_continues_exactly(tsv, tmp_path):
    # Dropout is on (0.1), so this also checks that the engine RNG state is restored; 13 steps
    # of 16 out of 200 sentences cross an epoch boundary (batch order by seed and epoch).
    cfg = tiny_config(tsv)
    quiet_train(cfg, tmp_path / "straight", steps=15)
    quiet_train(cfg, tmp_path / "resumed", steps=7)
    quiet_train(cfg, tmp_path / "resumed", steps=15, resume=True)
    assert_same_checkpoint(tmp_path / "straight", tmp_path / "resumed")
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 7, 8, 12, 15]


def test_ctrl_c_leaves_a_checkpoint_of_the_last_step(tsv, tmp_path, monkeypatch):
    cfg = tiny_config(tsv, eval_every=100)
    original = Trainer.train_step

    def interrupted_step(self, batch):
        loss = original(self, batch)
        if self.state.step == 2:                    # the third step is under way: Ctrl-C now
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    with pytest.raises(TrainingInterrupted, match="saved the checkpoint of step 3"):
        quiet_train(cfg, tmp_path / "run", steps=50)
    assert load_checkpoint(str(tmp_path / "run")).step == 3
    monkeypatch.setattr(Trainer, "train_step", original)
    quiet_train(cfg, tmp_path / "run", steps=6, resume=True)       # the checkpoint is usable
    quiet_train(cfg, tmp_path / "straight", steps=6)
    assert_same_checkpoint(tmp_path / "run", tmp_path / "straight")


def test_refuses_a_checkpoint_trained_otherwise(tsv, tmp_path):
    run = tmp_path / "run"
    quiet_train(tiny_config(tsv), run, steps=2)
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        quiet_train(tiny_config(tsv), run, steps=4)
    with pytest.raises(CheckpointError, match=r"model: checkpoint has .*'d_model': 16.*asked for .*'d_model': 32"):
        quiet_train(tiny_config(tsv, model={**TINY, "d_model": 32}), run, steps=4, resume=True)
    with pytest.raises(CheckpointError, match="seed: checkpoint has 0, asked for 1"):
        quiet_train(tiny_config(tsv, seed=1), run, steps=4, resume=True)
    # Same settings and file name, but the file now holds other sentences: the vocabulary differs.
    own = {"train": str(tmp_path / "train.tsv"), "valid": tsv["valid"]}
    tasks.write_tsv(tasks.read_tsv(tsv["train"]), own["train"])
    quiet_train(tiny_config(own), tmp_path / "run2", steps=2)
    tasks.write_tsv([("hello world", "bonjour le monde")] * 20, own["train"])
    with pytest.raises(CheckpointError, match="vocabulary differs.*src vocabulary"):
        quiet_train(tiny_config(own), tmp_path / "run2", steps=4, resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        quiet_train(tiny_config(tsv), tmp_path / "empty", steps=4, resume=True)


def test_hints_at_char_level_when_most_words_are_rare(tmp_path):
    from num2words import num2words
    pairs = [(num2words(k), num2words(k, lang="de")) for k in range(1000, 1100)]    # German: one word each
    tasks.write_tsv(pairs, str(tmp_path / "de.tsv"))
    messages = []
    Trainer(TrainConfig(task=None, data=str(tmp_path / "de.tsv"), model=TINY), str(tmp_path / "run"),
            progress=False, log=messages.append)
    assert any("tgt side has" in m and "--char" in m for m in messages)
    assert not any("src side has" in m for m in messages)


def test_loading_refuses_a_vocabulary_that_does_not_fit_the_model(tsv, tmp_path):
    run = tmp_path / "run"
    quiet_train(tiny_config(tsv), run, steps=1)
    vocab = json.loads((run / "vocab.json").read_text())
    vocab["tgt"].append("extra")
    (run / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match="vocab.json: damaged"):       # the checksum catches it first
        load_model(str(run))
    pointer = json.loads((run / "checkpoint.json").read_text())
    pointer["files"]["vocab.json"] = file_digest(run / "vocab.json")         # an edit that fixes the checksum
    (run / "checkpoint.json").write_text(json.dumps(pointer))
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(str(run))


@pytest.fixture(scope="module")
def trained(tsv, tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    quiet_train(tiny_config(tsv, eval_every=1000), run, steps=40)
    return str(run)


def test_greedy_equals_beam_search_with_beam_one(trained, tsv):
    from tinygrad_tx.models.decoding import beam_search
    translator = Translator.load(trained)
    sources = [s for s, _ in tasks.read_tsv(tsv["valid"])]
    src_ids = [translator.vocab.encode_source(s) for s in sources]
    greedy = translator.decode_ids(src_ids, beam=1)
    batch = batching.collate([(s, [vocab.BOS, vocab.EOS]) for s in src_ids])
    beam = beam_search(translator.model, batch.src, beam_size=1, max_len=translator.decode_len(batch.src.shape[1]),
                       bos_id=vocab.BOS, eos_id=vocab.EOS).tolist()
    for g, b in zip(greedy, beam):
        assert translator.vocab.tgt.decode(g) == translator.vocab.tgt.decode(b)
    assert translator.translate(sources, beam=1) == translator.translate(sources, beam=1)
    assert len(translator.translate(sources[:3], beam=3)) == 3


def test_unknown_source_tokens_warn(trained):
    translator = Translator.load(trained)
    messages = []
    translator.translate(["1 2 zebra"], warn=messages.append)
    assert len(messages) == 1 and "'zebra'" in messages[0] and "<unk>" in messages[0]
    with pytest.warns(UserWarning, match="zebra"):
        translator.translate(["zebra"])


def test_draw_attention_writes_every_layer(trained, tmp_path):
    pytest.importorskip("matplotlib")
    from tinygrad_tx.app.cli import main
    out = tmp_path / "pictures"
    assert main(["draw", "--checkpoint", trained, "--sentence", "1 2 3", "--attention", "--out", str(out)]) == 0
    names = sorted(os.listdir(out))
    assert names == ["attention_decoder0_cross.png", "attention_decoder0_self.png", "attention_encoder0_self.png"]


def test_score_metrics():
    refs = ["one two three four five", "six seven eight nine"]
    perfect = score(refs, refs)
    assert perfect == {"exact_match": 100.0, "bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}
    half = score([refs[0], "six seven eight ten"], refs)
    assert half["exact_match"] == 50.0 and half["bleu"] < 100 and half["chrf"] < 100


def test_score_without_sacrebleu_still_gives_the_exact_match(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)        # as after a plain `pip install tinygrad-tx`
    refs = ["one two", "three"]
    with pytest.warns(UserWarning, match=r"pip install 'tinygrad-tx\[train\]'"):
        metrics = score([refs[0], "four"], refs)
    assert metrics == {"exact_match": 50.0, "bleu": None, "chrf": None}
    assert format_score(metrics["bleu"]) == "n/a" and format_score(12.345, 2) == "12.35"


@pytest.mark.skipif(tx.cuda_available(), reason="checks the error raised without a GPU")
def test_cuda_without_gpu_is_a_clear_error(tsv, tmp_path):
    with pytest.raises(RuntimeError, match="CuPy"):
        quiet_train(tiny_config(tsv), tmp_path / "run", steps=1, device="cuda")


# ---------------------------------------------------------------------------- nothing silently wrong
def strict_json_lines(path):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in open(path).read().splitlines()]


def test_divergence_stops_keeps_the_last_good_checkpoint_and_never_saves_nan(tsv, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(tsv, eval_every=2), str(run), progress=False, log=lambda m: None)
    trainer.run(steps=2)
    good = load_checkpoint(str(run))
    trainer.scheduler.factor = 1e12                 # the learning rate explodes from step 3 on
    with pytest.raises(TrainingDiverged, match=r"diverged at step [34]: .*NaN|nan") as info:
        trainer.run(steps=20)
    message = str(info.value)
    assert "last good checkpoint (step 2)" in message and "lower learning rate" in message
    kept = load_checkpoint(str(run))
    assert kept.step == 2
    for key in good.model:
        np.testing.assert_array_equal(kept.model[key], good.model[key])
    assert [m["step"] for m in strict_json_lines(run / "metrics.jsonl")] == [2]


def test_non_finite_weights_or_validation_loss_are_never_saved(tsv, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(tsv, eval_every=2), str(run), progress=False, log=lambda m: None)
    trainer.run(steps=2)
    weight = trainer.params[0]
    saved = weight.data.copy()
    weight.data[0] = float("inf")
    with pytest.raises(TrainingDiverged, match="holds NaN or infinite values"):
        trainer.save_checkpoint()
    weight.data[...] = saved
    monkeypatch.setattr(Trainer, "validate", lambda self: {"valid_loss": float("nan")})
    with pytest.raises(TrainingDiverged, match="validation loss became nan"):
        trainer.run(steps=4)
    assert load_checkpoint(str(run)).step == 2
    assert [m["step"] for m in strict_json_lines(run / "metrics.jsonl")] == [2]


def test_an_out_that_is_not_a_run_is_refused_unless_forced(tsv, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("do not overwrite")
    (out / "config.json").write_text("my own config")
    with pytest.raises(CheckpointError, match=r"not empty and is not a training run \(it holds thesis.tex\)"):
        quiet_train(tiny_config(tsv), out, steps=1)
    assert (out / "config.json").read_text() == "my own config" and sorted(os.listdir(out)) == ["config.json",
                                                                                                 "thesis.tex"]
    quiet_train(tiny_config(tsv), out, steps=1, force=True)
    assert (out / "thesis.tex").read_text() == "do not overwrite"
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a directory"):
        quiet_train(tiny_config(tsv), tmp_path / "file", steps=1)


def test_an_unwritable_out_fails_before_training(tsv, tmp_path, monkeypatch):
    steps = []
    monkeypatch.setattr(Trainer, "train_step", lambda self, batch: steps.append(1) or 1.0)
    (tmp_path / "file-not-dir").write_text("x")
    with pytest.raises(CheckpointError, match="cannot write the run directory"):
        quiet_train(tiny_config(tsv), tmp_path / "file-not-dir" / "run", steps=5)
    blocked = tmp_path / "blocked"                  # config.json cannot be replaced: it is a folder
    (blocked / "config.json").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="cannot write the run directory"):
        quiet_train(tiny_config(tsv), blocked, steps=5)
    if os.geteuid() != 0:                           # root may write into a read-only folder
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(CheckpointError, match="cannot write the run directory"):
            quiet_train(tiny_config(tsv), ro, steps=5)
    assert steps == []


def test_validation_sentences_longer_than_max_len_are_refused_before_training(tsv, tmp_path):
    long_valid = str(tmp_path / "valid.tsv")
    tasks.write_tsv([("a " * 1000, "b")] + tasks.read_tsv(tsv["valid"]), long_valid)
    with pytest.raises(tasks.DataError, match="validation pair 1 .* more than the model's max_len"):
        Trainer(tiny_config(tsv, valid=long_valid), str(tmp_path / "run"), progress=False, log=lambda m: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", ["source\ttarget\n", "a\tb\n" * 9])
def test_too_few_pairs_to_hold_out_validation_is_a_clear_error(tmp_path, content):
    (tmp_path / "few.tsv").write_text(content)
    with pytest.raises(tasks.DataError, match=r"holds only \d pair\(s\): too few .* --valid"):
        Trainer(TrainConfig(data=str(tmp_path / "few.tsv"), model=TINY), str(tmp_path / "run"),
                progress=False, log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_train_config_checks_and_defaults(tmp_path):
    assert TrainConfig(data="pairs.tsv").task is None                       # as the docstring shows it
    assert TrainConfig().task == tasks.DEFAULT_TASK
    for bad in [{"batch_size": 0}, {"eval_every": 0}, {"warmup_steps": -1}, {"lr_factor": 0},
                {"level": "byte"}, {"task": "copy", "data": "x.tsv"}]:
        with pytest.raises(ValueError, match="TrainConfig"):
            TrainConfig(**bad)


def test_a_utf8_bom_is_not_a_token(tmp_path):
    (tmp_path / "bom.tsv").write_bytes("\ufeffhello\tbonjour\nworld\tmonde\n".encode("utf-8"))
    assert tasks.read_tsv(str(tmp_path / "bom.tsv"))[0] == ("hello", "bonjour")
