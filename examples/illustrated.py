"""Regenerate docs/: the illustrated guide and the autodiff lesson, their notebooks and every figure.

    python examples/illustrated.py                                  # the guide's model in runs/guide (trained 3 minutes if absent)
    python examples/illustrated.py --quick --out /tmp/docs          # a tiny model: seconds

The same as `tinygrad-tx guide`. The prose and code live in docs/src/*.py (jupytext percent format);
tinygrad_tx.app.guide.build runs them as notebooks and writes the pages.
"""
import argparse

from tinygrad_tx.app import guide

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--docs", default="docs", help="the folder holding src/ (default docs)")
parser.add_argument("--out", help="write here instead of into --docs")
parser.add_argument("--checkpoint", metavar="RUN_DIR", help="the guide's model: a trained run, or where to train one")
parser.add_argument("--quick", action="store_true", help="a tiny model trained for a few steps")
args = parser.parse_args()
for path in guide.build(args.docs, quick=args.quick, checkpoint=args.checkpoint, out=args.out):
    print(path)
