"""The backend fixture: every test that takes `device` runs on NumPy, and on CuPy where a GPU is present."""
import os
import shutil

import numpy as np
import pytest

import tinygrad_tx as tx

DEVICES = ["cpu", "cuda"]

DOT_HINT = ("Graphviz's dot is not installed: apt-get install graphviz (Debian/Ubuntu), brew install graphviz "
            "(macOS) or conda install graphviz")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason=DOT_HINT)


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not tx.cuda_available():
        pytest.skip("CuPy or a GPU is missing (pip install tinygrad-tx[gpu] on a CUDA machine)")
    if request.param == "cpu" and os.environ.get("TX_DEVICE") == "cuda":
        pytest.skip("TX_DEVICE=cuda: the suite runs on the GPU only")
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def to_host(t):
    """A NumPy array from a Tensor or a backend array."""
    return t.numpy() if isinstance(t, tx.Tensor) else tx.backend.to_numpy(t)
