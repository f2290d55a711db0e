"""`python -m tinygrad_tx ...` runs the `tinygrad-tx` command."""
import sys

from .cli import main

sys.exit(main())
