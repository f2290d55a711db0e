"""The run directory: saving a checkpoint as one atomic unit, and loading it back with every file checked.

A run directory looks like this:

    RUN/
      config.json       the TrainConfig and the TransformerConfig (written when the run starts)
      vocab.json        the tokenizer level and both vocabularies (written when the run starts)
      metrics.jsonl     one JSON object per validation: step, losses, exact match, BLEU, chrF
      step-00000500/    the checkpoint of step 500:
        model.npz         the model's state_dict
        optimizer.npz     Adam's moments and step counts
        trainer.json      step, epoch, position in the epoch, scheduler and RNG state, seconds trained
      checkpoint.json   the commit point: the step, its folder, and the size and SHA-256 of every file
                        the checkpoint is made of (config.json, vocab.json and the folder's three files)

Saving writes a new folder under a temporary name, renames it to step-N/, and only then replaces
checkpoint.json (atomically, with os.replace). A process killed at any moment therefore leaves either
the old checkpoint or the new one: never step-N weights beside step-M optimizer state. Loading checks
every file against checkpoint.json, so a truncated, zeroed or bit-flipped file is a CheckpointError
that names the file, never a wrong model. Leftovers of a killed save (temporary files and folders,
a step folder that was never committed) are removed when the next run starts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass

from tinygrad_tx.models.transformer import Transformer

from tinygrad_tx import backend
from tinygrad_tx.serialization import (
    atomic_directory,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    fsync_directory,
    load,
    save,
)

from .config import CheckpointError, TrainConfig
from .tasks import DataError
from .vocab import PairVocab

POINTER = "checkpoint.json"
RUN_FILES = ("config.json", "vocab.json")                  # fixed for the whole run
STEP_FILES = ("model.npz", "optimizer.npz", "trainer.json")  # one set per checkpoint
METRICS = "metrics.jsonl"
STEP_FOLDER = re.compile(r"^step-(\d{8})$")
FORMAT = 2

# The points of save_checkpoint, in order; a test kills the process at each one (see `hook`).
SAVE_POINTS = ("folder created", "model written", "optimizer written", "trainer written", "folder renamed",
               "metrics written", "pointer half written", "committed", "old folders removed")


def step_folder(step: int) -> str:
    return f"step-{step:08d}"


# ---------------------------------------------------------------------------- small readers
def read_json(path):
    """A JSON file's content, or a CheckpointError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e


def _expect(condition, path, what):
    if not condition:
        raise CheckpointError(f"{path}: {what}")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def file_digest(path) -> dict:
    """{"bytes": size, "sha256": hex digest} of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": os.path.getsize(path), "sha256": h.hexdigest()}


# ---------------------------------------------------------------------------- is this a run of ours?
def has_checkpoint(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, POINTER))


def committed_step(run_dir: str) -> int | None:
    """The step of the run's committed checkpoint, or None when it has none."""
    return _read_pointer(run_dir)["step"] if has_checkpoint(run_dir) else None


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and ".tmp" in name


def is_run_entry(name: str) -> bool:
    """Whether a name in a folder is one that a run of ours writes."""
    return (name in (POINTER, METRICS, "pictures") + RUN_FILES or bool(STEP_FOLDER.match(name))
            or _is_temporary(name))


def check_out_dir(run_dir: str, force: bool = False) -> None:
    """Refuse an --out that exists and holds files other than a run's, unless `force`."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise CheckpointError(f"--out {run_dir} is a file, not a directory")
    if force or not os.path.isdir(run_dir):
        return
    foreign = sorted(name for name in os.listdir(run_dir) if not is_run_entry(name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise CheckpointError(f"--out {run_dir} is not empty and is not a training run (it holds {shown}); "
                              f"choose another --out, or pass --force to write into it anyway")
    legacy = os.path.join(run_dir, "trainer.json")
    if os.path.exists(legacy):
        raise CheckpointError(f"{run_dir} holds a checkpoint in the old layout (trainer.json beside "
                              f"model.npz), which this version does not read; train it again into a new --out")


def clean_stale(run_dir: str) -> list[str]:
    """Remove what a killed save leaves behind: temporary files and folders, and step folders that
    checkpoint.json does not name. Returns the names removed."""
    if not os.path.isdir(run_dir):
        return []
    committed = None
    if has_checkpoint(run_dir):
        committed = _read_pointer(run_dir)["folder"]
    removed = []
    for name in sorted(os.listdir(run_dir)):
        path = os.path.join(run_dir, name)
        if _is_temporary(name) or (STEP_FOLDER.match(name) and name != committed):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(name)
    return removed


# ---------------------------------------------------------------------------- saving
def start_run(run_dir: str, cfg: TrainConfig, model_config, vocab: PairVocab) -> None:
    """Create the run directory with its config.json and vocab.json (before the first step, so that an
    --out that cannot be written fails at once, not after the training budget is spent)."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        atomic_write_json(os.path.join(run_dir, "config.json"),
                          {"train": cfg.to_json(), "model": dataclasses.asdict(model_config)})
        vocab.save(os.path.join(run_dir, "vocab.json"))
    except OSError as e:
        raise CheckpointError(f"cannot write the run directory {run_dir}: {e}") from e


def save_checkpoint(run_dir: str, step: int, model_state: dict, optimizer_state: dict, trainer: dict,
                    metrics: list[dict], hook=None) -> None:
    """Save one checkpoint as an atomic unit (see the module docstring).

    `hook(point)`, when given, is called at each of SAVE_POINTS; tests use it to kill the process there.
    """
    hook = hook or (lambda point: None)
    name = step_folder(step)
    with atomic_directory(os.path.join(run_dir, name)) as tmp:     # step-N/ appears complete or not at all
        hook("folder created")
        save(model_state, os.path.join(tmp, "model.npz"))
        hook("model written")
        save(optimizer_state, os.path.join(tmp, "optimizer.npz"))
        hook("optimizer written")
        atomic_write_json(os.path.join(tmp, "trainer.json"), {"step": step, **trainer})
        hook("trainer written")
    hook("folder renamed")

    # metrics.jsonl may run ahead of the commit: loading keeps only records up to the committed step.
    atomic_write_text(os.path.join(run_dir, METRICS), "".join(json.dumps(m, allow_nan=False) + "\n"
                                                               for m in metrics))
    hook("metrics written")

    files = {f: file_digest(os.path.join(run_dir, f)) for f in RUN_FILES}
    files.update({f"{name}/{f}": file_digest(os.path.join(run_dir, name, f)) for f in STEP_FILES})
    pointer = (json.dumps({"format": FORMAT, "step": step, "folder": name, "files": files}, indent=1) + "\n")
    pointer = pointer.encode("utf-8")

    def write_pointer(f):
        f.write(pointer[:len(pointer) // 2])
        f.flush()
        hook("pointer half written")
        f.write(pointer[len(pointer) // 2:])

    atomic_write(os.path.join(run_dir, POINTER), write_pointer)
    fsync_directory(run_dir)
    hook("committed")

    for old in os.listdir(run_dir):
        if STEP_FOLDER.match(old) and old != name:
            shutil.rmtree(os.path.join(run_dir, old), ignore_errors=True)
    hook("old folders removed")


# ---------------------------------------------------------------------------- loading
@dataclass
class Checkpoint:
    """What a committed checkpoint holds, every file checked."""
    step: int
    cfg: TrainConfig
    model_config: dict
    vocab: PairVocab
    model: dict            # name -> array
    optimizer: dict        # name -> array
    trainer: dict          # trainer.json
    metrics: list[dict]    # records up to `step`


def _read_pointer(run_dir: str) -> dict:
    path = os.path.join(run_dir, POINTER)
    pointer = read_json(path)
    _expect(isinstance(pointer, dict), path, f"expected a JSON object, found {type(pointer).__name__}")
    _expect(pointer.get("format") == FORMAT, path, f"unknown format {pointer.get('format')!r} (expected {FORMAT})")
    _expect(_is_count(pointer.get("step")), path, f"'step' must be a whole number >= 0, found "
                                                  f"{pointer.get('step')!r}")
    _expect(pointer.get("folder") == step_folder(pointer["step"]), path,
            f"'folder' must be {step_folder(pointer['step'])!r}, found {pointer.get('folder')!r}")
    files = pointer.get("files")
    expected = set(RUN_FILES) | {f"{pointer['folder']}/{f}" for f in STEP_FILES}
    _expect(isinstance(files, dict) and set(files) == expected, path,
            f"'files' must list exactly {sorted(expected)}")
    for name, digest in files.items():
        _expect(isinstance(digest, dict) and _is_count(digest.get("bytes"))
                and isinstance(digest.get("sha256"), str), path, f"bad entry for {name}: {digest!r}")
    return pointer


def _verify(run_dir: str, pointer: dict) -> None:
    """Every file of the checkpoint exists with the size and SHA-256 recorded in checkpoint.json."""
    for name, expected in pointer["files"].items():
        path = os.path.join(run_dir, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing (checkpoint.json lists it for step {pointer['step']})")
        actual = file_digest(path)
        if actual["bytes"] != expected["bytes"]:
            raise CheckpointError(f"{path}: damaged: {actual['bytes']} bytes where checkpoint.json records "
                                  f"{expected['bytes']} (truncated or replaced?)")
        if actual["sha256"] != expected["sha256"]:
            raise CheckpointError(f"{path}: damaged: its SHA-256 checksum differs from the one in "
                                  f"checkpoint.json (a changed or corrupted byte)")


def read_config(run_dir: str) -> tuple[TrainConfig, dict]:
    """(TrainConfig, TransformerConfig as a dict) from RUN/config.json, with its shape checked."""
    path = os.path.join(run_dir, "config.json")
    saved = read_json(path)
    _expect(isinstance(saved, dict), path, f"expected a JSON object with 'train' and 'model', "
                                           f"found {type(saved).__name__}")
    for key in ("train", "model"):
        _expect(isinstance(saved.get(key), dict), path, f"{key!r} must be a JSON object, found "
                                                        f"{type(saved.get(key)).__name__ if key in saved else 'nothing'}")
    try:
        cfg = TrainConfig.from_json(saved["train"])
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad training settings: {e}") from e
    return cfg, saved["model"]


def _read_vocab(run_dir: str) -> PairVocab:
    path = os.path.join(run_dir, "vocab.json")
    try:
        return PairVocab.load(path)
    except DataError as e:
        raise CheckpointError(f"{path}: {e}") from e


def _read_npz(path: str) -> dict:
    try:
        return load(path)
    except (OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable .npz file: {e}") from e


def read_metrics(run_dir: str, up_to_step: int | None = None) -> list[dict]:
    """The records of RUN/metrics.jsonl (each a JSON object with a whole-number 'step'), keeping
    those up to `up_to_step`."""
    path = os.path.join(run_dir, METRICS)
    if not os.path.exists(path):
        return []
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_constant=_refuse_constant)
        except ValueError as e:
            raise CheckpointError(f"{path}:{number}: not a JSON record: {e}") from e
        _expect(isinstance(record, dict) and _is_count(record.get("step")), f"{path}:{number}",
                "expected a JSON object with a whole-number 'step'")
        if up_to_step is None or record["step"] <= up_to_step:
            records.append(record)
    return records


def _refuse_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _check_trainer(path: str, trainer, step: int) -> None:
    _expect(isinstance(trainer, dict), path, f"expected a JSON object, found {type(trainer).__name__}")
    for key in ("step", "epoch", "position"):
        _expect(_is_count(trainer.get(key)), path, f"{key!r} must be a whole number >= 0, found "
                                                   f"{trainer.get(key)!r}")
    _expect(isinstance(trainer.get("seconds"), (int, float)), path, "'seconds' must be a number")
    _expect(isinstance(trainer.get("scheduler"), dict), path, "'scheduler' must be a JSON object")
    _expect(isinstance(trainer.get("rng"), dict), path, "'rng' must be a JSON object")
    _expect(trainer["step"] == step, path, f"holds step {trainer['step']} but checkpoint.json commits step {step}")


def _check_finite(path: str, arrays: dict) -> None:
    for key, value in arrays.items():
        if value.dtype.kind == "f" and value.size and not math.isfinite(float(abs(value).max())):
            raise CheckpointError(f"{path}: {key} holds NaN or infinite values")


def load_checkpoint(run_dir: str) -> Checkpoint:
    """The committed checkpoint of a run directory, every file verified; CheckpointError otherwise."""
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"no run directory {run_dir}")
    if not has_checkpoint(run_dir):
        if os.path.exists(os.path.join(run_dir, "trainer.json")):
            raise CheckpointError(f"{run_dir} holds a checkpoint in the old layout (trainer.json beside "
                                  f"model.npz), which this version does not read; train it again")
        raise CheckpointError(f"{run_dir} holds no checkpoint ({POINTER} is missing)")
    pointer = _read_pointer(run_dir)
    _verify(run_dir, pointer)
    step, folder = pointer["step"], os.path.join(run_dir, pointer["folder"])
    cfg, model_config = read_config(run_dir)
    vocab = _read_vocab(run_dir)
    model = _read_npz(os.path.join(folder, "model.npz"))
    _check_finite(os.path.join(folder, "model.npz"), model)
    optimizer = _read_npz(os.path.join(folder, "optimizer.npz"))
    trainer_path = os.path.join(folder, "trainer.json")
    trainer = read_json(trainer_path)
    _check_trainer(trainer_path, trainer, step)
    return Checkpoint(step, cfg, model_config, vocab, model, optimizer, trainer, read_metrics(run_dir, step))


def load_model(run_dir: str, device: str | None = None):
    """(TrainConfig, PairVocab, Transformer in eval mode) from a run directory's committed checkpoint."""
    device = backend.check_device(device)
    ckpt = load_checkpoint(run_dir)
    model_cfg = ckpt.cfg.model_config(len(ckpt.vocab.src), len(ckpt.vocab.tgt))
    if dataclasses.asdict(model_cfg) != ckpt.model_config:
        raise CheckpointError(f"{run_dir}/config.json: its model {ckpt.model_config} does not match its training "
                              f"settings and vocab.json ({dataclasses.asdict(model_cfg)})")
    model = Transformer(model_cfg)
    try:
        model.load_state_dict(ckpt.model)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{run_dir}/{step_folder(ckpt.step)}/model.npz does not fit config.json: {e}") from e
    model.to(device=device)
    model.eval()
    return ckpt.cfg, ckpt.vocab, model


def config_differences(saved: TrainConfig, asked: TrainConfig) -> list[str]:
    a, b = saved.to_json(), asked.to_json()
    return [f"{key}: checkpoint has {a[key]!r}, asked for {b[key]!r}" for key in a if a[key] != b[key]]
