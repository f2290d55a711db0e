"""Write docs/illustrated.md: The Illustrated Transformer, with every figure drawn by tinygrad_tx.

    python examples/illustrated.py                                  # train 3 minutes, write docs/
    python examples/illustrated.py --checkpoint runs/guide          # load runs/guide (or train into it)
    python examples/illustrated.py --quick --out /tmp/guide         # a tiny model: seconds

All the work happens in tinygrad_tx.app.guide.build_guide (also `tinygrad-tx guide`).
"""
import argparse

from tinygrad_tx.app.guide import build_guide

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--out", default="docs", help="folder for illustrated.md; figures go to OUT/guide/")
budget = parser.add_mutually_exclusive_group()
budget.add_argument("--steps", type=int, help="train this many steps")
budget.add_argument("--minutes", type=float, help="train this many minutes (default 3)")
parser.add_argument("--checkpoint", metavar="RUN_DIR", help="a trained run to load, or where to train one")
parser.add_argument("--quick", action="store_true", help="a tiny model trained for a few steps")
args = parser.parse_args()
print(build_guide(args.out, steps=args.steps, minutes=args.minutes, checkpoint=args.checkpoint, quick=args.quick))
