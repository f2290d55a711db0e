"""Train a small Transformer to translate English number words into French.

    python examples/train_numbers.py         # about 5 minutes on a 2-core CPU

    "ninety-seven"                                -> "quatre-vingt-dix-sept"
    "one thousand, nine hundred and seventy-one"  -> "mille neuf cent soixante et onze"

The same as `tinygrad-tx train --task numbers-en-fr --out runs/numbers --minutes 5`, then
`tinygrad-tx evaluate` and `tinygrad-tx translate`, through the Python API.
"""
from tinygrad_tx.app import tasks
from tinygrad_tx.app.checkpoint import has_checkpoint
from tinygrad_tx.app.config import TrainConfig
from tinygrad_tx.app.train import train
from tinygrad_tx.app.translate import Translator

RUN_DIR = "runs/numbers"

# 1. Train. The run directory keeps the checkpoint: run this script again (or
#    `tinygrad-tx train --out runs/numbers --resume`) to continue exactly where it stopped.
config = TrainConfig(task="numbers-en-fr")
train(config, RUN_DIR, minutes=5, resume=has_checkpoint(RUN_DIR))

# 2. Evaluate on 1000 held-out numbers, greedy and with a beam of 4.
translator = Translator.load(RUN_DIR)
test = tasks.load_task("numbers-en-fr", "test", seed=config.seed)
print("greedy:", translator.evaluate(test))
print("beam 4:", translator.evaluate(test, beam=4))

# 3. Translate numbers of our own.
sentences = ["ninety-seven", "one thousand, nine hundred and seventy-one", "four hundred thousand and eighty"]
for english, french in zip(sentences, translator.translate(sentences)):
    print(f"{english}  ->  {french}")
