"""The tinygrad-tx command line: train -> evaluate -> translate end to end, and its errors."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinygrad_tx.app import tasks
from tinygrad_tx.app.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    paths = {}
    for split, size in [("train", 120), ("valid", 8), ("test", 8)]:
        paths[split] = str(folder / f"{split}.tsv")
        tasks.write_tsv(tasks.load_task("copy", split, seed=0, size=size), paths[split])
    paths["run"] = str(folder / "run")
    return paths


@pytest.fixture(scope="module")
def run(files):
    code = main(["train", "--data", files["train"], "--valid", files["valid"], "--out", files["run"],
                 "--steps", "4", "--batch-size", "16", "--eval-every", "4"])
    assert code == 0
    return files["run"]


def test_train_writes_a_run_and_prints_metrics(run, capsys):
    assert sorted(os.listdir(run)) == ["checkpoint.json", "config.json", "metrics.jsonl", "step-00000004",
                                       "vocab.json"]
    config = json.loads(Path(run, "config.json").read_text())
    assert config["train"]["config"] == "small" and config["model"]["d_model"] == 128


def test_train_decodes_as_many_validation_pairs_as_asked(files, tmp_path, capsys):
    """--decode-pairs bounds the greedy decoding of each validation (0: all); the loss and token
    accuracy always cover every pair, and the summary says which is which."""
    for asked, decoded, said in (("3", 3, "greedy decoding of 3 of 8 validation pairs"),
                                 ("0", 8, "greedy decoding of all of 8 validation pairs")):
        out = str(tmp_path / f"run{asked}")
        assert main(["train", "--data", files["train"], "--valid", files["valid"], "--out", out, "--steps", "2",
                     "--batch-size", "16", "--decode-pairs", asked]) == 0
        record = json.loads(Path(out, "metrics.jsonl").read_text().splitlines()[-1])
        assert record["decoded"] == decoded and record["valid_pairs"] == 8
        printed = capsys.readouterr().out
        assert f"validation after step 2: loss {record['valid_loss']:.3f}, token accuracy " in printed
        assert said in printed and "exact_match:" in printed
    with pytest.raises(SystemExit):
        main(["train", "--task", "copy", "--out", str(tmp_path / "x"), "--decode-pairs", "-1"])


def test_evaluate_prints_metrics_and_json(run, files, capsys):
    assert main(["evaluate", "--checkpoint", run, "--data", files["test"], "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"exact_match", "bleu", "chrf"}
    assert main(["evaluate", "--checkpoint", run, "--data", files["test"], "--beam", "2"]) == 0
    out = capsys.readouterr().out
    assert "8 sentences, beam 2" in out and "exact_match:" in out and "bleu:" in out and "chrf:" in out


def test_translate_arguments_and_stdin(run, capsys, monkeypatch):
    assert main(["translate", "--checkpoint", run, "1 2 3", "4 5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    monkeypatch.setattr(sys, "stdin", io.StringIO("1 2 3\n\n4 5\n"))
    assert main(["translate", "--checkpoint", run, "--beam", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[1] == "", "one output line per input line, blank lines kept"


def test_translate_warns_about_unknown_tokens(run, capsys):
    assert main(["translate", "--checkpoint", run, "1 banana 2"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "'banana'" in err


def test_resume_takes_the_checkpoint_settings_and_refuses_others(run, files, capsys):
    assert main(["train", "--out", run, "--resume", "--steps", "5"]) == 0
    assert json.loads(Path(run, "checkpoint.json").read_text())["step"] == 5
    assert json.loads(Path(run, "step-00000005", "trainer.json").read_text())["step"] == 5
    capsys.readouterr()
    assert main(["train", "--out", run, "--resume", "--steps", "9", "--config", "base"]) == 1
    err = capsys.readouterr().err
    assert "cannot resume" in err and "config: checkpoint has 'small', asked for 'base'" in err


def test_batches_in_tokens(files, tmp_path):
    run = str(tmp_path / "run")
    assert main(["train", "--data", files["train"], "--valid", files["valid"], "--out", run, "--steps", "2",
                 "--batch-tokens", "200", "--seed", "3"]) == 0
    config = json.loads(Path(run, "config.json").read_text())["train"]
    assert (config["batch_unit"], config["batch_size"], config["seed"]) == ("tokens", 200, 3)


def test_bad_tsv_is_reported_with_line_numbers(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nno tab\nc\td\n")
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "run"), "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and "error" in err
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    assert main(["train", "--data", str(empty), "--out", str(tmp_path / "run"), "--steps", "1"]) == 1
    assert "empty" in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["translate", "--checkpoint", str(tmp_path / "nope"), "hello"]) == 1
    assert "no run directory" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_command():
    result = subprocess.run([sys.executable, "-m", "tinygrad_tx", "--help"], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for command in ("train", "translate", "evaluate", "draw", "demo", "bench"):
        assert command in result.stdout


@pytest.mark.parametrize("option", [["--eval-every", "0"], ["--minutes", "-1"], ["--steps", "-5"],
                                    ["--batch-size", "0"], ["--batch-tokens", "-2"], ["--minutes", "nan"]])
def test_bad_numbers_are_refused_at_argument_parsing(files, tmp_path, capsys, option):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", files["train"], "--out", str(tmp_path / "run"), *option])
    assert info.value.code == 2 and option[0] in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("beam", ["0", "-3"])
def test_a_beam_below_one_is_refused(run, files, capsys, beam):
    for argv in (["translate", "--checkpoint", run, "--beam", beam, "1 2"],
                 ["evaluate", "--checkpoint", run, "--data", files["test"], "--beam", beam]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and "--beam: must be at least 1" in capsys.readouterr().err


def test_translate_reports_an_overlong_sentence_and_translates_the_rest(run, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\ufeff1 2 3\n" + "4 " * 1000 + "\n\n5 6\n"))
    assert main(["translate", "--checkpoint", run]) == 1          # not everything was translated
    captured = capsys.readouterr()
    out = captured.out.split("\n")[:-1]
    assert len(out) == 4 and out[1] == "" and out[2] == "" and out[0] and out[3]
    assert "line 2 not translated" in captured.err and "max_len" in captured.err
    assert "\ufeff" not in captured.err                             # the BOM is not an unknown token


def test_divergence_is_one_line_and_exit_one(files, tmp_path, capsys):
    code = main(["train", "--data", files["train"], "--valid", files["valid"], "--out", str(tmp_path / "run"),
                 "--steps", "6", "--batch-size", "16", "--lr-factor", "1e12", "--warmup-steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert "training diverged at step" in err[-1] and "lower learning rate" in err[-1]


def test_ctrl_c_saves_then_exits_130(files, tmp_path, capsys, monkeypatch):
    import signal

    from tinygrad_tx.app.train import Trainer
    original = Trainer.train_step

    def interrupted_step(self, batch):
        if self.state.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    run_dir = str(tmp_path / "run")
    assert main(["train", "--data", files["train"], "--valid", files["valid"], "--out", run_dir,
                 "--steps", "50", "--batch-size", "16"]) == 130
    assert "saved the checkpoint of step 2" in capsys.readouterr().err
    assert json.loads(Path(run_dir, "checkpoint.json").read_text())["step"] == 2


def test_train_refuses_a_foreign_out_unless_forced(files, tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep me")
    argv = ["train", "--data", files["train"], "--valid", files["valid"], "--out", str(out), "--steps", "1",
            "--batch-size", "16"]
    assert main(argv) == 1
    assert "not a training run" in capsys.readouterr().err and sorted(os.listdir(out)) == ["todo.txt"]
    assert main(argv + ["--force"]) == 0
    assert (out / "todo.txt").read_text() == "keep me"
