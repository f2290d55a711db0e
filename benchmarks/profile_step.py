"""Where a training step's time goes: per-primitive timer and cProfile; the code is tinygrad_tx/app/profiler.py.

    python benchmarks/profile_step.py base paper        # same as: tinygrad-tx bench --profile base paper
"""
import sys

from tinygrad_tx.app.bench import main

if __name__ == "__main__":
    main(["--profile", *sys.argv[1:]])
