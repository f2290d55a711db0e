"""Files: the one atomic writer, and state dicts in .npz files that load without unpickling."""
import json
import os
import uuid

import numpy as np
import pytest

import tinygrad_tx as tx
from tinygrad_tx import serialization
from tinygrad_tx.serialization import atomic_write, atomic_write_json, atomic_write_text


# ---------------------------------------------------------------------------- the atomic writer
def test_atomic_write_takes_bytes_text_or_a_writer(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_write(path, "héllo")                                  # text is written as UTF-8
    assert path.read_bytes() == "héllo".encode()
    atomic_write(path, lambda f: f.write(b"from a writer"))
    assert path.read_bytes() == b"from a writer"
    atomic_write_text(tmp_path / "a.txt", "line\n")
    atomic_write_json(tmp_path / "a.json", {"step": 3, "rng": [1, 2]})
    assert (tmp_path / "a.txt").read_text() == "line\n"
    assert json.loads((tmp_path / "a.json").read_text()) == {"step": 3, "rng": [1, 2]}
    assert sorted(os.listdir(tmp_path)) == ["a.json", "a.txt", "out.bin"]   # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    atomic_write_text(path, "old\n")
    seen_during_write = []

    def write_half_then_fail(f):
        f.write(b"half of the new")
        seen_during_write.extend(os.listdir(tmp_path))
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, write_half_then_fail)
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["metrics.jsonl"]
    temporary = [name for name in seen_during_write if name != "metrics.jsonl"]
    assert len(temporary) == 1 and temporary[0].startswith(".metrics.jsonl.")   # it was there, and is gone

    with pytest.raises(KeyboardInterrupt):                      # an interrupt cleans up as well
        atomic_write(path, lambda f: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert os.listdir(tmp_path) == ["metrics.jsonl"] and path.read_text() == "old\n"


def test_every_write_uses_a_fresh_temporary_name(tmp_path):
    names = []

    def remember(f):
        names.extend(n for n in os.listdir(tmp_path) if n.startswith(".x."))
        f.write(b"1")

    for _ in range(3):
        atomic_write(tmp_path / "x", remember)
    assert len(set(names)) == 3


def test_a_planted_symlink_is_never_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    path = tmp_path / "run.json"
    # The names that fixed-name writers use are harmless: they are never opened.
    for fixed in (f"{path}.tmp", f"{path}.tmp-{os.getpid()}"):
        os.symlink(victim, fixed)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and victim.read_text() == "precious"

    # Even when an attacker guesses the random name, the exclusive create refuses to follow the link.
    fixed_uuid = uuid.UUID(int=42)
    monkeypatch.setattr(serialization.uuid, "uuid4", lambda: fixed_uuid)
    guessed = tmp_path / f".run.json.{fixed_uuid.hex}.tmp"
    os.symlink(victim, guessed)
    with pytest.raises(FileExistsError):
        atomic_write_text(path, "evil")
    assert victim.read_text() == "precious" and path.read_text() == "new"
    assert os.path.islink(guessed)                               # the planted link is not ours to remove


def test_figures_and_drawings_go_through_the_atomic_writer(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="pip install 'tinygrad-tx[viz]'")
    calls = []
    real = serialization.atomic_write

    def spy(path, write):
        calls.append(os.path.basename(path))
        return real(path, write)

    monkeypatch.setattr(tx.viz.plots, "atomic_write", spy)
    out = tx.viz.plot_positional_encoding(8, 16, tmp_path / "pe.png")
    assert calls == ["pe.png"] and os.path.getsize(out) > 0
    assert os.listdir(tmp_path) == ["pe.png"]


# ---------------------------------------------------------------------------- state dicts as .npz
def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    tx.save({"a": np.arange(3)}, path)

    with pytest.raises(TypeError, match="'b'"):
        tx.save({"a": np.zeros(2), "b": {"nested": 1}}, path)
    with pytest.raises(TypeError, match="'c'"):
        tx.save({"c": np.array([object()])}, path)

    def write_half_then_fail(f, arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")
    monkeypatch.setattr(serialization, "write_npz", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        tx.save({"a": np.zeros(5)}, path)
    monkeypatch.undo()

    np.testing.assert_array_equal(tx.load(path)["a"], np.arange(3))   # the old file is intact
    assert os.listdir(tmp_path) == ["ckpt.npz"]                         # no temp files left


def test_save_rejects_non_dicts_and_load_never_unpickles(tmp_path):
    with pytest.raises(TypeError, match="dict"):
        tx.save([np.zeros(2)], tmp_path / "x.npz")
    with pytest.raises(TypeError, match="strings"):
        tx.save({1: np.zeros(2)}, tmp_path / "x.npz")
    evil = tmp_path / "evil.npz"
    np.savez(evil, a=np.array([{"x": 1}], dtype=object))       # needs pickle to read back
    with pytest.raises(ValueError, match="pickle"):
        tx.load(evil)
    tx.save({"n": 3, "lr": 0.5, "t": tx.Tensor([1.0])}, tmp_path / "scalars.npz")
    loaded = tx.load(tmp_path / "scalars.npz")
    assert loaded["n"].shape == () and loaded["n"] == 3 and loaded["lr"] == 0.5
