"""Train a small Transformer to copy random digit sequences (The Annotated Transformer's first test).

    python examples/train_copy.py            # about 3 minutes on a 2-core CPU

The same as `tinygrad-tx train --task copy --out runs/copy --minutes 3 --batch-size 32`, through the
Python API: a TrainConfig names the task, train() writes the run directory, and a Translator
loads it back.
"""
from tinygrad_tx.app import tasks
from tinygrad_tx.app.checkpoint import has_checkpoint
from tinygrad_tx.app.config import TrainConfig
from tinygrad_tx.app.train import train
from tinygrad_tx.app.translate import Translator

RUN_DIR = "runs/copy"

# 1. Train: a generated task, the small model, 32 sentences per batch, for three minutes
#    (99% of held-out sequences after two, 100% after three; see docs/results.md).
config = TrainConfig(task="copy", batch_size=32)
# Run the script again to train 3 more minutes: it resumes the checkpoint exactly.
metrics = train(config, RUN_DIR, minutes=3, resume=has_checkpoint(RUN_DIR))
print(f"validation: token accuracy {metrics['valid_accuracy']:.1f}% (teacher-forced, all pairs); exact match "
      f"{metrics['exact_match']:.1f}%, BLEU {metrics['bleu']:.1f} (greedy, the first {metrics['decoded']} pairs)")

# 2. Evaluate on 1000 held-out sequences (never seen in training).
translator = Translator.load(RUN_DIR)
test = tasks.load_task("copy", "test", seed=config.seed)
print("test:", translator.evaluate(test))

# 3. Translate (copy) a sequence of our own.
print("3 1 4 1 5 9 2 6 ->", translator.translate(["3 1 4 1 5 9 2 6"])[0])
