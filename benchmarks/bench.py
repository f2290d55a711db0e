"""The training/decoding benchmark against torch eager; the code lives in tinygrad_tx/bench.py.

    python benchmarks/bench.py                  # small, base, paper (about 10 minutes on 2 cores)
    python benchmarks/bench.py --smoke          # a quick check, as CI runs it
"""
from tinygrad_tx.app.bench import main

if __name__ == "__main__":
    main()
