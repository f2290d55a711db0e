"""The backend: devices and array modules (backend.py), and the generators beside it (random.py)."""
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import to_host

import tinygrad_tx as tx
from tinygrad_tx import backend, random

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- devices and array modules
def test_cuda_without_cupy_says_how_to_get_it():
    if tx.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match=r"pip install tinygrad-tx\[gpu\]"):
        tx.Tensor([1.0], device="cuda")


def test_default_device_from_env():
    code = "import tinygrad_tx as tx; print(tx.Tensor([1.0]).device)"
    env = dict(os.environ, TX_DEVICE="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "cpu"
    env["TX_DEVICE"] = "tpu"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "unknown device 'tpu'" in bad.stderr


def test_device_names_normalise_and_unknown_ones_are_refused():
    assert backend.check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match=r"unknown device 'gpu'; expected one of \('cpu', 'cuda'\)"):
        backend.check_device("gpu")


def test_array_module_and_device_follow_the_array(device):
    xp = backend.get_xp(device)
    a = xp.arange(3)
    assert backend.array_module(a) is xp and backend.device_of(a) == device and backend.is_array(a)
    assert not backend.is_array([1, 2, 3])
    moved = backend.to_device(a, "cpu")
    assert backend.device_of(moved) == "cpu" and isinstance(moved, np.ndarray)
    np.testing.assert_array_equal(backend.to_numpy(a), [0, 1, 2])
    assert backend.to_device(moved, "cpu") is moved            # no copy when it is already there
    assert isinstance(backend.as_array(np.float32(2.0)), np.ndarray)   # NumPy scalars become 0-d arrays


def test_only_backend_imports_numpy_or_cupy():
    offenders = []
    for path in (ROOT / "tinygrad_tx").rglob("*.py"):
        if path.name == "backend.py":
            continue
        text = path.read_text()
        if re.search(r"^\s*(import|from)\s+(numpy|cupy)\b", text, re.MULTILINE):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_backend_holds_devices_and_array_modules_only():
    names = set(vars(backend))
    assert not names & {"manual_seed", "rng", "rng_state", "set_rng_state", "index_add_rows", "write_npz",
                        "read_npz"}


# ---------------------------------------------------------------------------- a fake CuPy: the device rules without a GPU
class ndarray:
    """Looks like a cupy.ndarray to the backend: its type is called ndarray and lives in CuPy's module."""
    __module__ = "cupy._core._ndarray"

    def __init__(self, host):
        self.host = np.asarray(host)

    dtype = property(lambda self: self.host.dtype)
    shape = property(lambda self: self.host.shape)
    ndim = property(lambda self: self.host.ndim)
    size = property(lambda self: self.host.size)

    def astype(self, dtype):
        return ndarray(self.host.astype(dtype))

    def any(self):
        return ndarray(self.host.any())

    def get(self):
        return self.host


@pytest.fixture
def fake_cupy(monkeypatch):
    """A CuPy that 'loads' (as if a GPU answered) without this process ever having imported cupy."""
    fake = types.SimpleNamespace(ndarray=ndarray, asarray=lambda a: ndarray(a), __name__="cupy",
                                 stack=lambda arrays: ndarray(np.stack([a.host for a in arrays])))
    monkeypatch.setattr(backend, "_cupy", None)               # nothing has imported CuPy yet
    monkeypatch.setattr(backend, "_load_cupy", lambda: fake)
    return fake


def test_tx_device_wins_for_host_arrays(fake_cupy, monkeypatch):
    monkeypatch.setenv("TX_DEVICE", "cuda")
    for data in (np.ones(3, np.float32), np.arange(4), [1.0, 2.0], 3.0):
        t = tx.Tensor(data)
        assert isinstance(t.data, ndarray) and t.device == "cuda", type(data)
    assert tx.Tensor(np.ones(3), device="cpu").device == "cpu"        # an explicit device still wins
    assert tx.nn.Parameter(np.ones(2)).device == "cuda"


def test_a_tensor_keeps_its_device_under_tx_device(fake_cupy, monkeypatch):
    """Only raw host data follows $TX_DEVICE: a CPU Tensor wrapped again (Tensor(t), Parameter(t))
    stays on the CPU, with the same array, as torch.tensor and nn.Parameter keep a tensor's device."""
    monkeypatch.setenv("TX_DEVICE", "cuda")
    cpu = tx.Tensor(np.ones(3, np.float32), device="cpu")
    for wrapped in (tx.Tensor(cpu), tx.nn.Parameter(cpu), tx.Tensor(cpu, dtype=tx.float64)):
        assert wrapped.device == "cpu" and isinstance(wrapped.data, np.ndarray), type(wrapped)
    assert tx.Tensor(cpu).data is cpu.data and tx.nn.Parameter(cpu).data is cpu.data
    assert isinstance(tx.Tensor(cpu, device="cuda").data, ndarray)      # an explicit device still wins


def test_full_scalar_is_a_0d_array_of_the_dtype_with_the_exact_value(device):
    """The 0-d operand of `tensor * 0.5` or `masked_fill(..., -inf)`: the dtype asked for, the value's
    own bits (negative zero and infinities too), on the device's array module."""
    xp = backend.get_xp(device)
    for value, dtype in [(0.1, "float32"), (-0.0, "float64"), (float("-inf"), "float32"), (7, "int64"), (True, "bool")]:
        a = backend.full_scalar(xp, value, dtype)
        assert backend.device_of(a) == device and a.shape == () and a.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(backend.to_numpy(a), np.asarray(value, dtype=dtype))
        assert np.signbit(backend.to_numpy(a)) == np.signbit(np.asarray(value, dtype=dtype))


def test_without_tx_device_host_data_stays_on_the_cpu(monkeypatch):
    monkeypatch.delenv("TX_DEVICE", raising=False)
    assert tx.Tensor(np.ones(3)).device == "cpu" and tx.Tensor([1.0]).device == "cpu"


def test_a_cupy_array_is_recognised_before_anything_imported_cupy(fake_cupy, monkeypatch):
    monkeypatch.setenv("TX_DEVICE", "cpu")
    a = ndarray(np.ones((2, 3), np.float32))
    assert backend.is_array(a)
    assert backend.array_module(a) is fake_cupy and backend.device_of(a) == "cuda"
    t = tx.Tensor(a)                                   # a GPU array stays where it is
    assert t.data is a and t.device == "cuda"
    assert backend.array_module(np.ones(2)) is np and not backend.is_array([1.0])


def test_the_cuda_hint_names_an_extra_for_each_cuda_version():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = re.findall(r"tinygrad-tx\[([\w-]+)\]` \(([\w-]+)", backend.CUDA_HINT)
    assert {wheel for _, wheel in named} == {"cupy-cuda12x", "cupy-cuda13x"}
    for extra, wheel in named:
        assert extras[extra] == [wheel], extra


def test_a_check_on_the_gpu_is_raised_at_the_next_read(fake_cupy, monkeypatch):
    """On the GPU a failed check does not stop the step (that would wait for the GPU); the next read does."""
    monkeypatch.setattr(backend, "_deferred", [])
    ids = np.array([3, 9])
    backend.check(ndarray(ids >= 5), "embedding", lambda: IndexError(f"id {ids.max()} is out of range"))
    backend.check(ndarray(ids < 0), "other", lambda: ValueError("never raised"))
    assert len(backend._deferred) == 2                      # nothing raised, nothing read yet
    with pytest.raises(IndexError, match=r"^embedding: id 9 is out of range \(checked on the GPU"):
        backend.to_numpy(ndarray(np.ones(2)))
    assert backend._deferred == []
    np.testing.assert_array_equal(backend.to_numpy(ndarray(np.ones(2))), np.ones(2))   # raised once


def test_a_check_on_the_cpu_raises_at_once(monkeypatch):
    monkeypatch.setattr(backend, "_deferred", [])
    with pytest.raises(IndexError, match="out of range"):
        backend.check(np.array([False, True]), "embedding", lambda: IndexError("out of range"))
    backend.check(np.array([False, False]), "embedding", lambda: IndexError("out of range"))
    assert backend._deferred == []


def test_bad_ids_raise_on_every_device(device):
    """At once on the CPU; on the GPU at the next read, which a training step makes anyway (loss.item())."""
    logits = tx.Tensor(np.zeros((2, 4)), device=device)
    target = tx.Tensor([1, 7], device=device)
    table = tx.Tensor(np.ones((5, 2)), device=device)
    ids = tx.Tensor([0, 5], device=device)
    if device == "cpu":
        with pytest.raises(IndexError, match=r"cross_entropy: target id 7 is out of range for 4 classes"):
            tx.functional.cross_entropy(logits, target)
        with pytest.raises(IndexError, match=r"embedding: index out of range: ids span \[0, 5\]"):
            tx.functional.embedding(ids, table)
        return
    loss = tx.functional.cross_entropy(logits, target)
    with pytest.raises(IndexError, match=r"cross_entropy: target id 7 is out of range for 4 classes"):
        loss.item()
    rows = tx.functional.embedding(ids, table)
    with pytest.raises(IndexError, match=r"embedding: index out of range: ids span \[0, 5\]"):
        rows.numpy()


# ---------------------------------------------------------------------------- random generators
def test_manual_seed_makes_every_draw_repeat(device):
    tx.manual_seed(7)
    first = to_host(random.rng(device).random(5))
    tx.manual_seed(7)
    again = to_host(random.rng(device).random(5))
    tx.manual_seed(8)
    other = to_host(random.rng(device).random(5))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_rng_state_round_trip_resumes_the_stream():
    tx.manual_seed(0)
    random.rng("cpu").random(3)
    state = random.rng_state()
    expected = random.rng("cpu").random(4)
    random.rng("cpu").random(10)                               # move on, then go back
    random.set_rng_state(state)
    np.testing.assert_array_equal(random.rng("cpu").random(4), expected)


def test_a_private_generator_leaves_the_device_generator_alone():
    tx.manual_seed(1)
    expected = random.rng("cpu").random(3)
    tx.manual_seed(1)
    np.testing.assert_array_equal(random.generator(1).random(3), random.generator(1).random(3))
    np.testing.assert_array_equal(random.rng("cpu").random(3), expected)
