"""Checkpoints (tinygrad_tx/app/checkpoint.py): one atomic unit that survives kill -9 at any point of a
save, and every kind of damage reported as one CheckpointError naming the file."""
import json
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tinygrad_tx.app import checkpoint, tasks
from tinygrad_tx.app.checkpoint import SAVE_POINTS, load_checkpoint, load_model
from tinygrad_tx.app.config import CheckpointError, TrainConfig
from tinygrad_tx.app.train import Trainer, train

TINY = {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1, "dropout": 0.1}


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    paths = {}
    for name, size in [("train", 80), ("valid", 8)]:
        paths[name] = str(folder / f"{name}.tsv")
        tasks.write_tsv(tasks.load_task("reverse", name, seed=0, size=size), paths[name])
    return paths


def settings(tsv):
    return {"data": tsv["train"], "valid": tsv["valid"], "model": TINY, "batch_size": 16, "warmup_steps": 10,
            "eval_every": 2}


def quiet_train(cfg, run_dir, **kwargs):
    return train(cfg, str(run_dir), progress=False, log=lambda m: None, **kwargs)


# A child trainer that SIGKILLs itself at one point of the save of one step: no timing luck involved.
CHILD = """
import json, os, signal, sys
from tinygrad_tx.app.config import TrainConfig
from tinygrad_tx.app.train import Trainer
settings, run_dir, point, kill_step, steps = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
trainer = Trainer(TrainConfig(**settings), run_dir, progress=False, log=lambda m: None, resume=kill_step > 2)
def hook(where):
    if where == point and trainer.state.step == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
trainer.checkpoint_hook = hook
trainer.run(steps=steps)
"""


def run_child(tsv, run_dir, point, kill_step, steps):
    return subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings(tsv)), str(run_dir), point,
                           str(kill_step), str(steps)], capture_output=True, text=True, timeout=300, check=False)


def test_the_save_points_are_all_reached(tsv, tmp_path):
    reached = []
    trainer = Trainer(TrainConfig(**settings(tsv)), str(tmp_path / "run"), progress=False, log=lambda m: None)
    trainer.checkpoint_hook = reached.append
    trainer.run(steps=2)
    assert tuple(reached) == SAVE_POINTS


def test_kill_9_at_every_point_of_a_save_then_resume_continues_exactly(tsv, tmp_path):
    cfg = TrainConfig(**settings(tsv))
    quiet_train(cfg, tmp_path / "straight", steps=6)
    straight = load_checkpoint(str(tmp_path / "straight"))
    committed_from = SAVE_POINTS.index("committed")
    for k, point in enumerate(SAVE_POINTS):
        run = tmp_path / f"killed-{k}"
        quiet_train(cfg, run, steps=2)                                   # a good checkpoint of step 2
        result = run_child(tsv, run, point, kill_step=4, steps=6)        # killed while saving step 4
        assert result.returncode == -signal.SIGKILL, (point, result.stderr[-2000:])
        # Whatever the point, the committed checkpoint is whole: step 2 before the commit, 4 after it.
        ckpt = load_checkpoint(str(run))
        assert ckpt.step == (4 if k >= committed_from else 2), point
        assert ckpt.trainer["step"] == ckpt.step and ckpt.trainer["scheduler"]["step"] == ckpt.step
        assert [m["step"] for m in ckpt.metrics] == [2, 4][:ckpt.step // 2]
        # Resume: leftovers go, and training continues to the same bits as an uninterrupted run.
        messages = []
        trainer = Trainer(cfg, str(run), progress=False, log=messages.append, resume=True)
        assert f"resumed {run} at step {ckpt.step}" in messages
        assert sorted(os.listdir(run)) == ["checkpoint.json", "config.json", "metrics.jsonl",
                                           f"step-0000000{ckpt.step}", "vocab.json"], point
        trainer.run(steps=6)
        resumed = load_checkpoint(str(run))
        assert resumed.step == 6 and [m["step"] for m in resumed.metrics] == [2, 4, 6], point
        for key in straight.model:
            np.testing.assert_array_equal(resumed.model[key], straight.model[key], err_msg=f"{point}: {key}")
        for key in straight.optimizer:
            np.testing.assert_array_equal(resumed.optimizer[key], straight.optimizer[key], err_msg=f"{point}: {key}")


def test_kill_9_during_the_first_save_leaves_a_run_that_starts_again(tsv, tmp_path):
    run = tmp_path / "run"
    result = run_child(tsv, run, "pointer half written", kill_step=2, steps=2)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert any(name.startswith(".checkpoint.json.") for name in os.listdir(run))    # a half-written pointer
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        quiet_train(TrainConfig(**settings(tsv)), run, steps=2, resume=True)
    quiet_train(TrainConfig(**settings(tsv)), run, steps=2)                # the same --out starts afresh
    assert sorted(os.listdir(run)) == ["checkpoint.json", "config.json", "metrics.jsonl", "step-00000002",
                                       "vocab.json"]


# ---------------------------------------------------------------------------- damaged runs
@pytest.fixture(scope="module")
def good_run(tsv, tmp_path_factory):
    run = tmp_path_factory.mktemp("good") / "run"
    quiet_train(TrainConfig(**settings(tsv)), run, steps=2)
    return run


def copy_run(good_run, tmp_path):
    import shutil
    shutil.copytree(good_run, tmp_path / "run")
    return tmp_path / "run"


def refresh_checksum(run, name):
    """Make checkpoint.json agree with an edited file, as a consistent (but wrong) edit would."""
    pointer = json.loads((run / "checkpoint.json").read_text())
    pointer["files"][name] = checkpoint.file_digest(run / name)
    (run / "checkpoint.json").write_text(json.dumps(pointer))


def one_line_cli_error(run, capsys):
    from tinygrad_tx.app.cli import main
    capsys.readouterr()
    assert main(["translate", "--checkpoint", str(run), "1 2"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinygrad-tx translate: error: "), captured.err
    return lines[0]


def flip_a_bit(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


@pytest.mark.parametrize("damage", ["truncated", "zero bytes", "bit flipped", "not a zip"])
@pytest.mark.parametrize("name", ["model.npz", "optimizer.npz"])
def test_a_damaged_npz_is_one_clear_error(good_run, tmp_path, capsys, damage, name):
    run = copy_run(good_run, tmp_path)
    path = run / "step-00000002" / name
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 3], "zero bytes": b"", "bit flipped": flip_a_bit(data),
                      "not a zip": b"hello, I am a text file\n"}[damage])
    with pytest.raises(CheckpointError, match=f"step-00000002/{name}: damaged"):
        load_checkpoint(str(run))
    with pytest.raises(CheckpointError, match=f"{name}: damaged"):
        quiet_train(TrainConfig(**settings(tsv_of(good_run))), run, steps=4, resume=True)
    if name == "model.npz":
        assert f"{name}: damaged" in one_line_cli_error(run, capsys)
    # Past the checksum (checkpoint.json edited to match), the file itself is still refused clearly.
    refresh_checksum(run, f"step-00000002/{name}")
    expected = {"truncated": "damaged .npz", "zero bytes": "it is empty", "bit flipped": "",
                "not a zip": "not a zip archive"}[damage]
    try:
        load_checkpoint(str(run))
    except CheckpointError as e:
        assert f"step-00000002/{name}" in str(e) and expected in str(e) and "allow_pickle" not in str(e)
    else:
        # A flipped bit inside the compressed data can still decode; zip's CRC-32 catches most of them.
        assert damage == "bit flipped"


def tsv_of(run):
    saved = json.loads((run / "config.json").read_text())["train"]
    return {"train": saved["data"], "valid": saved["valid"]}


@pytest.mark.parametrize("content, problem", [
    ("{}", "'train' must be a JSON object, found nothing"),
    ("[1, 2]", "expected a JSON object with 'train' and 'model', found list"),
    ('{"train": 5}', "'train' must be a JSON object, found int"),
    ('{"train": {"batch_size": 0}, "model": {}}', "batch_size must be a whole number >= 1"),
    ('{"train": {"colour": "red"}, "model": {}}', "unknown training settings ['colour']"),
    ("{nope", "cannot read"),
])
def test_a_bad_config_json_is_one_clear_error(good_run, tmp_path, capsys, content, problem):
    run = copy_run(good_run, tmp_path)
    (run / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match="config.json: damaged"):
        load_model(str(run))
    refresh_checksum(run, "config.json")
    with pytest.raises(CheckpointError) as info:
        load_model(str(run))
    assert "config.json" in str(info.value) and problem in str(info.value)
    line = one_line_cli_error(run, capsys)
    assert "config.json" in line and problem in line
    # --resume reads config.json before anything else: the same one line, no traceback.
    from tinygrad_tx.app.cli import main
    assert main(["train", "--out", str(run), "--resume", "--steps", "4"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json" in err[0] and problem in err[0]


@pytest.mark.parametrize("content, where", [
    ('{"epoch": 0}\n', "metrics.jsonl:1: expected a JSON object with a whole-number 'step'"),
    ('{"step": 2, "valid_loss": NaN}\n', "metrics.jsonl:1: not a JSON record: NaN is not valid JSON"),
    ('[2]\n', "metrics.jsonl:1"),
    ('{"step": 2}\n{"step": "two"}\n', "metrics.jsonl:2"),
])
def test_a_bad_metrics_record_is_one_clear_error(good_run, tmp_path, content, where):
    run = copy_run(good_run, tmp_path)
    (run / "metrics.jsonl").write_text(content)
    with pytest.raises(CheckpointError, match=where.replace("[", r"\[").replace("(", r"\(")):
        load_checkpoint(str(run))


@pytest.mark.parametrize("content, problem", [
    ("", "cannot read"),
    ("[1, 2]", "expected a JSON object"),
    ('{"format": 2, "step": -1}', "'step' must be a whole number"),
    ('{"format": 9}', "unknown format 9"),
])
def test_a_bad_checkpoint_json_is_one_clear_error(good_run, tmp_path, content, problem):
    run = copy_run(good_run, tmp_path)
    (run / "checkpoint.json").write_text(content)
    with pytest.raises(CheckpointError, match=problem):
        load_checkpoint(str(run))


def test_a_mixture_of_steps_is_refused(tsv, tmp_path):
    """The failure kill -9 used to leave: step-4 weights beside step-2 trainer state."""
    cfg = TrainConfig(**settings(tsv))
    quiet_train(cfg, tmp_path / "a", steps=2)
    quiet_train(cfg, tmp_path / "b", steps=4)
    a, b = tmp_path / "a" / "step-00000002", tmp_path / "b" / "step-00000004"
    (a / "model.npz").write_bytes((b / "model.npz").read_bytes())
    with pytest.raises(CheckpointError, match="model.npz: damaged"):
        load_checkpoint(str(tmp_path / "a"))
    (a / "trainer.json").write_text((b / "trainer.json").read_text())
    refresh_checksum(tmp_path / "a", "step-00000002/model.npz")
    refresh_checksum(tmp_path / "a", "step-00000002/trainer.json")
    with pytest.raises(CheckpointError, match="holds step 4 but checkpoint.json commits step 2"):
        load_checkpoint(str(tmp_path / "a"))


def test_tx_load_names_a_file_that_is_not_npz(tmp_path):
    import tinygrad_tx as tx
    (tmp_path / "x.npz").write_text("just text")
    with pytest.raises(ValueError, match="x.npz is not an .npz file") as info:
        tx.load(tmp_path / "x.npz")
    assert "allow_pickle" not in str(info.value)
    tx.save({"w": np.ones(3)}, tmp_path / "y.npz")
    data = (tmp_path / "y.npz").read_bytes()
    (tmp_path / "y.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="y.npz is a damaged .npz file"):
        tx.load(tmp_path / "y.npz")
    assert zipfile.is_zipfile(tmp_path / "x.npz") is False
