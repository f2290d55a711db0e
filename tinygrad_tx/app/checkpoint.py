"""The run directory: reading its JSON files and loading a trained model from it."""
from __future__ import annotations

import dataclasses
import json
import os

from tinygrad_tx import backend
from tinygrad_tx.models.transformer import Transformer
from tinygrad_tx.serialization import load

from .config import CheckpointError, TrainConfig
from .vocab import PairVocab

CHECKPOINT_FILES = ("config.json", "vocab.json", "model.npz", "optimizer.npz", "trainer.json")


# ---------------------------------------------------------------------------- run directory
def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e


def has_checkpoint(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, "trainer.json"))


def load_model(run_dir: str, device: str | None = None):
    """(TrainConfig, PairVocab, Transformer in eval mode) from a run directory."""
    device = backend.check_device(device)
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"no run directory {run_dir}")
    missing = [name for name in ("config.json", "vocab.json", "model.npz")
               if not os.path.exists(os.path.join(run_dir, name))]
    if missing:
        raise CheckpointError(f"{run_dir} is not a complete checkpoint: missing {', '.join(missing)}")
    saved = read_json(os.path.join(run_dir, "config.json"))
    cfg = TrainConfig.from_json(saved["train"])
    vocab = PairVocab.load(os.path.join(run_dir, "vocab.json"))
    model_cfg = cfg.model_config(len(vocab.src), len(vocab.tgt))
    if dataclasses.asdict(model_cfg) != saved["model"]:
        raise CheckpointError(f"{run_dir}: config.json's model {saved['model']} does not match its training "
                              f"settings and vocab.json ({dataclasses.asdict(model_cfg)})")
    model = Transformer(model_cfg)
    try:
        model.load_state_dict(load(os.path.join(run_dir, "model.npz")))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{run_dir}/model.npz does not fit config.json: {e}") from e
    model.to(device=device)
    model.eval()
    return cfg, vocab, model


def config_differences(saved: TrainConfig, asked: TrainConfig) -> list[str]:
    a, b = saved.to_json(), asked.to_json()
    return [f"{key}: checkpoint has {a[key]!r}, asked for {b[key]!r}" for key in a if a[key] != b[key]]
