"""Data-parallel training (tinygrad_tx/distributed.py): a world of one does nothing, and under
`mpirun -np 2` the collectives are right and two ranks train the same weights as one process."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinygrad_tx as tx
from tinygrad_tx import distributed as dist
from tinygrad_tx import nn
from tinygrad_tx.app import tasks
from tinygrad_tx.app.checkpoint import load_checkpoint
from tinygrad_tx.app.cli import main

HERE = Path(__file__).resolve().parent
MPI_HINT = "needs Open MPI and mpi4py: apt-get install openmpi-bin libopenmpi-dev && pip install mpi4py"


# ---------------------------------------------------------------------------- one process
def test_a_world_of_one_does_nothing():
    dist.init()
    assert (dist.rank(), dist.world_size()) == (0, 1)
    a = np.arange(4.0)
    assert dist.all_reduce(a, op="mean") is a
    np.testing.assert_array_equal(a, np.arange(4.0))
    tx.manual_seed(0)
    model = nn.Linear(3, 2)
    before = [p.numpy().copy() for p in model.parameters()]
    model.weight.grad = np.ones((2, 3), dtype=np.float32)
    dist.broadcast_parameters(model)
    assert dist.average_gradients(model, weight=7) == 7
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)
    np.testing.assert_array_equal(model.weight.grad.numpy(), np.ones((2, 3)))
    assert model.bias.grad is None
    assert dist.from_root(lambda: 42) == 42
    assert dist.gather_object("x") == ["x"]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="all_reduce: unknown op 'avg'"):
        dist.all_reduce(np.zeros(2), op="avg")
    with pytest.raises(ValueError, match="op 'mean' needs a floating-point array, got int64"):
        dist.all_reduce(np.zeros(2, dtype=np.int64), op="mean")
    with pytest.raises(ValueError, match="weight must be >= 0"):
        dist.average_gradients(nn.Linear(2, 2), weight=-1)


def test_import_tinygrad_tx_does_not_import_mpi4py():
    code = "import sys, tinygrad_tx; tinygrad_tx.distributed.init(); print('mpi4py' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k not in dist.LAUNCHER_VARIABLES}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_launched_by_mpirun_without_mpi4py_says_how_to_install_it(tmp_path):
    broken = tmp_path / "site" / "mpi4py"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('libmpi.so.40: cannot open shared object file')\n")
    env = {**os.environ, "OMPI_COMM_WORLD_SIZE": "2", "PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run([sys.executable, "-m", "tinygrad_tx", "train", "--task", "copy", "--out",
                             str(tmp_path / "run"), "--steps", "1"], capture_output=True, text=True, env=env,
                            timeout=120, check=False)
    assert result.returncode == 1
    assert "apt-get install openmpi-bin libopenmpi-dev" in result.stderr and "libmpi.so.40" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- mpirun -np 2
def _mpi_missing():
    if shutil.which("mpirun") is None:
        return "mpirun not found"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py not installed"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=f"{_mpi_missing()}: {MPI_HINT}")


def mpirun(args, ranks=2, timeout=180):
    """Run `python args...` in `ranks` processes; one BLAS thread each, so that 2 ranks fit 2 cores."""
    command = ["mpirun", "-np", str(ranks), "--oversubscribe"]
    if os.geteuid() == 0:
        command.append("--allow-run-as-root")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           # containers often forbid the cross-memory attach that Open MPI's shared memory tries first
           "OMPI_MCA_btl_vader_single_copy_mechanism": "none"}
    return subprocess.run(command + [sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=HERE.parent, check=False)


@needs_mpi
def test_collectives_under_mpirun():
    result = mpirun([str(HERE / "distributed_worker.py")])
    assert result.returncode == 0, result.stdout + result.stderr
    # the ranks' lines reach mpirun's stdout separately and may interleave ("rank 0 okrank 1 ok\n\n")
    assert sorted(re.findall(r"rank \d+ ok", result.stdout)) == ["rank 0 ok", "rank 1 ok"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """113 copy pairs in batches of 15: seven global batches of 15 sentences (8 + 7 rows per rank, with
    different token counts) and a last one of 8; a second epoch starts at step 9."""
    folder = tmp_path_factory.mktemp("distributed")
    paths = {}
    for split, size in [("train", 113), ("valid", 6)]:
        paths[split] = str(folder / f"{split}.tsv")
        tasks.write_tsv(tasks.load_task("copy", split, seed=0, size=size), paths[split])
    paths["folder"] = folder
    return paths


def train_args(files, out, steps, *extra):
    return ["train", "--data", files["train"], "--valid", files["valid"], "--out", str(out), "--steps", str(steps),
            "--batch-size", "15", "--eval-every", "5", *extra]


def weights(run_dir):
    return load_checkpoint(str(run_dir)).model


@needs_mpi
def test_two_ranks_train_the_same_weights_as_one_process(files, capsys):
    one, two = files["folder"] / "one", files["folder"] / "two"
    assert main(train_args(files, one, 10, "--dropout", "0")) == 0
    result = mpirun(["-m", "tinygrad_tx", *train_args(files, two, 10, "--dropout", "0")])
    assert result.returncode == 0, result.stderr[-3000:]
    # rank 0 alone writes the run directory and prints the summary
    assert result.stdout.count("validation after step 10") == 1
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))
    config = json.loads((two / "config.json").read_text())
    assert config["model"]["dropout"] == 0
    # A key's bias in attention has a gradient of exactly zero (softmax(q.(k + b)) does not depend on b:
    # it adds q.b to every score of a row), so float rounding is all its gradient holds, and Adam, which
    # divides by sqrt(v), turns that noise into steps of +-lr. Every other weight must match.
    a, b = weights(one), weights(two)
    compared = [key for key in a if not key.endswith("k_proj.bias")]
    diffs = sorted((float(np.abs(a[key] - b[key]).max()), key) for key in compared)
    print("largest differences:", diffs[-3:])
    for key in compared:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-6, err_msg=key)
    # and the weights did move, far more than the runs differ: not two untrained models
    assert main(train_args(files, files["folder"] / "untrained", 0)) == 0
    initial = weights(files["folder"] / "untrained")
    moved = min(float(np.abs(a[key] - initial[key]).max()) for key in compared)
    assert moved > 100 * diffs[-1][0]
    metrics_one = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    metrics_two = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics_two] == [5, 10]
    for m1, m2 in zip(metrics_one, metrics_two):
        assert m2["train_loss"] == pytest.approx(m1["train_loss"], rel=1e-4)
        assert m2["valid_loss"] == pytest.approx(m1["valid_loss"], rel=1e-4)
        assert m2["lr"] == m1["lr"]
    # the run directory is an ordinary one: evaluate and translate read it
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(two), "--data", files["valid"], "--json"]) == 0
    assert "exact_match" in json.loads(capsys.readouterr().out)


@needs_mpi
def test_sigusr1_to_mpirun_stops_every_rank_after_one_step_with_a_checkpoint(files):
    result = mpirun([str(HERE / "distributed_worker.py"), "stop", files["train"], files["valid"],
                     str(files["folder"] / "stopped")])
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert sorted(result.stdout.split("\n")[:-1]) == ["rank 0 ok", "rank 1 ok"]


def read_run(run_dir):
    ckpt = load_checkpoint(str(run_dir))
    trainer = dict(ckpt.trainer)
    trainer.pop("seconds")
    return ckpt.model, ckpt.optimizer, trainer


@needs_mpi
def test_resume_under_mpirun_continues_exactly(files):
    # Dropout on (the preset's 0.1): each rank's own dropout generator must be saved and restored too.
    straight, resumed = files["folder"] / "straight", files["folder"] / "resumed"
    for out, steps, extra in [(straight, 10, ()), (resumed, 6, ()), (resumed, 10, ("--resume",))]:
        result = mpirun(["-m", "tinygrad_tx", *train_args(files, out, steps, *extra)])
        assert result.returncode == 0, result.stderr[-3000:]
    model_a, optimizer_a, trainer_a = read_run(straight)
    model_b, optimizer_b, trainer_b = read_run(resumed)
    assert len(trainer_a["rng_per_rank"]) == 2 and trainer_a["rng_per_rank"][0] != trainer_a["rng_per_rank"][1]
    assert trainer_a == trainer_b
    for key in model_a:
        np.testing.assert_array_equal(model_a[key], model_b[key], err_msg=key)
    for key in optimizer_a:
        np.testing.assert_array_equal(optimizer_a[key], optimizer_b[key], err_msg=key)
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 6, 10]


@needs_mpi
def test_an_error_under_mpirun_is_reported_once_and_ends_every_rank(files):
    result = mpirun(["-m", "tinygrad_tx", *train_args(files, files["folder"] / "nothing", 4, "--resume")],
                    timeout=120)
    assert result.returncode != 0
    assert result.stderr.count("holds no checkpoint to resume from") == 1, result.stderr
