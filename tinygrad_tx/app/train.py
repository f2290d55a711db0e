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

Under `mpirun -np N` (tinygrad_tx.distributed) the N processes train one model on each global batch:
rank r takes rows r, r+N, r+2N, ... of every batch, the gradients are averaged (weighted by each
shard's target tokens) before clipping and the optimizer step, and rank 0 alone validates and writes
the run directory. The batch size, the learning-rate schedule and the result are those of one process.

This is the application layer: it uses the engine (tinygrad_tx) and the model package (models).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import tinygrad_tx as tx
from tinygrad_tx import backend, optim, random
from tinygrad_tx import distributed as dist
from tinygrad_tx import functional as F
from tinygrad_tx.models.transformer import Transformer
from tinygrad_tx.serialization import atomic_write_json, atomic_write_text, load, save

from . import batching
from .checkpoint import CHECKPOINT_FILES, config_differences, has_checkpoint, read_json
from .config import CheckpointError, TrainConfig, encode_pairs, load_pairs
from .tasks import DataError
from .translate import Translator
from .vocab import PAD, PairVocab


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
        self.cfg, self.run_dir = cfg, run_dir
        # With several processes (mpirun), rank 0 alone logs, validates and writes the run directory.
        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.progress = progress and self.rank == 0
        self.log = log or (lambda message: print(message, file=sys.stderr))
        if self.rank != 0:
            self.log = lambda message: None
        self.device = backend.check_device(device)          # clear error for cuda without a GPU
        dist.from_root(lambda: self._check_run_dir(resume))

        # 1. Data: text pairs, the vocabulary, token ids.
        self.log(f"loading {cfg.task or cfg.data} ...")
        train_pairs, self.valid_pairs = load_pairs(cfg, "train"), load_pairs(cfg, "valid")
        self.vocab = PairVocab.build(train_pairs, cfg.level)
        if resume:
            dist.from_root(self._check_vocab)
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
        dist.broadcast_parameters(self.params)              # every rank starts from rank 0's weights
        if self.rank != 0:                                  # and draws its own dropout masks
            tx.manual_seed(_rank_seed(cfg.seed, self.rank))
        self.optimizer = optim.Adam(self.params, lr=0.0, betas=cfg.betas, eps=cfg.eps)
        self.scheduler = optim.NoamScheduler(self.optimizer, self.model_config.d_model, cfg.warmup_steps,
                                             cfg.lr_factor)
        self.state = TrainerState()
        self.metrics: list[dict] = []
        self._rng_per_rank = None          # every rank's generator state, gathered before each save
        if resume:
            dist.from_root(self._load_checkpoint)
            self._share_checkpoint()
        elif self.rank == 0:
            os.makedirs(run_dir, exist_ok=True)
        self.translator = Translator(self.model, self.vocab)

    # ------------------------------------------------------------------ checkpoints
    def _check_run_dir(self, resume):
        cfg, run_dir = self.cfg, self.run_dir
        if resume and not has_checkpoint(run_dir):
            raise CheckpointError(f"--resume: {run_dir} holds no checkpoint to resume from")
        if not resume and has_checkpoint(run_dir):
            raise CheckpointError(f"{run_dir} already holds a checkpoint: pass --resume to continue it, "
                                  f"or choose another --out")
        if resume:
            saved = TrainConfig.from_json(read_json(os.path.join(run_dir, "config.json"))["train"])
            diffs = config_differences(saved, cfg)
            if diffs:
                raise CheckpointError(f"cannot resume {run_dir}: it was trained with other settings:\n  "
                                      + "\n  ".join(diffs))

    def _check_vocab(self):
        saved_vocab = PairVocab.load(os.path.join(self.run_dir, "vocab.json"))
        diff = saved_vocab.describe_difference(self.vocab)
        if diff:
            raise CheckpointError(f"cannot resume {self.run_dir}: its vocabulary differs from this data's: {diff}")

    def _path(self, name):
        return os.path.join(self.run_dir, name)

    def save_checkpoint(self):
        """Write every file of the run directory; trainer.json (the step) goes last."""
        atomic_write_json(self._path("config.json"), {"train": self.cfg.to_json(),
                                                           "model": dataclasses.asdict(self.model_config)})
        self.vocab.save(self._path("vocab.json"))
        save(self.model.state_dict(), self._path("model.npz"))
        save(self.optimizer.state_dict(), self._path("optimizer.npz"))
        atomic_write_text(self._path("metrics.jsonl"), "".join(json.dumps(m) + "\n" for m in self.metrics))
        atomic_write_json(self._path("trainer.json"), {
            **dataclasses.asdict(self.state),
            "scheduler": self.scheduler.state_dict(),
            "rng": random.rng_state(),
            **({"rng_per_rank": self._rng_per_rank} if self.world_size > 1 else {}),
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
            random.set_rng_state(trainer["rng"])
            self._rng_per_rank = trainer.get("rng_per_rank")
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"cannot resume {self.run_dir}: {e}") from e
        if os.path.exists(self._path("metrics.jsonl")):
            with open(self._path("metrics.jsonl"), encoding="utf-8") as f:
                records = [json.loads(line) for line in f if line.strip()]
            self.metrics = [m for m in records if m["step"] <= self.state.step]
        self.log(f"resumed {self.run_dir} at step {self.state.step}")

    def _share_checkpoint(self):
        """Hand what rank 0 read from the checkpoint to the other ranks (they may not see its files)."""
        if self.world_size == 1:
            return
        dist.broadcast_parameters(self.params)
        shared = dist.broadcast_object({
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "state": dataclasses.asdict(self.state), "metrics": self.metrics, "rng_per_rank": self._rng_per_rank})
        if self.rank != 0:
            self.optimizer.load_state_dict(shared["optimizer"])
            self.scheduler.load_state_dict(shared["scheduler"])
            self.state = TrainerState(**shared["state"])
            self.metrics = shared["metrics"]
        # Each rank continues its own dropout generator; saved by as many ranks as run now, or reseeded.
        per_rank = shared["rng_per_rank"]
        if per_rank is not None and len(per_rank) == self.world_size:
            random.set_rng_state(per_rank[self.rank])
        elif self.rank != 0:
            tx.manual_seed(_rank_seed(self.cfg.seed, self.rank, self.state.step))
            if self.rank == 1 and self.model_config.dropout > 0:
                print(f"note: {self.run_dir} was saved by another number of processes, so the dropout masks "
                      f"of ranks 1..{self.world_size - 1} differ from an uninterrupted run", file=sys.stderr)

    # ------------------------------------------------------------------ one step
    def loss(self, batch: batching.Batch, label_smoothing: float):
        """Mean cross-entropy per target token, padding ignored."""
        logits = self.model(batch.src, batch.tgt_in)                         # (B, T, tgt_vocab)
        V = logits.shape[-1]
        return F.cross_entropy(logits.reshape(-1, V), batch.tgt_out.reshape(-1),   # (B*T, V), (B*T,)
                               ignore_index=PAD, label_smoothing=label_smoothing)

    def train_step(self, batch: batching.Batch | None) -> float:
        """One optimizer step on `batch`: the whole global batch, or this rank's shard of it (None when
        the shard is empty). Returns the loss of the shard (nan for an empty one)."""
        # 1. Forward and the label-smoothed loss.
        self.model.train()
        self.optimizer.zero_grad()
        loss = float("nan")
        if batch is not None:
            loss_tensor = self.loss(batch, self.cfg.label_smoothing)
            # 2. Gradients of the mean loss over this shard's target tokens.
            loss_tensor.backward()
            loss = loss_tensor.item()
        # 3. With several ranks, one allreduce makes each gradient the mean over the global batch's
        #    tokens: sum_r n_r * grad_r / sum_r n_r, where rank r's shard has n_r target tokens.
        if self.world_size > 1:
            dist.average_gradients(self.params, weight=0 if batch is None else batch.n_tokens)
        # 4. Clipped to a total norm of clip_norm, then the Noam learning rate and Adam's update.
        optim.clip_grad_norm(self.params, self.cfg.clip_norm)
        self.scheduler.step()
        self.optimizer.step()
        return loss

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict:
        """Teacher-forced loss and greedy-decoding metrics on the validation pairs."""
        total, tokens = 0.0, 0
        with tx.no_grad():
            self.model.eval()
            examples = encode_pairs(self.vocab, self.valid_pairs)
            lengths = [max(len(s), len(t)) for s, t in examples]
            for rows in batching.batch_order(lengths, self.cfg.batch_size, self.cfg.batch_unit, shuffle=False):
                batch = batching.collate([examples[i] for i in rows], self.device)
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
        interrupted = finished = False
        with _StopOnInterrupt() as stop:
            while not finished:
                batches = batching.batch_order(self.lengths, cfg.batch_size, cfg.batch_unit, cfg.seed, state.epoch)
                while state.position < len(batches):
                    decision = self._stop_decision(steps, deadline, stop)
                    if decision is not None:
                        finished, interrupted = True, decision == "interrupted"
                        break
                    step_start = time.monotonic()
                    rows = batches[state.position]               # the global batch
                    shard = rows[self.rank::self.world_size]     # this rank's rows of it
                    batch = batching.collate([self.examples[i] for i in shard], self.device) if shard else None
                    loss = self.train_step(batch)
                    if batch is not None and not math.isfinite(loss):
                        raise FloatingPointError(f"the loss became {loss} at step {state.step + 1}; try a "
                                                 f"smaller lr_factor or more warmup_steps")
                    n_tokens = sum(len(self.examples[i][1]) - 1 for i in rows)
                    state.step += 1
                    state.position += 1
                    state.seconds += time.monotonic() - step_start
                    if self.world_size == 1:
                        losses.append(loss)
                    else:                                        # this shard's part of the batch's mean loss
                        losses.append(loss * batch.n_tokens / n_tokens if batch is not None else 0.0)
                    tokens += n_tokens
                    rate = tokens / max(time.monotonic() - window_start, 1e-9)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:.0f}", lr=f"{self.optimizer.lr:.2e}",
                                        refresh=False)
                    if state.step % cfg.eval_every == 0:
                        self._evaluate_and_save(losses, rate, bar)
                        losses, tokens, window_start = [], 0, time.monotonic()
                if not finished and state.position >= len(batches):
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

    def _stop_decision(self, steps, deadline, stop):
        """None to take another step, "done" or "interrupted" to stop. Rank 0 decides for all ranks, so
        that a clock or a Ctrl-C seen by one process cannot leave the others waiting in an allreduce."""
        decision = None
        if stop.requested:
            decision = "interrupted"
        elif (steps is not None and self.state.step >= steps) or (deadline is not None
                                                                 and time.monotonic() >= deadline):
            decision = "done"
        return dist.broadcast_object(decision) if self.world_size > 1 else decision

    def _evaluate_and_save(self, losses, tokens_per_s, bar):
        if self.world_size > 1:                 # every rank's part of each step's loss: sum them
            losses = dist.all_reduce(backend.host_array(losses).astype(backend.float64), op="sum").tolist()
            self._rng_per_rank = dist.gather_object(random.rng_state())
        record = dist.from_root(lambda: self._validate_and_save(losses, tokens_per_s, bar))
        if self.rank != 0:                      # the other ranks keep the same metrics list
            self.metrics.append(record)

    def _validate_and_save(self, losses, tokens_per_s, bar) -> dict:
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
        return record

    def _progress_bar(self, steps):
        if not self.progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            self.log("install tqdm for a progress bar: pip install 'tinygrad-tx[train]'")
            return None
        return tqdm(total=steps, initial=self.state.step, unit="step", dynamic_ncols=True, file=sys.stderr)


def _rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed for rank r's dropout generator, different from every other rank's and run's."""
    digest = hashlib.sha256(f"dropout:{seed}:{rank}:{step}".encode()).hexdigest()
    return int(digest[:15], 16)


def train(cfg: TrainConfig, run_dir: str, steps: int | None = None, minutes: float | None = None,
          device: str | None = None, resume: bool = False, progress: bool = True, log=None) -> dict:
    """Train (or resume) a run; returns the final validation metrics. See Trainer.run."""
    trainer = Trainer(cfg, run_dir, device=device, resume=resume, progress=progress, log=log)
    return trainer.run(steps=steps, minutes=minutes)
