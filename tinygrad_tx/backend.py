"""The array backends: NumPy on the CPU, CuPy on the GPU. Devices, array modules and their dtypes only.

This is the only module that names `numpy` or `cupy`. Every op asks for `xp`, the array module of
the tensor it works on (Chainer's `get_array_module`), so one piece of code runs on both devices.
Random generators live in random.py, the embedding's scatter-add beside Embedding in primitives.py,
and .npz files in serialization.py.
"""
from __future__ import annotations

import math
import os
import sys

# OpenBLAS, NumPy's BLAS, keeps its worker threads spinning for about 0.1 s after each matrix product
# (2^28 cycles) so that the next one starts sooner. Between two products a training step runs its
# elementwise work, and on a machine with few cores the spinning thread holds the core that this
# work's own threads (threads.py) need: on the 2-core machine a `base` step with two threads was 10%
# slower than with one, and 10% faster once OpenBLAS spins for 2^4 cycles only. OpenBLAS reads the
# setting when NumPy loads it, so it works when tinygrad_tx is imported before NumPy (the CLI is);
# a value the user set wins. threads.py uses one thread when the setting could not take effect.
BLAS_SPINS_SHORT = "numpy" not in sys.modules or "OPENBLAS_THREAD_TIMEOUT" in os.environ
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy  # after the setting above

DEVICES = ("cpu", "cuda")
CUDA_HINT = ("device 'cuda' needs CuPy and an NVIDIA GPU: install CuPy with `pip install tinygrad-tx[gpu]` "
             "(cupy-cuda12x, for CUDA 12) or `pip install tinygrad-tx[gpu-cuda13]` (cupy-cuda13x, for CUDA 13)")

_cupy = None          # the cupy module once imported, False when it failed
_cupy_error = None


def _load_cupy():
    """Import CuPy on first use and check that a GPU answers."""
    global _cupy, _cupy_error
    if _cupy is None:
        try:
            import cupy
            cupy.cuda.runtime.getDeviceCount()
            _cupy = cupy
        except Exception as e:  # ImportError, or CUDARuntimeError without a driver or GPU
            _cupy, _cupy_error = False, e
    if _cupy is False:
        raise RuntimeError(f"{CUDA_HINT} ({type(_cupy_error).__name__}: {_cupy_error})")
    return _cupy


def cuda_available() -> bool:
    try:
        _load_cupy()
        return True
    except RuntimeError:
        return False


def check_device(device: str | None) -> str:
    """Normalise a device name: None means the default ($TX_DEVICE, else 'cpu')."""
    if device is None:
        device = os.environ.get("TX_DEVICE", "cpu")
    device = str(device)
    if device.startswith("cuda:"):      # torch-style 'cuda:0': one GPU only, the current one
        device = "cuda"
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")
    if device == "cuda":
        _load_cupy()
    return device


def default_device() -> str:
    return check_device(None)


def device_for(data, device: str | None = None) -> str:
    """Where a new tensor made from `data` goes: the device asked for; else, for a GPU array, its
    own device; else (host arrays, Python numbers and lists) the default: $TX_DEVICE, else 'cpu'.
    As torch.tensor(ndarray) follows torch.set_default_device."""
    if device is None and _is_cupy_array(data):
        return "cuda"
    return check_device(device)


def get_xp(device: str):
    """The array module for a device name."""
    return numpy if device == "cpu" else _load_cupy()


def _is_cupy_array(a) -> bool:
    """True for a cupy.ndarray, also before this module has imported CuPy itself (a user may have
    made the array with their own `import cupy`): the type's module tells."""
    if _cupy and isinstance(a, _cupy.ndarray):
        return True
    return any(c.__name__ == "ndarray" and c.__module__.split(".")[0] == "cupy" for c in type(a).__mro__)


def array_module(a):
    """The array module an array lives in: cupy for CuPy arrays, numpy for anything else."""
    if isinstance(a, (numpy.ndarray, numpy.generic)) or not _is_cupy_array(a):
        return numpy
    return _load_cupy()


def device_of(a) -> str:
    return "cpu" if array_module(a) is numpy else "cuda"


def is_array(a) -> bool:
    return isinstance(a, numpy.ndarray) or _is_cupy_array(a)


def to_device(a, device: str):
    """Move an array to `device` (no copy when it is already there)."""
    if device_of(a) == device:
        return a
    if device == "cpu":
        return a.get()
    return _load_cupy().asarray(a)


def full_scalar(xp, value, dtype):
    """A 0-d array holding `value` on xp's device. On the GPU `fill` writes it with a kernel that takes
    the value as an argument. `cupy.asarray(value)` would copy it from the host, and that copy waits
    for every kernel queued before it (a stall per scalar in each training step); `cupy.full` goes
    through `cupy.copyto`, whose cast check (numpy.can_cast) took 0.5 ms a call under cProfile on the
    H100, 40 calls in a `paper` step."""
    a = xp.empty((), dtype=dtype)
    a.fill(value)
    return a


def to_numpy(a):
    """A host (NumPy) view or copy of an array. Reading a GPU array first raises any failed check
    that was deferred to this point (see `check`)."""
    if isinstance(a, numpy.ndarray):
        return a
    if _deferred:
        raise_deferred()
    return numpy.asarray(a.get() if hasattr(a, "get") else a)


# ---------------------------------------------------------------------------- checks that wait for a read
_deferred: list = []          # (0-d device bool array, op name, error factory), oldest first
_MAX_DEFERRED = 256           # checks kept before one is forced (a loop that never reads a value)


def check(bad, op: str, error) -> None:
    """Raise error() when any element of the bool array `bad` is True (bad input to op `op`).

    On NumPy the answer is known at once. On the GPU, reading it would make Python wait for every
    queued kernel: a host synchronisation in the middle of a training step. So the flag stays on the
    device and is read at the next read of a GPU array (`loss.item()`, `.numpy()`, ...), which waits
    for the GPU anyway; the error is raised there, naming the op.
    """
    if array_module(bad) is numpy:
        if bad.any():
            raise error()
        return
    _deferred.append((bad.any(), op, error))
    if len(_deferred) > _MAX_DEFERRED:
        raise_deferred()


def raise_deferred() -> None:
    """Read the pending checks of `check` (one transfer) and raise the first that failed."""
    if not _deferred:
        return
    pending = list(_deferred)
    _deferred.clear()
    failed = numpy.asarray(_load_cupy().stack([flag for flag, _, _ in pending]).get())
    for hit, (_, op, error) in zip(failed, pending):
        if hit:
            e = error()
            raise type(e)(f"{op}: {e} (checked on the GPU; raised at the next read of a value)")


def quiet_nan():
    """A `with` block in which NumPy does not warn when it makes nan or inf on purpose, as the mean
    over no rows does (0 / 0 = nan, as torch gives, silently). CuPy never warns."""
    return numpy.errstate(invalid="ignore", divide="ignore")


def host_array(data):
    """A NumPy array from Python data (scalars, nested lists)."""
    return numpy.asarray(data)


def format_array(a, prefix=""):
    return numpy.array2string(to_numpy(a), precision=4, separator=", ", prefix=prefix)


def as_array(a):
    """NumPy reductions return scalars such as numpy.float32: turn them back into 0-d arrays."""
    return numpy.asarray(a) if isinstance(a, numpy.generic) else a


def erf(a):
    """The error function, elementwise. NumPy has none: math.erf (the C library's, exact in float64)
    is applied element by element on the CPU; on the GPU CuPy's own kernel runs."""
    if array_module(a) is not numpy:
        import cupyx.scipy.special  # only on the GPU path, which has CuPy already
        return cupyx.scipy.special.erf(a)
    a = numpy.asarray(a)
    out = numpy.empty_like(a)
    out.reshape(-1)[:] = [math.erf(v) for v in a.reshape(-1).tolist()]
    return out


# ---------------------------------------------------------------------------- dtypes
float32 = numpy.dtype("float32")
float64 = numpy.dtype("float64")
int64 = numpy.dtype("int64")
bool_ = numpy.dtype("bool")


def dtype(d) -> numpy.dtype:
    """Accept 'float32', numpy.float32, numpy.dtype(...) alike."""
    return numpy.dtype(d)


def finfo(d):
    return numpy.finfo(d)


def is_floating(d) -> bool:
    return numpy.issubdtype(d, numpy.floating)
