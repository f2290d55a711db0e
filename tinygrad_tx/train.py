"""Training a Transformer translator end to end, with checkpoints that resume exactly.

    cfg = TrainConfig(task="numbers-en-fr")          # or TrainConfig(data="pairs.tsv")
    summary = train(cfg, "runs/numbers", minutes=5)  # writes the run directory below
    translator = Translator.load("runs/numbers")
    translator.translate(["ninety-seven"])           # ['quatre-vingt-dix-sept']

A run directory holds, each file written atomically (temporary file + os.replace):
    config.json      the TrainConfig and the TransformerConfig
    vocab.json       the tokenizer level and both vocabularies (data.PairVocab)
    model.npz        the model's state_dict
    optimizer.npz    Adam's moments and step counts (optim.Adam.state_dict)
    trainer.json     step, epoch, position in the epoch's batches, the NoamScheduler state,
                     the engine RNG state (dropout), and training seconds so far
    metrics.jsonl    one JSON object per validation: losses, exact match, BLEU, chrF

This is the application layer: it uses the engine (tinygrad_tx) and the model package (models).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field

import tinygrad_tx as tx
from tinygrad_tx import backend, data, optim
from tinygrad_tx import functional as F
from tinygrad_tx.data import BOS, EOS, PAD, DataError, PairVocab
from tinygrad_tx.serialization import load, save

# The presets share issue 4's benchmark shapes. Every one is post-LN, as in the paper.
MODEL_PRESETS = {
    "small": {"d_model": 128, "n_heads": 4, "d_ff": 512, "n_layers": 2, "dropout": 0.1},
    "base": {"d_model": 256, "n_heads": 8, "d_ff": 1024, "n_layers": 3, "dropout": 0.1},
    "paper": {"d_model": 512, "n_heads": 8, "d_ff": 2048, "n_layers": 6, "dropout": 0.1},
}
CHECKPOINT_FILES = ("config.json", "vocab.json", "model.npz", "optimizer.npz", "trainer.json")


class CheckpointError(ValueError):
    """A run directory that is missing, incomplete, or does not match what was asked for."""


@dataclass
class TrainConfig:
    """Everything that decides what a run learns. Saved as config.json; --resume must match it.

    Data: `task` (a generated task, see data.load_task) or `data` (a TSV file) with an optional
    `valid` TSV (otherwise up to 1000 training pairs are held out).
    """
    task: str | None = data.DEFAULT_TASK
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
        if (self.task is None) == (self.data is None):
            raise ValueError("TrainConfig: give exactly one of task (a generated task) or data (a TSV file)")
        if self.config not in MODEL_PRESETS:
            raise ValueError(f"unknown config {self.config!r}; expected one of {', '.join(MODEL_PRESETS)}")
        if self.data is not None:
            self.data = os.path.abspath(self.data)
        if self.valid is not None:
            self.valid = os.path.abspath(self.valid)
        self.betas = tuple(self.betas)

    def model_config(self, src_vocab: int, tgt_vocab: int):
        from models.transformer import TransformerConfig
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
        return data.load_task(cfg.task, split, seed=cfg.seed)
    pairs = data.read_tsv(cfg.data)
    if cfg.valid is not None:
        return pairs if split == "train" else data.read_tsv(cfg.valid)
    train_pairs, valid_pairs = data.split_off_valid(pairs, cfg.seed)
    return train_pairs if split == "train" else valid_pairs


def encode_pairs(vocab: PairVocab, pairs) -> list[tuple[list[int], list[int]]]:
    return [(vocab.encode_source(s), vocab.encode_target(t)) for s, t in pairs]


# ---------------------------------------------------------------------------- metrics
def score(hypotheses: list[str], references: list[str]) -> dict:
    """exact_match (% of sentences identical to the reference), corpus BLEU and chrF (sacrebleu)."""
    import sacrebleu
    if len(hypotheses) != len(references):
        raise ValueError(f"score: {len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        raise ValueError("score: nothing to score (no references)")
    exact = sum(h == r for h, r in zip(hypotheses, references))
    return {"exact_match": 100.0 * exact / len(references),
            "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score}


# ---------------------------------------------------------------------------- translating
class Translator:
    """A trained model with its vocabulary: text in, text out (greedy or beam search)."""

    def __init__(self, model, vocab: PairVocab, batch_size: int = 64):
        self.model, self.vocab, self.batch_size = model, vocab, batch_size

    @classmethod
    def load(cls, run_dir: str, device: str | None = None) -> Translator:
        _cfg, vocab, model = load_model(run_dir, device)
        return cls(model, vocab)

    def decode_len(self, src_len: int) -> int:
        """The longest output (BOS included) for a source of src_len tokens: generous, within max_len."""
        return min(self.model.config.max_len, 2 * src_len + 16)

    def decode_ids(self, src_ids: list[list[int]], beam: int = 1) -> list[list[int]]:
        """Output token ids per source (BOS..EOS/padding included), batched by similar length."""
        from models.decoding import beam_search, greedy_decode
        lengths = [len(s) for s in src_ids]
        out = [None] * len(src_ids)
        for rows in data.batch_order(lengths, self.batch_size, shuffle=False):
            batch = data.collate([(src_ids[i], [BOS, EOS]) for i in rows], self.model_device)
            max_len = self.decode_len(batch.src.shape[1])
            if beam <= 1:
                ys = greedy_decode(self.model, batch.src, max_len, BOS, EOS)
            else:
                ys = beam_search(self.model, batch.src, beam_size=beam, max_len=max_len, bos_id=BOS, eos_id=EOS)
            for i, row in zip(rows, ys.tolist()):
                out[i] = row
        return out

    @property
    def model_device(self) -> str:
        return next(iter(self.model.parameters())).device

    def translate(self, texts: list[str], beam: int = 1, warn=None) -> list[str]:
        """Translate sentences. Source tokens missing from the vocabulary become <unk>, with a warning
        (`warn(message)`, default warnings.warn)."""
        unknown: list[str] = []
        src_ids = [self.vocab.encode_source(t, unknown) for t in texts]
        if unknown:
            message = (f"{len(unknown)} source token(s) not in the vocabulary, translated as <unk>: "
                       + ", ".join(repr(t) for t in dict.fromkeys(unknown)))
            (warn or (lambda m: warnings.warn(m, stacklevel=2)))(message)
        return [self.vocab.decode_target(ids) for ids in self.decode_ids(src_ids, beam)]

    def evaluate(self, pairs, beam: int = 1, warn=None) -> dict:
        """exact_match, bleu and chrf of translating the sources against the (normalised) targets."""
        hypotheses = self.translate([s for s, _ in pairs], beam, warn)
        references = [self.vocab.tokenizer.normalize(t) for _, t in pairs]
        return score(hypotheses, references)


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
    from models.transformer import Transformer
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


def _config_differences(saved: TrainConfig, asked: TrainConfig) -> list[str]:
    a, b = saved.to_json(), asked.to_json()
    return [f"{key}: checkpoint has {a[key]!r}, asked for {b[key]!r}" for key in a if a[key] != b[key]]


# ---------------------------------------------------------------------------- the trainer
@dataclass
class TrainerState:
    """Where training stands: everything beyond the weights that an exact resume needs."""
    step: int = 0
    epoch: int = 0
    position: int = 0           # batches of this epoch already trained on
    seconds: float = 0.0        # training time so far, over all sessions


class _StopOnInterrupt:
    """The first Ctrl-C asks the loop to stop after the current step (which then checkpoints);
    a second one interrupts at once. The files stay valid either way: each is replaced atomically."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:          # not the main thread: no handler, Ctrl-C behaves as usual
            pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


class Trainer:
    """Owns the model, optimizer, schedule, data order and run directory of one training run."""

    def __init__(self, cfg: TrainConfig, run_dir: str, device: str | None = None, resume: bool = False,
                 log=None, progress: bool = True):
        from models.transformer import Transformer
        self.cfg, self.run_dir, self.progress = cfg, run_dir, progress
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.device = backend.check_device(device)          # clear error for cuda without a GPU
        if resume and not has_checkpoint(run_dir):
            raise CheckpointError(f"--resume: {run_dir} holds no checkpoint to resume from")
        if not resume and has_checkpoint(run_dir):
            raise CheckpointError(f"{run_dir} already holds a checkpoint: pass --resume to continue it, "
                                  f"or choose another --out")
        if resume:
            saved = TrainConfig.from_json(read_json(os.path.join(run_dir, "config.json"))["train"])
            diffs = _config_differences(saved, cfg)
            if diffs:
                raise CheckpointError(f"cannot resume {run_dir}: it was trained with other settings:\n  "
                                      + "\n  ".join(diffs))

        # 1. Data: text pairs, the vocabulary, token ids.
        self.log(f"loading {cfg.task or cfg.data} ...")
        train_pairs, self.valid_pairs = load_pairs(cfg, "train"), load_pairs(cfg, "valid")
        self.vocab = PairVocab.build(train_pairs, cfg.level)
        if resume:
            saved_vocab = PairVocab.load(os.path.join(run_dir, "vocab.json"))
            diff = saved_vocab.describe_difference(self.vocab)
            if diff:
                raise CheckpointError(f"cannot resume {run_dir}: its vocabulary differs from this data's: {diff}")
        for side in ("src", "tgt"):
            types = len(getattr(self.vocab, side))
            if cfg.level == "word" and types > len(train_pairs) / 2:
                self.log(f"note: the {side} side has {types} different words for {len(train_pairs)} pairs, so "
                         f"most words are rare (German, for one, writes a number as one word); --char "
                         f"(character tokens) may learn better")
        self.examples = encode_pairs(self.vocab, train_pairs)
        self.lengths = [max(len(s), len(t)) for s, t in self.examples]

        # 2. Model, optimizer and schedule; the seed fixes the initial weights.
        tx.manual_seed(cfg.seed)
        self.model_config = cfg.model_config(len(self.vocab.src), len(self.vocab.tgt))
        longest = max(self.lengths)
        if longest > self.model_config.max_len:
            raise DataError(f"the longest training sequence has {longest} tokens, more than the model's "
                            f"max_len={self.model_config.max_len}")
        self.model = Transformer(self.model_config).to(device=self.device)
        self.params = list(self.model.parameters())
        self.optimizer = optim.Adam(self.params, lr=0.0, betas=cfg.betas, eps=cfg.eps)
        self.scheduler = optim.NoamScheduler(self.optimizer, self.model_config.d_model, cfg.warmup_steps,
                                             cfg.lr_factor)
        self.state = TrainerState()
        self.metrics: list[dict] = []
        if resume:
            self._load_checkpoint()
        else:
            os.makedirs(run_dir, exist_ok=True)
        self.translator = Translator(self.model, self.vocab)

    # ------------------------------------------------------------------ checkpoints
    def _path(self, name):
        return os.path.join(self.run_dir, name)

    def save_checkpoint(self):
        """Write every file of the run directory; trainer.json (the step) goes last."""
        data.atomic_write_json(self._path("config.json"), {"train": self.cfg.to_json(),
                                                           "model": dataclasses.asdict(self.model_config)})
        self.vocab.save(self._path("vocab.json"))
        save(self.model.state_dict(), self._path("model.npz"))
        save(self.optimizer.state_dict(), self._path("optimizer.npz"))
        data.atomic_write_text(self._path("metrics.jsonl"), "".join(json.dumps(m) + "\n" for m in self.metrics))
        data.atomic_write_json(self._path("trainer.json"), {
            **dataclasses.asdict(self.state),
            "scheduler": self.scheduler.state_dict(),
            "rng": backend.rng_state(),
        })

    def _load_checkpoint(self):
        missing = [n for n in CHECKPOINT_FILES if not os.path.exists(self._path(n))]
        if missing:
            raise CheckpointError(f"{self.run_dir} is not a complete checkpoint: missing {', '.join(missing)}")
        trainer = read_json(self._path("trainer.json"))
        try:
            self.model.load_state_dict(load(self._path("model.npz")))
            self.optimizer.load_state_dict(load(self._path("optimizer.npz")))
            self.scheduler.load_state_dict(trainer["scheduler"])
            self.state = TrainerState(**{f.name: trainer[f.name] for f in dataclasses.fields(TrainerState)})
            backend.set_rng_state(trainer["rng"])
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"cannot resume {self.run_dir}: {e}") from e
        if os.path.exists(self._path("metrics.jsonl")):
            with open(self._path("metrics.jsonl"), encoding="utf-8") as f:
                records = [json.loads(line) for line in f if line.strip()]
            self.metrics = [m for m in records if m["step"] <= self.state.step]
        self.log(f"resumed {self.run_dir} at step {self.state.step}")

    # ------------------------------------------------------------------ one step
    def loss(self, batch: data.Batch, label_smoothing: float):
        """Mean cross-entropy per target token, padding ignored."""
        logits = self.model(batch.src, batch.tgt_in)                         # (B, T, tgt_vocab)
        V = logits.shape[-1]
        return F.cross_entropy(logits.reshape(-1, V), batch.tgt_out.reshape(-1),   # (B*T, V), (B*T,)
                               ignore_index=PAD, label_smoothing=label_smoothing)

    def train_step(self, batch: data.Batch) -> float:
        # 1. Forward and the label-smoothed loss.
        self.model.train()
        loss = self.loss(batch, self.cfg.label_smoothing)
        # 2. Gradients, clipped to a total norm of clip_norm.
        self.optimizer.zero_grad()
        loss.backward()
        optim.clip_grad_norm(self.params, self.cfg.clip_norm)
        # 3. The Noam learning rate for this step, then Adam's update.
        self.scheduler.step()
        self.optimizer.step()
        return loss.item()

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict:
        """Teacher-forced loss and greedy-decoding metrics on the validation pairs."""
        total, tokens = 0.0, 0
        with tx.no_grad():
            self.model.eval()
            examples = encode_pairs(self.vocab, self.valid_pairs)
            lengths = [max(len(s), len(t)) for s, t in examples]
            for rows in data.batch_order(lengths, self.cfg.batch_size, self.cfg.batch_unit, shuffle=False):
                batch = data.collate([examples[i] for i in rows], self.device)
                total += self.loss(batch, 0.0).item() * batch.n_tokens
                tokens += batch.n_tokens
        result = {"valid_loss": total / tokens}
        result.update(self.translator.evaluate(self.valid_pairs, warn=lambda m: None))
        return result

    # ------------------------------------------------------------------ the loop
    def run(self, steps: int | None = None, minutes: float | None = None) -> dict:
        """Train until `steps` in total (counting earlier sessions) or for `minutes` more, validating
        and checkpointing every eval_every steps and at the end. Ctrl-C stops after the current step
        and checkpoints. Returns the last metrics record."""
        if steps is None and minutes is None:
            raise ValueError("run: give steps or minutes")
        cfg, state = self.cfg, self.state
        deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
        bar = self._progress_bar(steps)
        losses, tokens, window_start = [], 0, time.monotonic()
        interrupted = False
        with _StopOnInterrupt() as stop:
            while not self._done(steps, deadline):
                batches = data.batch_order(self.lengths, cfg.batch_size, cfg.batch_unit, cfg.seed, state.epoch)
                while state.position < len(batches) and not self._done(steps, deadline):
                    if stop.requested:
                        break
                    step_start = time.monotonic()
                    batch = data.collate([self.examples[i] for i in batches[state.position]], self.device)
                    loss = self.train_step(batch)
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"the loss became {loss} at step {state.step + 1}; try a "
                                                 f"smaller lr_factor or more warmup_steps")
                    state.step += 1
                    state.position += 1
                    state.seconds += time.monotonic() - step_start
                    losses.append(loss)
                    tokens += batch.n_tokens
                    rate = tokens / max(time.monotonic() - window_start, 1e-9)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:.0f}", lr=f"{self.optimizer.lr:.2e}",
                                        refresh=False)
                    if state.step % cfg.eval_every == 0:
                        self._evaluate_and_save(losses, rate, bar)
                        losses, tokens, window_start = [], 0, time.monotonic()
                if stop.requested:
                    interrupted = True
                    break
                if state.position >= len(batches):
                    state.epoch += 1
                    state.position = 0
            if not self.metrics or self.metrics[-1]["step"] != state.step:
                rate = tokens / max(time.monotonic() - window_start, 1e-9)
                self._evaluate_and_save(losses, rate, bar)
        if bar is not None:
            bar.close()
        if interrupted:
            self.log(f"interrupted: saved the checkpoint of step {state.step} in {self.run_dir}")
        return self.metrics[-1] if self.metrics else {}

    def _done(self, steps, deadline):
        if steps is not None and self.state.step >= steps:
            return True
        return deadline is not None and time.monotonic() >= deadline

    def _evaluate_and_save(self, losses, tokens_per_s, bar):
        record = {"step": self.state.step, "epoch": self.state.epoch, "seconds": round(self.state.seconds, 2),
                  "train_loss": sum(losses) / len(losses) if losses else None, "lr": self.optimizer.lr,
                  "tokens_per_s": round(tokens_per_s, 1)}
        record.update(self.validate())
        self.metrics.append(record)
        self.save_checkpoint()
        message = (f"step {record['step']}: valid loss {record['valid_loss']:.3f}, exact match "
                   f"{record['exact_match']:.1f}%, BLEU {record['bleu']:.1f}, chrF {record['chrf']:.1f}")
        if bar is not None:
            bar.write(message, file=sys.stderr)
        else:
            self.log(message)

    def _progress_bar(self, steps):
        if not self.progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            self.log("install tqdm for a progress bar: pip install 'tinygrad-tx[train]'")
            return None
        return tqdm(total=steps, initial=self.state.step, unit="step", dynamic_ncols=True, file=sys.stderr)


def train(cfg: TrainConfig, run_dir: str, steps: int | None = None, minutes: float | None = None,
          device: str | None = None, resume: bool = False, progress: bool = True, log=None) -> dict:
    """Train (or resume) a run; returns the final validation metrics. See Trainer.run."""
    trainer = Trainer(cfg, run_dir, device=device, resume=resume, progress=progress, log=log)
    return trainer.run(steps=steps, minutes=minutes)
