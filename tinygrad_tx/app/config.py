"""What a training run is: its settings (TrainConfig, the model presets) and its data pairs."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from tinygrad_tx.models.transformer import TransformerConfig

from . import tasks
from .vocab import PAD, PairVocab


class CheckpointError(ValueError):
    """A run directory that is missing, incomplete, damaged, or does not match what was asked for."""


# The presets share issue 4's benchmark shapes. Every one is post-LN, as in the paper.
MODEL_PRESETS = {
    "small": {"d_model": 128, "n_heads": 4, "d_ff": 512, "n_layers": 2, "dropout": 0.1},
    "base": {"d_model": 256, "n_heads": 8, "d_ff": 1024, "n_layers": 3, "dropout": 0.1},
    "paper": {"d_model": 512, "n_heads": 8, "d_ff": 2048, "n_layers": 6, "dropout": 0.1},
}


@dataclass
class TrainConfig:
    """Everything that decides what a run learns. Saved as config.json; --resume must match it.

    Data: `task` (a generated task, see tasks.load_task; default numbers-en-fr when no `data` is
    given) or `data` (a TSV file) with an optional `valid` TSV (otherwise up to 1000 training pairs,
    a tenth at most, are held out).
    """
    task: str | None = None
    data: str | None = None
    valid: str | None = None
    level: str = "word"                     # tokenizer: "word" or "char"
    config: str = "small"                   # a MODEL_PRESETS name
    model: dict = field(default_factory=dict)   # preset overrides: d_model, n_heads, d_ff, ...
    seed: int = 0
    batch_size: int = 64
    batch_unit: str = "sentences"           # or "tokens": batch_size is then the padded tokens per batch
    # lr = lr_factor * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5): for small, a peak of
    # 3.1e-3 at step 200. Tuned on copy and numbers-en-fr: factor 1.0 (peak 6.2e-3) learns more
    # slowly and factor 1.0 with 100 warm-up steps (8.8e-3) does not learn at all.
    warmup_steps: int = 200
    lr_factor: float = 0.5
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-9
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    eval_every: int = 500                   # validate and checkpoint every this many steps

    def __post_init__(self):
        if self.task is None and self.data is None:
            self.task = tasks.DEFAULT_TASK
        if self.task is not None and self.data is not None:
            raise ValueError("TrainConfig: give one of task (a generated task) or data (a TSV file), not both")
        if self.valid is not None and self.data is None:
            raise ValueError("TrainConfig: valid (a TSV file) goes with data; a generated task has its own")
        for name in ("batch_size", "warmup_steps", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig: {name} must be a whole number >= 1, got {value!r}")
        if self.level not in ("word", "char"):
            raise ValueError(f"TrainConfig: level must be 'word' or 'char', got {self.level!r}")
        if self.batch_unit not in ("sentences", "tokens"):
            raise ValueError(f"TrainConfig: batch_unit must be 'sentences' or 'tokens', got {self.batch_unit!r}")
        if not (isinstance(self.lr_factor, (int, float)) and self.lr_factor > 0):
            raise ValueError(f"TrainConfig: lr_factor must be > 0, got {self.lr_factor!r}")
        if not (isinstance(self.label_smoothing, (int, float)) and 0 <= self.label_smoothing < 1):
            raise ValueError(f"TrainConfig: label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.config not in MODEL_PRESETS:
            raise ValueError(f"unknown config {self.config!r}; expected one of {', '.join(MODEL_PRESETS)}")
        if self.data is not None:
            self.data = os.path.abspath(self.data)
        if self.valid is not None:
            self.valid = os.path.abspath(self.valid)
        self.betas = tuple(self.betas)

    def model_config(self, src_vocab: int, tgt_vocab: int):
        return TransformerConfig(src_vocab=src_vocab, tgt_vocab=tgt_vocab, pad_id=PAD,
                                 **{**MODEL_PRESETS[self.config], **self.model})

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise CheckpointError(f"config.json has unknown training settings {unknown}")
        return cls(**obj)


# ---------------------------------------------------------------------------- data
def load_pairs(cfg: TrainConfig, split: str) -> list[tuple[str, str]]:
    """The (source, target) pairs of a run's 'train' or 'valid' split."""
    if cfg.task is not None:
        return tasks.load_task(cfg.task, split, seed=cfg.seed)
    pairs = tasks.read_tsv(cfg.data)
    if cfg.valid is not None:
        return pairs if split == "train" else tasks.read_tsv(cfg.valid)
    train_pairs, valid_pairs = tasks.split_off_valid(pairs, cfg.seed)
    if not valid_pairs:
        raise tasks.DataError(f"{cfg.data} holds only {len(pairs)} pair(s): too few to hold out a validation "
                              f"set (a tenth of at least 10 pairs); add pairs, or give a validation file "
                              f"with --valid")
    return train_pairs if split == "train" else valid_pairs


def encode_pairs(vocab: PairVocab, pairs) -> list[tuple[list[int], list[int]]]:
    return [(vocab.encode_source(s), vocab.encode_target(t)) for s, t in pairs]
