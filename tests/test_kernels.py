"""The fused CUDA kernels (tinygrad_tx/kernels.py) against the NumPy primitives they replace.

One table: each row builds a kernel's inputs and the arrays the NumPy backend's primitive gives for
them (forward, or input gradients for a random upstream gradient), in float32 and float64. Each
row runs on two runners:
    emulated  the kernel's exact CUDA source compiled by g++ and run on CPU threads
              (tests/cuda_emulation.py; where g++ is installed)
    cuda      the fused kernel on CuPy (where a GPU is present)
Then: the primitives dispatch to the kernels through Function.apply (same outputs and gradients as the NumPy path), every
source compiles with NVRTC and nvcc where they are installed, and importing tinygrad_tx never
imports CuPy.
"""
import os
import shutil
import subprocess
import sys
from functools import partial

import cuda_emulation
import numpy as np
import pytest
import test_optim
import torch
from conftest import to_host

import tinygrad_tx as tx
from tinygrad_tx import backend, kernels, optim
from tinygrad_tx import functional as F
from tinygrad_tx.kernels import adam_step

DTYPES = [np.float32, np.float64]
IGNORE = -100


def tensor(a, grad=False):
    """A NumPy-backend tensor (explicitly on the CPU, also when TX_DEVICE=cuda)."""
    return tx.Tensor(a, requires_grad=grad, device="cpu")


def assert_close(actual, expected, dtype, what):
    if expected is None:
        assert actual is None, f"{what}: expected None"
        return
    actual = to_host(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {np.dtype(dtype)}"
    tol = {"rtol": 2e-5, "atol": 2e-6} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-12}
    np.testing.assert_allclose(actual, expected, err_msg=what, **tol)


# ============================================================================== the table
# Each case: (rng, dtype) -> (kernel arguments, expected outputs from the NumPy primitive).
def softmax_forward(rng, dtype, shape, axis=-1):
    x = (10 * rng.standard_normal(shape)).astype(dtype)        # large logits: the max shift matters
    return (x, axis), (F.softmax(tensor(x), axis).numpy(),)


def softmax_backward(rng, dtype, shape, axis=-1):
    x = tensor((3 * rng.standard_normal(shape)).astype(dtype), grad=True)
    g = rng.standard_normal(shape).astype(dtype)
    y = F.softmax(x, axis)
    y.backward(tensor(g))
    return (y.numpy(), g, axis), (x.grad.numpy(),)


def log_softmax_forward(rng, dtype, shape, axis=-1):
    x = (10 * rng.standard_normal(shape)).astype(dtype)
    return (x, axis), (F.log_softmax(tensor(x), axis).numpy(),)


def log_softmax_backward(rng, dtype, shape, axis=-1):
    x = tensor((3 * rng.standard_normal(shape)).astype(dtype), grad=True)
    g = rng.standard_normal(shape).astype(dtype)
    y = F.log_softmax(x, axis)
    y.backward(tensor(g))
    return (y.numpy(), g, axis), (x.grad.numpy(),)


def layer_norm_inputs(rng, dtype, shape, affine):
    x = tensor((2 + 3 * rng.standard_normal(shape)).astype(dtype), grad=True)
    w = tensor(rng.standard_normal(shape[-1]).astype(dtype), grad=True) if affine else None
    # without affine parameters the bias is zeros, kept only to read db from the primitive
    b = tensor(rng.standard_normal(shape[-1]).astype(dtype) if affine else np.zeros(shape[-1], dtype), grad=True)
    return x, w, b, 1e-5


def layer_norm_forward(rng, dtype, shape, affine):
    x, w, b, eps = layer_norm_inputs(rng, dtype, shape, affine)
    y = F.layer_norm(x, w, b if affine else None, eps)
    xhat, rstd = y._ctx.saved_tensors[:2]                 # what the primitive keeps for backward
    return (x.numpy(), None if w is None else w.numpy(), None if not affine else b.numpy(), eps), (y.numpy(), xhat, rstd)


def layer_norm_backward(rng, dtype, shape, affine):
    x, w, b, eps = layer_norm_inputs(rng, dtype, shape, affine)
    y = F.layer_norm(x, w, b, eps)
    xhat, rstd = y._ctx.saved_tensors[:2]
    xhat, rstd = xhat.copy(), rstd.copy()                 # backward frees the saved arrays
    g = rng.standard_normal(shape).astype(dtype)
    y.backward(tensor(g))
    dw = None if w is None else w.grad.numpy()
    return (g, xhat, rstd, None if w is None else w.numpy()), (x.grad.numpy(), dw, b.grad.numpy())


def cross_entropy_inputs(rng, dtype, rows, C):
    x = (4 * rng.standard_normal((rows, C))).astype(dtype)
    target = rng.integers(0, C, rows)
    target[1::3] = IGNORE
    valid = target != IGNORE
    return x, target, valid, np.where(valid, target, 0)


def cross_entropy_forward(rng, dtype, smoothing, rows=7, C=37):
    x, target, valid, t_safe = cross_entropy_inputs(rng, dtype, rows, C)
    loss = F.cross_entropy(tensor(x), tensor(target), ignore_index=IGNORE, label_smoothing=smoothing, reduction="none")
    return (x, t_safe, valid, smoothing), (loss.numpy(), F.log_softmax(tensor(x)).numpy())


def cross_entropy_backward(rng, dtype, smoothing, rows=7, C=37):
    x, target, valid, t_safe = cross_entropy_inputs(rng, dtype, rows, C)
    xt = tensor(x, grad=True)
    loss = F.cross_entropy(xt, tensor(target), ignore_index=IGNORE, label_smoothing=smoothing, reduction="none")
    g = rng.standard_normal(rows).astype(dtype)
    loss.backward(tensor(g))
    logp = F.log_softmax(tensor(x)).numpy()
    return (logp, t_safe, (g * valid).astype(dtype), smoothing), (xt.grad.numpy(),)


class _Uniforms:
    """Stands in for a device generator: its next `random` draw is the given array."""

    def __init__(self, u):
        self.u = u

    def random(self, shape, dtype=None):
        assert tuple(shape) == self.u.shape and np.dtype(dtype) == self.u.dtype
        return self.u


def dropout_forward(rng, dtype, shape, p):
    x = rng.standard_normal(shape).astype(dtype)
    u = rng.random(shape).astype(dtype)
    u.flat[:3] = np.asarray(p, dtype)                     # draws exactly at p are kept (u >= p)
    saved = tx.random._generators.get("cpu")
    tx.random._generators["cpu"] = _Uniforms(u)
    try:
        y = F.dropout(tensor(x, grad=True), p)
    finally:
        if saved is None:
            tx.random._generators.pop("cpu")
        else:
            tx.random._generators["cpu"] = saved
    (scale,) = y._ctx.saved_tensors
    return (x, u, p), (y.numpy(), scale)


def embedding_backward(rng, dtype, n, V, d):
    """Ids with long runs of repeats (and unused rows), through the Embedding primitive's backward."""
    ids = rng.integers(0, V, n)
    ids[::4] = 1                                           # one id in a quarter of the positions
    weight = tensor(rng.standard_normal((V + 2, d)).astype(dtype), grad=True)
    g = rng.standard_normal((n, d)).astype(dtype)
    F.embedding(tensor(ids), weight).backward(tensor(g))
    return (np.zeros((V + 2, d), dtype), ids, g), (weight.grad.numpy(),)


# kernel name, case, id. Rows of 7 and 37 elements use one warp, rows of 100 several (the block reductions).
TABLE = [
    ("softmax_forward", partial(softmax_forward, shape=(4, 7)), "4x7"),
    ("softmax_forward", partial(softmax_forward, shape=(2, 3, 100)), "2x3x100"),
    ("softmax_forward", partial(softmax_forward, shape=(9, 2, 5), axis=0), "9x2x5-axis0"),
    ("softmax_backward", partial(softmax_backward, shape=(4, 7)), "4x7"),
    ("softmax_backward", partial(softmax_backward, shape=(2, 3, 100)), "2x3x100"),
    ("softmax_backward", partial(softmax_backward, shape=(9, 2, 5), axis=0), "9x2x5-axis0"),
    ("log_softmax_forward", partial(log_softmax_forward, shape=(2, 3, 100)), "2x3x100"),
    ("log_softmax_backward", partial(log_softmax_backward, shape=(2, 3, 100)), "2x3x100"),
    ("log_softmax_backward", partial(log_softmax_backward, shape=(4, 33, 3), axis=1), "4x33x3-axis1"),
    ("layer_norm_forward", partial(layer_norm_forward, shape=(2, 3, 100), affine=True), "affine"),
    ("layer_norm_forward", partial(layer_norm_forward, shape=(5, 24), affine=False), "plain"),
    ("layer_norm_backward", partial(layer_norm_backward, shape=(2, 3, 100), affine=True), "affine"),
    ("layer_norm_backward", partial(layer_norm_backward, shape=(5, 24), affine=False), "plain"),
    ("cross_entropy_forward", partial(cross_entropy_forward, smoothing=0.0), "ignore_index"),
    ("cross_entropy_forward", partial(cross_entropy_forward, smoothing=0.1, C=100), "smoothing+ignore_index"),
    ("cross_entropy_backward", partial(cross_entropy_backward, smoothing=0.0), "ignore_index"),
    ("cross_entropy_backward", partial(cross_entropy_backward, smoothing=0.1, C=100), "smoothing+ignore_index"),
    ("dropout_forward", partial(dropout_forward, shape=(3, 50), p=0.3), "p=0.3"),
    ("dropout_forward", partial(dropout_forward, shape=(700,), p=0.9), "p=0.9-several-blocks"),
    ("embedding_backward", partial(embedding_backward, n=60, V=9, d=5), "60-ids-d5"),
    ("embedding_backward", partial(embedding_backward, n=200, V=30, d=100), "200-ids-d100"),
]


# ============================================================================== the runners
@pytest.fixture(scope="session")
def fake_cupy(tmp_path_factory):
    """Every kernel source, both dtypes, built for the CPU emulation (two g++ runs in parallel)."""
    if not cuda_emulation.available():
        pytest.skip("the CPU emulation of the CUDA kernels needs g++")
    groups = {d: [(name, kernels.source(name, d)) for name in kernels.SOURCES] for d in ("float32", "float64")}
    return cuda_emulation.FakeCupy(groups, str(tmp_path_factory.mktemp("cuda_emulation")))


@pytest.fixture
def emulated(fake_cupy, monkeypatch):
    """Inside the test, kernels.py finds the emulation where it asks the backend for cupy."""
    get_xp = backend.get_xp
    monkeypatch.setattr(backend, "get_xp", lambda device: fake_cupy if device == "cuda" else get_xp(device))
    monkeypatch.setattr(kernels, "_compiled", {})


def skip_without_gpu():
    if not tx.cuda_available():
        pytest.skip("CuPy or a GPU is missing (pip install tinygrad-tx[gpu] on a CUDA machine)")


def skip_cpu_runner_on_gpu_only_run():
    if os.environ.get("TX_DEVICE") == "cuda":
        pytest.skip("TX_DEVICE=cuda: the suite runs on the GPU only")


@pytest.fixture(params=["emulated", "cuda"])
def runner(request):
    """run(name, args) -> the kernel's outputs, from one of the two runners."""
    if request.param == "cuda":
        skip_without_gpu()
        return lambda name, args: kernels.KERNELS[name](*[backend.to_device(a, "cuda") if isinstance(a, np.ndarray)
                                                          else a for a in args])
    skip_cpu_runner_on_gpu_only_run()
    request.getfixturevalue("emulated")
    return lambda name, args: kernels.KERNELS[name](*args)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name, case", [pytest.param(n, c, id=f"{n}-{i}") for n, c, i in TABLE])
def test_kernel_matches_numpy_primitive(runner, name, case, dtype):
    args, expected = case(np.random.default_rng(0), dtype)
    outputs = runner(name, args)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    assert len(outputs) == len(expected)
    for i, (out, exp) in enumerate(zip(outputs, expected)):
        assert_close(out, exp, dtype, f"{name} output {i}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_embedding_backward_gives_the_same_bits_as_numpy_every_time(runner, dtype):
    """Each id's rows are summed one after another in the order of the positions, as NumPy's add.at
    sums them: equal to the last bit, on every run (atomic adds on the GPU would not be)."""
    rng = np.random.default_rng(1)
    ids = np.concatenate([rng.integers(0, 50, 3000), np.full(1000, 7)])
    rng.shuffle(ids)
    g = rng.standard_normal((ids.size, 64)).astype(dtype)
    expected = np.zeros((50, 64), dtype)
    np.add.at(expected, ids, g)
    for _ in range(3):
        np.testing.assert_array_equal(to_host(runner("embedding_backward", (np.zeros((50, 64), dtype), ids, g))),
                                      expected)


def test_every_kernel_is_in_the_table():
    assert {name for name, _, _ in TABLE} == set(kernels.KERNELS)
    assert set(kernels.SOURCES) == set(kernels.KERNELS) | {"layer_norm_backward_params", "adam_step"}


def test_emulation_checks_argument_types(emulated):
    """The emulator refuses a float64 array where the float32 kernel reads floats (a GPU would not)."""
    x = np.ones((2, 5), np.float32)
    kernel = kernels._kernel("softmax_forward", np.float32)
    with pytest.raises(TypeError, match="argument 0"):
        kernel((2,), (32,), (x.astype(np.float64), np.empty_like(x), np.int64(5)))
    with pytest.raises(TypeError, match="argument 2"):
        kernel((2,), (32,), (x, np.empty_like(x), np.int32(5)))


# ============================================================================== dispatch from the primitives
DISPATCHED = {"softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
              "layer_norm_forward", "layer_norm_backward", "cross_entropy_forward", "cross_entropy_backward"}


def composition(dtype, device):
    """Layer norm, softmax (last axis and axis 0), log-softmax and the three cross-entropy reductions
    in one graph on `device`; returns the outputs and the input gradients as NumPy arrays."""
    rng = np.random.default_rng(0)
    B, T, C = 2, 3, 40
    x = tx.Tensor((2 * rng.standard_normal((B, T, C))).astype(dtype), requires_grad=True, device=device)
    w = tx.Tensor(rng.standard_normal(C).astype(dtype), requires_grad=True, device=device)
    b = tx.Tensor(rng.standard_normal(C).astype(dtype), requires_grad=True, device=device)
    target = tx.Tensor(np.where(rng.random((B, T)) < 0.3, IGNORE, rng.integers(0, C, (B, T))), device=device)
    h = F.layer_norm(x, w, b)
    across = F.softmax(h, axis=0)                      # not the last axis: the kernel takes it moved last
    logits = h + F.softmax(h, axis=-1) * 3 + across + F.log_softmax(h, axis=-1) * 0.5
    losses = [F.cross_entropy(logits, target, ignore_index=IGNORE, label_smoothing=0.1),
              F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum"),
              (F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none") * 0.3).sum()]
    (losses[0] + losses[1] * 0.1 + losses[2]).backward()
    return [to_host(t) for t in (logits, *losses)] + [to_host(p.grad) for p in (x, w, b)]


@pytest.fixture
def fused_calls(monkeypatch):
    """The names of the fused kernels called during the test, in order."""
    calls = []
    for name, fused in list(kernels.KERNELS.items()):
        def spy(*args, _name=name, _fused=fused):
            calls.append(_name)
            return _fused(*args)
        monkeypatch.setattr(kernels, name, spy)
    return calls


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("where", ["emulated", "cuda", "cuda-plain"])
def test_primitives_dispatch_to_the_kernels(where, dtype, fused_calls, request, monkeypatch):
    if where == "emulated":
        skip_cpu_runner_on_gpu_only_run()
        request.getfixturevalue("emulated")
    else:
        skip_without_gpu()
    expected = composition(dtype, "cpu")
    assert fused_calls == [], "the NumPy path called a fused kernel"
    if where == "emulated":
        # NumPy arrays stand in for CuPy ones: every input the kernels take goes to them
        monkeypatch.setattr(kernels, "_on_gpu", lambda x: True)
        actual = composition(dtype, "cpu")
    else:
        with kernels.use_fused(where == "cuda"):
            actual = composition(dtype, "cuda")
    assert set(fused_calls) == (set() if where == "cuda-plain" else DISPATCHED)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, dtype, f"composition output {i}")


def test_kernels_take_float_arrays_of_one_dtype(monkeypatch):
    x = np.ones((2, 3), np.float32)
    assert not kernels.accepts([x]), "a fused kernel for a NumPy array"
    monkeypatch.setattr(kernels, "_on_gpu", lambda a: True)            # as if x were a CuPy array
    assert kernels.accepts([x]) and kernels.accepts([x.astype(np.float64), 1e-5])
    assert kernels.accepts([x, np.ones(3, np.float32), None, np.zeros(2, np.int64), 0.5])
    assert not kernels.accepts([x, np.ones(3, np.float64)])             # mixed dtypes promote: the xp maths
    assert not kernels.accepts([x.astype(np.float16)]) and not kernels.accepts([x.astype(np.int64)])
    assert not kernels.accepts([np.ones((2, 0), np.float32)]) and not kernels.accepts([3.0])
    with kernels.use_fused(False):
        assert not kernels.accepts([x])


def test_only_primitives_with_kernels_have_fused_versions():
    fused = {cls.__name__ for cls in vars(tx.primitives).values()
             if isinstance(cls, type) and issubclass(cls, tx.Function) and cls.forward_cuda is not None}
    assert fused == {"Softmax", "LogSoftmax", "LayerNorm", "CrossEntropy", "Dropout"}
    for name in fused:
        assert getattr(tx.primitives, name).backward_cuda is not None, name


def test_accepts_on_cuda():
    skip_without_gpu()
    x = backend.to_device(np.ones((2, 3), np.float32), "cuda")
    assert kernels.accepts([x, 0])
    with kernels.use_fused(False):
        assert not kernels.accepts([x, 0])
    assert kernels.accepts([x, 0])


def test_importing_tinygrad_tx_does_not_import_cupy():
    env = {k: v for k, v in os.environ.items() if k != "TX_DEVICE"}
    code = ("import sys, numpy, tinygrad_tx, tinygrad_tx.kernels as k\n"
            "tinygrad_tx.Tensor([[1.0, 2.0]], requires_grad=True).softmax().sum().backward()\n"
            "k.accepts([numpy.ones((2, 3))])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'cupyx', 'cupy_backends')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


# ============================================================================== the sources compile
def nvrtc_or_skip():
    try:
        from cupy_backends.cuda.libs import nvrtc  # CuPy's NVRTC binding: needs no GPU
        nvrtc.getVersion()
    except Exception as e:  # noqa: BLE001 (ImportError without CuPy, or the NVRTC library missing)
        pytest.skip(f"NVRTC is not available ({type(e).__name__}: {e})")
    return nvrtc


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sources_compile_with_nvrtc(dtype):
    """Each kernel's exact source, with the options CuPy's RawKernel adds, for the H100 (compute_90)."""
    nvrtc = nvrtc_or_skip()
    for name in kernels.SOURCES:
        program = nvrtc.createProgram(kernels.source(name, dtype), f"{name}.cu", [], [])
        try:
            nvrtc.compileProgram(program, ["-arch=compute_90", "--device-as-default-execution-space", "-ftz=true"])
        except nvrtc.NVRTCError:
            pytest.fail(f"{name} ({dtype}) does not compile:\n{nvrtc.getProgramLog(program)}")
        if dtype == "float32":
            assert b".f64" not in nvrtc.getPTX(program), f"{name}: double arithmetic in the float32 kernel"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sources_compile_with_nvcc(dtype, tmp_path):
    """All kernels of a dtype in one translation unit (a namespace each) down to H100 machine code."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc (the CUDA toolkit) is not installed")
    unit = tmp_path / "kernels.cu"
    unit.write_text("".join(f"namespace k_{name} {{\n{kernels.source(name, dtype)}\n}}\n" for name in kernels.SOURCES))
    out = subprocess.run([nvcc, "-arch=sm_90", "-cubin", "-o", str(tmp_path / "kernels.cubin"), str(unit)],
                         check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# ============================================================================== the fused Adam step
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", range(4), ids=lambda i: test_optim.ADAM_IDS[i])
def test_fused_adam_matches_torch_and_the_numpy_update(emulated, monkeypatch, case, dtype):
    """optim.Adam/AdamW with the kernel's exact CUDA source (emulated), on the whole buffer (steps 0
    and 1) and parameter by parameter (after parameter 1 skipped step 2), against torch.optim."""
    skip_cpu_runner_on_gpu_only_run()
    ours, theirs, kwargs = test_optim.ADAMS[case]
    values = test_optim.initial_values(4)
    if dtype == "float32":
        values = [v.astype(np.float32) for v in values]
    plain, _ = test_optim.run_ours(ours, kwargs, values, test_optim.N_STEPS, dtype, "cpu")
    calls = []
    monkeypatch.setattr(kernels, "_on_gpu", lambda x: True)          # NumPy arrays stand in for CuPy ones
    monkeypatch.setattr(kernels, "adam_step", lambda *a, **kw: calls.append(a[0].size) or adam_step(*a, **kw))
    fused, _ = test_optim.run_ours(ours, kwargs, values, test_optim.N_STEPS, dtype, "cpu")
    expected = test_optim.run_torch(theirs, kwargs, values, test_optim.N_STEPS, getattr(torch, dtype))
    total = sum(v.size for v in values)
    assert calls[:2] == [total, total] and len(calls) == 2 + 2 + 3 * (test_optim.N_STEPS - 3)   # see run_ours
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-14}
    for f, p, e in zip(fused, plain, expected):
        np.testing.assert_allclose(f.numpy(), e, **tol)
        np.testing.assert_allclose(f.numpy(), p.numpy(), **tol)


def test_fused_adam_keeps_no_gradient_sized_buffer_between_steps(emulated, monkeypatch):
    """Between steps the fused Adam holds the parameters and the two moments, nothing else of their
    size: a kept copy of the gathered gradients would sit in GPU memory through the next backward."""
    skip_cpu_runner_on_gpu_only_run()
    monkeypatch.setattr(kernels, "_on_gpu", lambda x: True)          # NumPy arrays stand in for CuPy ones
    values = test_optim.initial_values(4)
    params, opt = test_optim.run_ours(optim.Adam, {}, values, 2, "float64", "cpu")
    total = sum(v.size for v in values)
    (flat,) = opt._flats
    held = [a for a in vars(flat).values() if isinstance(a, np.ndarray) and a.size == total]
    assert len(held) == 3 and all(any(a is b for b in held) for a in (flat.param, flat.exp_avg, flat.exp_avg_sq))


def test_create_graph_after_a_fused_forward_runs_the_plain_backward(emulated, monkeypatch, fused_calls):
    """Second derivatives through layer norm, softmax, log-softmax and cross-entropy: the fused forward
    saves what the plain backward needs, and a create_graph backward records the plain maths."""
    skip_cpu_runner_on_gpu_only_run()
    rng = np.random.default_rng(3)
    x0, w0 = rng.standard_normal((3, 2, 6)), rng.standard_normal(6)
    target = tx.Tensor(rng.integers(0, 6, (3, 2)), device="cpu")

    def second_order():
        x = tx.Tensor(x0, requires_grad=True, device="cpu")
        w = tx.Tensor(w0, requires_grad=True, device="cpu")
        h = F.layer_norm(x, w, None)
        y = (F.softmax(h, -1) * F.log_softmax(h * 0.5, -1)).sum() + F.cross_entropy(h, target, label_smoothing=0.1)
        gx, gw = tx.grad(y, [x, w], create_graph=True)
        ((gx * gx).sum() + (gw * gw).sum()).backward()
        return [to_host(t) for t in (y, gx, gw, x.grad, w.grad)]

    expected = second_order()
    monkeypatch.setattr(kernels, "_on_gpu", lambda a: True)
    actual = second_order()
    assert {"softmax_forward", "log_softmax_forward", "layer_norm_forward", "cross_entropy_forward"} <= set(fused_calls)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dropout_dispatches_with_the_same_draws(emulated, monkeypatch, fused_calls, dtype):
    """Seeded alike, the fused dropout keeps the same positions as the xp maths, forward and backward."""
    skip_cpu_runner_on_gpu_only_run()
    rng = np.random.default_rng(2)
    x0, g = rng.standard_normal((4, 33)).astype(dtype), rng.standard_normal((4, 33)).astype(dtype)

    def run():
        tx.manual_seed(9)
        x = tensor(x0, grad=True)
        y = F.dropout(x, 0.4)
        y.backward(tensor(g))
        return y.numpy(), x.grad.numpy()

    expected = run()
    monkeypatch.setattr(kernels, "_on_gpu", lambda a: True)
    actual = run()
    assert fused_calls == ["dropout_forward"]
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)
    assert 0 < (expected[0] == 0).sum() < expected[0].size


def test_a_transformer_training_step_on_the_fused_kernels_matches_numpy(emulated, monkeypatch, fused_calls):
    """Every fused kernel wired together: two steps of a small Transformer (dropout on, label-smoothed
    loss with padding, clipping, Adam) give the NumPy path's losses and weights."""
    skip_cpu_runner_on_gpu_only_run()
    from tinygrad_tx.models.transformer import Transformer, TransformerConfig
    src = np.array([[3, 4, 5, 6, 2], [7, 8, 2, 0, 0]])
    tgt = np.array([[1, 9, 10, 11, 2], [1, 12, 2, 0, 0]])

    def train_two_steps():
        tx.manual_seed(0)
        config = TransformerConfig(src_vocab=13, tgt_vocab=13, d_model=16, n_heads=2, d_ff=32, n_layers=1,
                                   dropout=0.1, max_len=16, pad_id=0)
        model = Transformer(config).to(device="cpu", dtype="float64")
        opt = tx.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(2):
            logits = model(tx.Tensor(src, device="cpu"), tx.Tensor(tgt[:, :-1], device="cpu"))
            loss = F.cross_entropy(logits, tx.Tensor(tgt[:, 1:], device="cpu"), ignore_index=0, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            tx.optim.clip_grad_norm(model.parameters(), 0.5)
            opt.step()
            losses.append(loss.item())
        return losses, [p.numpy() for p in model.parameters()]

    expected = train_two_steps()
    monkeypatch.setattr(kernels, "_on_gpu", lambda a: True)
    monkeypatch.setattr(kernels, "adam_step", lambda *a, **kw: fused_calls.append("adam_step") or adam_step(*a, **kw))
    actual = train_two_steps()
    assert fused_calls.count("adam_step") == 2                    # one launch per step for all the weights
    assert set(fused_calls) >= {"softmax_forward", "softmax_backward", "layer_norm_forward", "layer_norm_backward",
                                "cross_entropy_forward", "cross_entropy_backward", "dropout_forward"}
    np.testing.assert_allclose(actual[0], expected[0], rtol=1e-10)
    for a, e in zip(actual[1], expected[1]):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-12)
