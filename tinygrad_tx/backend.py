"""The array backends: NumPy on the CPU, CuPy on the GPU.

This is the only module that names `numpy` or `cupy`. Every op asks for `xp`, the array module of
the tensor it works on (Chainer's `get_array_module`), so one piece of code runs on both devices.
"""
from __future__ import annotations

import os

import numpy

DEVICES = ("cpu", "cuda")
CUDA_HINT = ("device 'cuda' needs CuPy and an NVIDIA GPU: install them with "
             "`pip install tinygrad-tx[gpu]` (the cupy-cuda12x wheel) on a machine with CUDA 12")

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


def get_xp(device: str):
    """The array module for a device name."""
    return numpy if device == "cpu" else _load_cupy()


def array_module(a):
    """The array module an array lives in: numpy for NumPy arrays and scalars, else cupy."""
    if isinstance(a, (numpy.ndarray, numpy.generic)) or _cupy in (None, False):
        return numpy
    return _cupy


def device_of(a) -> str:
    return "cpu" if array_module(a) is numpy else "cuda"


def is_array(a) -> bool:
    if isinstance(a, numpy.ndarray):
        return True
    return bool(_cupy) and isinstance(a, _cupy.ndarray)


def to_device(a, device: str):
    """Move an array to `device` (no copy when it is already there)."""
    if device_of(a) == device:
        return a
    if device == "cpu":
        return a.get()
    return _load_cupy().asarray(a)


def to_numpy(a):
    """A host (NumPy) view or copy of an array."""
    return a if isinstance(a, numpy.ndarray) else numpy.asarray(a.get() if hasattr(a, "get") else a)


def host_array(data):
    """A NumPy array from Python data (scalars, nested lists)."""
    return numpy.asarray(data)


def format_array(a, prefix=""):
    return numpy.array2string(to_numpy(a), precision=4, separator=", ", prefix=prefix)


def as_array(a):
    """NumPy reductions return scalars such as numpy.float32: turn them back into 0-d arrays."""
    return numpy.asarray(a) if isinstance(a, numpy.generic) else a


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


# ---------------------------------------------------------------------------- randomness
_rngs: dict = {}


def manual_seed(seed: int) -> None:
    """Seed every device's generator; later draws (init, dropout) are then reproducible."""
    _rngs["cpu"] = numpy.random.default_rng(seed)
    if _cupy:
        _rngs["cuda"] = _cupy.random.default_rng(seed)


def rng(device: str = "cpu"):
    """The generator of a device (created unseeded on first use)."""
    if device not in _rngs:
        _rngs[device] = get_xp(device).random.default_rng()
    return _rngs[device]


def rng_for_check(seed: int):
    """A private generator for tests and gradcheck, leaving the global one untouched."""
    return numpy.random.default_rng(seed)


def host_zeros(shape, dtype=float64):
    return numpy.zeros(shape, dtype=dtype)


def rng_state() -> dict:
    """The CPU generator's state as plain JSON-able data (for exact resume)."""
    return rng("cpu").bit_generator.state


def set_rng_state(state: dict) -> None:
    g = numpy.random.default_rng()
    g.bit_generator.state = state
    _rngs["cpu"] = g


# ---------------------------------------------------------------------------- scatter-add
def index_add_rows(dst, index, src):
    """dst[index[i]] += src[i] for every i, summing repeated indices (the embedding backward).

    The plain version is `xp.add.at(dst, index, src)`, which NumPy runs one row at a time. We sort
    the indices instead and sum each run of equal ids with one `add.reduceat`.
    """
    xp = array_module(dst)
    if xp is not numpy:
        import cupyx  # only on the GPU path, which has CuPy already
        cupyx.scatter_add(dst, index, src)
        return dst
    if index.size == 0:
        return dst
    order = numpy.argsort(index, kind="stable")
    sorted_index = index[order]
    starts = numpy.flatnonzero(numpy.r_[True, sorted_index[1:] != sorted_index[:-1]])
    dst[sorted_index[starts]] += numpy.add.reduceat(src[order], starts, axis=0)
    return dst


# ---------------------------------------------------------------------------- .npz files
def write_npz(file, arrays: dict) -> None:
    """Write name -> host array into an open binary file as an uncompressed .npz.

    Like numpy.savez, but any name is allowed (savez reserves 'file' and 'allow_pickle') and
    object arrays are refused instead of pickled.
    """
    import zipfile
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", mode="w", force_zip64=True) as f:
                numpy.lib.format.write_array(f, numpy.asanyarray(arr), allow_pickle=False)


def read_npz(path) -> dict:
    """Read an .npz into a dict of NumPy arrays, in file order; never unpickles."""
    with numpy.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
