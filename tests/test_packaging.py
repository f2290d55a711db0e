"""What `pip install` puts on disk: models/ lands as tinygrad_tx.models, never as a top-level `models`.

Most ML projects have a `models/` package of their own; ours must neither shadow it nor be shadowed by it.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def can_build_wheels() -> bool:
    """setuptools builds wheels by itself from 70.1 on; before that it needs the `wheel` package."""
    import setuptools
    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory):
    if not can_build_wheels():
        pytest.skip("building a wheel offline needs the wheel package: pip install wheel (in the test extra)")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"                          # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("tinygrad_tx", "models"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp / "dist"), str(source)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("tinygrad_tx-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_the_wheel_has_no_top_level_models_package(wheel_files):
    top_level = {name.split("/")[0] for name in wheel_files if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"tinygrad_tx"}
    assert "tinygrad_tx/models/transformer.py" in wheel_files
    assert "tinygrad_tx/app/cli.py" in wheel_files
    entry_points = [n for n in wheel_files if n.endswith(".dist-info/entry_points.txt")]
    assert len(entry_points) == 1


def source_files() -> list[str]:
    """The files of tinygrad_tx/ and models/ that git tracks (every .py file where git is not there)."""
    listed = subprocess.run(["git", "ls-files", "tinygrad_tx", "models"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    if listed.returncode == 0 and listed.stdout.strip():
        return listed.stdout.split()
    return [p.relative_to(ROOT).as_posix() for folder in ("tinygrad_tx", "models")
            for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]


def test_the_wheel_holds_every_file_of_the_tree(wheel_files):
    """A subpackage missing from pyproject's package list, or a data file its package-data misses, would
    install without its files."""
    expected = {"tinygrad_tx/" + name if name.startswith("models/") else name for name in source_files()}
    assert sorted(expected - set(wheel_files)) == []


def test_a_project_with_its_own_models_package_keeps_it_and_can_train(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("WHO = 'the user models package'\n")
    pairs = "".join(f"{s}\t{s}\n" for s in ("3 4 5", "6 7", "8 9 3", "4 4", "5 6 7 8"))
    (tmp_path / "pairs.tsv").write_text(pairs)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args):
        result = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    out = run("-c", "import models; print(models.WHO)\n"
                    "from tinygrad_tx.models.transformer import Transformer, TransformerConfig\n"
                    "import tinygrad_tx.models, tinygrad_tx.app.train\n"
                    "print(tinygrad_tx.models.__name__)")
    assert out.splitlines() == ["the user models package", "tinygrad_tx.models"]
    run("-m", "tinygrad_tx", "train", "--data", "pairs.tsv", "--valid", "pairs.tsv", "--out", "run", "--steps", "2",
        "--batch-size", "4")
    assert (tmp_path / "run" / "checkpoint.json").exists()
    translation = run("-m", "tinygrad_tx", "translate", "--checkpoint", "run", "3 4 5")
    assert len(translation.splitlines()) == 1
