"""Training, checkpoints, exact resume, translation and metrics (tinygrad_tx/train.py)."""
import json
import os
import signal

import numpy as np
import pytest

import tinygrad_tx as tx
from tinygrad_tx.app import batching, tasks, vocab
from tinygrad_tx.app.checkpoint import load_model
from tinygrad_tx.app.config import CheckpointError, TrainConfig
from tinygrad_tx.app.train import Trainer, train
from tinygrad_tx.app.translate import Translator, score

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
    model = tx.load(os.path.join(run_dir, "model.npz"))
    optimizer = tx.load(os.path.join(run_dir, "optimizer.npz"))
    with open(os.path.join(run_dir, "trainer.json")) as f:
        trainer = json.load(f)
    trainer.pop("seconds")
    return model, optimizer, trainer


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
    assert files == ["config.json", "metrics.jsonl", "model.npz", "optimizer.npz", "trainer.json", "vocab.json"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [4, 5]
    assert metrics["step"] == 5 and {"exact_match", "bleu", "chrf", "valid_loss", "lr"} <= set(metrics)
    assert json.loads((tmp_path / "run" / "trainer.json").read_text())["scheduler"]["step"] == 5


def test_loss_goes_down(tsv, tmp_path):
    trainer = Trainer(tiny_config(tsv, lr_factor=2.0), str(tmp_path / "run"), progress=False, log=lambda m: None)
    first = trainer.validate()["valid_loss"]
    trainer.run(steps=30)
    assert trainer.validate()["valid_loss"] < first - 0.3


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
    metrics = quiet_train(cfg, tmp_path / "run", steps=50)
    assert metrics["step"] == 3
    trainer_json = json.loads((tmp_path / "run" / "trainer.json").read_text())
    assert trainer_json["step"] == 3
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


@pytest.mark.skipif(tx.cuda_available(), reason="checks the error raised without a GPU")
def test_cuda_without_gpu_is_a_clear_error(tsv, tmp_path):
    with pytest.raises(RuntimeError, match="CuPy"):
        quiet_train(tiny_config(tsv), tmp_path / "run", steps=1, device="cuda")
