"""Training a Transformer translator end to end, with checkpoints that resume exactly.

    cfg = TrainConfig(task="numbers-en-fr")          # or TrainConfig(data="pairs.tsv")
    summary = train(cfg, "runs/numbers", minutes=5)  # writes the run directory below
    translator = Translator.load("runs/numbers")
    translator.translate(["ninety-seven"])           # ['quatre-vingt-dix-sept']

The run directory (its layout, and how a checkpoint is saved as one atomic unit that survives
kill -9) is described in checkpoint.py, which holds all saving and loading.

Under `mpirun -np N` (tinygrad_tx.distributed) the N processes train one model on each global batch:
rank r takes rows r, r+N, r+2N, ... of every batch, the gradients are averaged (weighted by each
shard's target tokens) before clipping and the optimizer step, and rank 0 alone validates and writes
the run directory. The batch size, the learning-rate schedule and the result are those of one process.

This is the application layer: it uses the engine (tinygrad_tx) and the model package (models).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import signal
import sys
import time
from dataclasses import dataclass

from tinygrad_tx.models.transformer import Transformer

import tinygrad_tx as tx
from tinygrad_tx import backend, optim, random
from tinygrad_tx import distributed as dist
from tinygrad_tx import functional as F

from . import batching, checkpoint
from .config import CheckpointError, TrainConfig, encode_pairs, load_pairs
from .tasks import DataError
from .translate import Translator, format_score
from .vocab import PAD, PairVocab

# Greedy decoding runs the decoder once per output token, up to max_len for a model that has not yet
# learned to stop, so each evaluation during training decodes only this many validation pairs (the
# first ones: the held-out split is already in random order). The loss and token accuracy, one
# teacher-forced pass, cover all of them; `tinygrad-tx evaluate` decodes a whole test set.
DECODE_PAIRS = 200


# ---------------------------------------------------------------------------- the trainer
class TrainingDiverged(RuntimeError):
    """The loss or the weights stopped being finite numbers; nothing of that step was saved."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after the checkpoint of the last finished step was saved."""


@dataclass
class TrainerState:
    """Where training stands: everything beyond the weights that an exact resume needs."""
    step: int = 0
    epoch: int = 0
    position: int = 0           # batches of this epoch already trained on
    seconds: float = 0.0        # training time so far, over all sessions


class _StopOnInterrupt:
    """The first Ctrl-C asks the loop to stop after the current step (which then checkpoints);
    a second one interrupts at once. The run directory stays valid either way: a checkpoint is
    committed atomically (checkpoint.py).

    SIGUSR1 asks for the same stop. It is for mpirun, which ends every rank at once on Ctrl-C but
    forwards SIGUSR1 to all of them: `kill -USR1 <mpirun's pid>` stops the job after the current step,
    with a checkpoint."""

    SIGNALS = ("SIGINT", "SIGUSR1")             # SIGUSR1 does not exist on Windows

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = {}
        for name in self.SIGNALS:
            number = getattr(signal, name, None)
            if number is None:
                continue
            try:
                self.previous[number] = signal.signal(number, self._handle)
            except ValueError:      # not the main thread: no handler, Ctrl-C behaves as usual
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for number, previous in self.previous.items():
            signal.signal(number, previous)
        return False


class Trainer:
    """Owns the model, optimizer, schedule, data order and run directory of one training run."""

    def __init__(self, cfg: TrainConfig, run_dir: str, device: str | None = None, resume: bool = False,
                 log=None, progress: bool = True, force: bool = False, decode_pairs: int | None = DECODE_PAIRS):
        """Everything is checked here, before the first step: the run directory, the data (every
        sentence, validation included, must fit the model's max_len) and that the run directory can
        be written. `force` writes into a non-empty directory that is not a run. `decode_pairs`:
        how many validation pairs each evaluation decodes (None: all of them)."""
        if decode_pairs is not None and (isinstance(decode_pairs, bool) or not isinstance(decode_pairs, int)
                                         or decode_pairs < 1):
            raise ValueError(f"Trainer: decode_pairs must be a whole number >= 1 or None, got {decode_pairs!r}")
        self.cfg, self.run_dir, self.decode_pairs = cfg, run_dir, decode_pairs
        # With several processes (mpirun), rank 0 alone logs, validates and writes the run directory.
        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.progress = progress and self.rank == 0
        self.log = log or (lambda message: print(message, file=sys.stderr))
        if self.rank != 0:
            self.log = lambda message: None
        self.device = backend.check_device(device)          # clear error for cuda without a GPU
        self.checkpoint_hook = None                          # called at each point of a save (for tests)
        self._saved = None                                   # rank 0: the checkpoint to resume, verified
        dist.from_root(lambda: self._check_run_dir(resume, force))

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
        self.valid_examples = encode_pairs(self.vocab, self.valid_pairs)

        # 2. Model, optimizer and schedule; the seed fixes the initial weights.
        tx.manual_seed(cfg.seed)
        self.model_config = cfg.model_config(len(self.vocab.src), len(self.vocab.tgt))
        self._check_lengths(train_pairs, self.examples, "training")
        self._check_lengths(self.valid_pairs, self.valid_examples, "validation")
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
        self.saved_step: int | None = None                   # the step of the last checkpoint saved
        self._rng_per_rank = None          # every rank's generator state, gathered before each save

        # 3. The run directory: a resumed run takes its checkpoint; a fresh one writes config.json and
        #    vocab.json now, so an --out that cannot be written fails before any training.
        if resume:
            dist.from_root(self._restore)
            self._share_checkpoint()
        else:
            dist.from_root(lambda: checkpoint.start_run(run_dir, cfg, self.model_config, self.vocab))
        self.translator = Translator(self.model, self.vocab)

    # ------------------------------------------------------------------ checkpoints
    def _check_run_dir(self, resume, force):
        """Rank 0: refuse a run directory that does not fit (reading and verifying the checkpoint to
        resume), then remove what a killed save left behind."""
        cfg, run_dir = self.cfg, self.run_dir
        if resume:
            if not checkpoint.has_checkpoint(run_dir):
                raise CheckpointError(f"--resume: {run_dir} holds no checkpoint to resume from")
            self._saved = checkpoint.load_checkpoint(run_dir)      # every file verified
            diffs = checkpoint.config_differences(self._saved.cfg, cfg)
            if diffs:
                raise CheckpointError(f"cannot resume {run_dir}: it was trained with other settings:\n  "
                                      + "\n  ".join(diffs))
        else:
            checkpoint.check_out_dir(run_dir, force)
            if checkpoint.has_checkpoint(run_dir):
                raise CheckpointError(f"{run_dir} already holds a checkpoint: pass --resume to continue it, "
                                      f"or choose another --out")
        checkpoint.clean_stale(run_dir)

    def _check_vocab(self):
        diff = self._saved.vocab.describe_difference(self.vocab)
        if diff:
            raise CheckpointError(f"cannot resume {self.run_dir}: its vocabulary differs from this data's: {diff}")

    def _check_lengths(self, pairs, examples, which):
        """Every pair's token ids (`examples`, encoded from `pairs`) fit the model's max_len."""
        max_len = self.model_config.max_len
        for i, (source, target) in enumerate(pairs):
            n = max(len(examples[i][0]), len(examples[i][1]))
            if n > max_len:
                raise DataError(f"{which} pair {i + 1} ({source[:60]!r} -> {target[:60]!r}) has {n} tokens, more "
                                f"than the model's max_len={max_len}; shorten or drop it, or raise max_len")

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self):
        """Save the model, optimizer and trainer state as one atomic checkpoint (checkpoint.py)."""
        self._check_finite()
        trainer = {**dataclasses.asdict(self.state), "scheduler": self.scheduler.state_dict(),
                   "rng": random.rng_state(),
                   **({"rng_per_rank": self._rng_per_rank} if self.world_size > 1 else {})}
        checkpoint.save_checkpoint(self.run_dir, self.state.step, self.model.state_dict(),
                                   self.optimizer.state_dict(), trainer, self.metrics, hook=self.checkpoint_hook)
        self.saved_step = self.state.step

    def _restore(self):
        """Rank 0: take the verified checkpoint read by _check_run_dir."""
        saved, self._saved = self._saved, None
        trainer = saved.trainer
        try:
            self.model.load_state_dict(saved.model)
            self.optimizer.load_state_dict(saved.optimizer)
            self.scheduler.load_state_dict(trainer["scheduler"])
            self.state = TrainerState(**{f.name: trainer[f.name] for f in dataclasses.fields(TrainerState)})
            random.set_rng_state(trainer["rng"])
            self._rng_per_rank = trainer.get("rng_per_rank")
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"cannot resume {self.run_dir}: {e}") from e
        self.metrics = saved.metrics
        self.saved_step = saved.step
        self.log(f"resumed {self.run_dir} at step {self.state.step}")

    def _check_finite(self):
        """Refuse to save weights that hold NaN or infinity (a diverged model)."""
        for name, p in self.model.named_parameters():
            if not math.isfinite(float(abs(p.data).max())):
                raise self._diverged(f"parameter {name} holds NaN or infinite values")

    def _diverged(self, what) -> TrainingDiverged:
        last = self.saved_step
        kept = (f"the last good checkpoint (step {last}) is kept in {self.run_dir}" if last is not None
                else f"no checkpoint was saved in {self.run_dir}")
        return TrainingDiverged(f"training diverged at step {self.state.step}: {what}. Nothing of this step was "
                                f"saved; {kept}. Try a lower learning rate (--lr-factor, {self.cfg.lr_factor} now) "
                                f"or more warm-up (--warmup-steps, {self.cfg.warmup_steps} now)")

    def _share_checkpoint(self):
        """Hand what rank 0 read from the checkpoint to the other ranks (they may not see its files)."""
        if self.world_size == 1:
            return
        dist.broadcast_parameters(self.params)
        shared = dist.broadcast_object({
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "state": dataclasses.asdict(self.state), "metrics": self.metrics, "rng_per_rank": self._rng_per_rank,
            "saved_step": self.saved_step})
        if self.rank != 0:
            self.optimizer.load_state_dict(shared["optimizer"])
            self.scheduler.load_state_dict(shared["scheduler"])
            self.state = TrainerState(**shared["state"])
            self.metrics = shared["metrics"]
            self.saved_step = shared["saved_step"]
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
        """The validation metrics of one evaluation.

        valid_loss and valid_accuracy (% of target tokens whose most likely prediction is right) come
        from one teacher-forced pass over every validation pair, as in PyTorch's and fairseq's
        validation loops. exact_match, bleu and chrf come from greedy decoding, which is much dearer
        (one decoder run per output token), of the first `decode_pairs` pairs; `decoded` says how many.
        """
        total, hits, tokens = 0.0, 0, 0
        examples = self.valid_examples
        with tx.no_grad():
            self.model.eval()
            lengths = [max(len(s), len(t)) for s, t in examples]
            for rows in batching.batch_order(lengths, self.cfg.batch_size, self.cfg.batch_unit, shuffle=False):
                batch = batching.collate([examples[i] for i in rows], self.device)
                logits = self.model(batch.src, batch.tgt_in)                     # (B, T, tgt_vocab)
                V = logits.shape[-1]
                loss = F.cross_entropy(logits.reshape(-1, V), batch.tgt_out.reshape(-1),   # (B*T, V), (B*T,)
                                       ignore_index=PAD)
                total += loss.item() * batch.n_tokens
                right = (logits.argmax(axis=-1) == batch.tgt_out) & (batch.tgt_out != PAD)   # (B, T)
                hits += int(right.sum().item())
                tokens += batch.n_tokens
        decoded = self.valid_pairs[:self.decode_pairs]
        result = {"valid_loss": total / tokens, "valid_accuracy": 100.0 * hits / tokens,
                  "valid_pairs": len(self.valid_pairs), "decoded": len(decoded)}
        result.update(self.translator.evaluate(decoded, warn=lambda m: None))
        return result

    # ------------------------------------------------------------------ the loop
    def run(self, steps: int | None = None, minutes: float | None = None) -> dict:
        """Train until `steps` in total (counting earlier sessions) or for `minutes` more, validating
        and checkpointing every eval_every steps and at the end. Ctrl-C stops after the current step
        and checkpoints. Returns the last metrics record."""
        if steps is None and minutes is None:
            raise ValueError("run: give steps or minutes")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise ValueError(f"run: steps must be a whole number >= 0, got {steps!r}")
        if minutes is not None and not minutes > 0:
            raise ValueError(f"run: minutes must be > 0, got {minutes!r}")
        deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
        bar = self._progress_bar(steps)
        try:
            interrupted = self._train_until(steps, deadline, bar)
        finally:
            if bar is not None:
                bar.close()          # before any error message, so that the two do not mix
        if interrupted:
            raise TrainingInterrupted(f"interrupted: saved the checkpoint of step {self.state.step} in {self.run_dir}")
        return self.metrics[-1] if self.metrics else {}

    def _train_until(self, steps, deadline, bar) -> bool:
        """The loop of run(); True when Ctrl-C stopped it."""
        cfg, state = self.cfg, self.state
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
                    state.step += 1
                    if batch is not None and not math.isfinite(loss):
                        raise self._diverged(f"the training loss became {loss}")
                    n_tokens = sum(len(self.examples[i][1]) - 1 for i in rows)
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
        return interrupted

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
        if not math.isfinite(record["valid_loss"]):
            raise self._diverged(f"the validation loss became {record['valid_loss']}")
        self._check_finite()
        self.metrics.append(record)
        try:
            self.save_checkpoint()
        except BaseException:
            self.metrics.pop()
            raise
        message = (f"step {record['step']}: valid loss {record['valid_loss']:.3f}, token accuracy "
                   f"{record['valid_accuracy']:.1f}%; {decoded_note(record, record['valid_pairs'])}: exact match "
                   f"{record['exact_match']:.1f}%, BLEU {format_score(record['bleu'])}, "
                   f"chrF {format_score(record['chrf'])}")
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


def decoded_note(record: dict, valid_size: int) -> str:
    """How many validation pairs a metrics record's exact match, BLEU and chrF were decoded from
    (records written before they were bounded hold no count: all of them)."""
    decoded = record.get("decoded", valid_size)
    return f"greedy decoding of {'all' if decoded >= valid_size else decoded} of {valid_size} validation pairs"


def _rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed for rank r's dropout generator, different from every other rank's and run's."""
    digest = hashlib.sha256(f"dropout:{seed}:{rank}:{step}".encode()).hexdigest()
    return int(digest[:15], 16)


def train(cfg: TrainConfig, run_dir: str, steps: int | None = None, minutes: float | None = None,
          device: str | None = None, resume: bool = False, progress: bool = True, log=None,
          force: bool = False, decode_pairs: int | None = DECODE_PAIRS) -> dict:
    """Train (or resume) a run; returns the final validation metrics. See Trainer.run and
    Trainer.validate (`decode_pairs`: validation pairs decoded at each evaluation, None: all).

    Raises TrainingDiverged (nothing of the bad step saved) and TrainingInterrupted (after Ctrl-C,
    once the last finished step is saved)."""
    trainer = Trainer(cfg, run_dir, device=device, resume=resume, progress=progress, log=log, force=force,
                      decode_pairs=decode_pairs)
    return trainer.run(steps=steps, minutes=minutes)
