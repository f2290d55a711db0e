"""tinygrad_tx: a small, readable reverse-mode autodiff engine on NumPy (CPU) and CuPy (GPU).

This package is the engine. Read its files in dependency order: backend -> tensor -> autograd ->
primitives -> functional -> nn -> optim; random, threads, serialization, kernels, gradcheck, distributed and
viz (drawing) sit beside them. No import runs the other way (tests/test_layering.py).
On top of the engine: `tinygrad_tx.models` (the Transformer, built from the public API), and on top
of the models `tinygrad_tx.app` (tasks, vocabularies, batching, training, checkpoints, translation,
the CLI, the benchmark and the guide builder). `import tinygrad_tx` loads neither.
"""
from . import backend
from . import random
from .tensor import Tensor, where, cat, stack
from .tensor import arange, zeros, ones, full, zeros_like, ones_like, full_like
from .autograd import Function, no_grad, is_grad_enabled, grad
from . import primitives
from . import functional
from . import nn
from . import optim
from . import distributed
from .serialization import save, load
from .gradcheck import gradcheck, gradgradcheck, GradcheckError
from .transforms import vjp, jvp, hvp
from .random import manual_seed
from .threads import set_num_threads, num_threads as get_num_threads
from . import viz

float32 = backend.float32
float64 = backend.float64
int64 = backend.int64
bool_ = backend.bool_


def cuda_available() -> bool:
    """True when CuPy imports and a GPU answers."""
    return backend.cuda_available()


__all__ = ["Tensor", "Function", "no_grad", "is_grad_enabled", "where", "cat", "stack", "manual_seed",
           "arange", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like",
           "grad", "vjp", "jvp", "hvp", "gradcheck", "gradgradcheck", "GradcheckError",
           "functional", "nn", "optim", "save", "load", "primitives", "backend", "random",
           "viz", "cuda_available", "distributed", "set_num_threads", "get_num_threads",
           "float32", "float64", "int64", "bool_"]
__version__ = "0.1.0"
