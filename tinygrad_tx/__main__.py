"""`python -m tinygrad_tx ...` runs the `tinygrad-tx` command (an entry point: it may load the application)."""
import sys

from .app.cli import main

sys.exit(main())
