"""Checks for the exercises: each says whether an answer in exercises.py is right.

    python examples/exercises/check.py                     # every exercise, against exercises.py
    python examples/exercises/check.py softplus topo       # the exercises whose names contain these words
    python examples/exercises/check.py --answers FILE.py   # against another file (CI: solutions/exercises.py)
    python -m pytest examples/exercises/check.py           # as pytest tests (TX_EXERCISES=FILE.py to choose)

Each check takes the module holding the answers and raises AssertionError (or the answer's own
error) with a message that says what is wrong.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
import traceback

import numpy as np

import tinygrad_tx as tx
from tinygrad_tx import autograd
from tinygrad_tx import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ANSWERS = os.path.join(HERE, "exercises.py")


def load_answers(path: str):
    """The module at `path` (a file of answers)."""
    spec = importlib.util.spec_from_file_location(f"answers_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rng(seed=0):
    return np.random.default_rng(seed)


def check_softplus(m):
    x = tx.Tensor(np.array([-1000.0, -20.0, -1.0, 0.0, 0.5, 3.0, 1000.0]), requires_grad=True)
    y = m.Softplus.apply(x)
    want = np.logaddexp(0.0, x.numpy())
    assert np.all(np.isfinite(y.numpy())), f"softplus is not finite at +-1000: {y.numpy()}"
    assert np.allclose(y.numpy(), want, rtol=1e-12, atol=1e-12), f"softplus values {y.numpy()} != {want}"
    y.sum().backward()
    sigmoid = np.exp(-np.logaddexp(0.0, -x.numpy()))
    assert np.allclose(x.grad.numpy(), sigmoid, atol=1e-12), f"d softplus/dx {x.grad.numpy()} != sigmoid {sigmoid}"
    tx.gradcheck(m.Softplus.apply, [tx.Tensor(_rng().standard_normal((3, 4)), requires_grad=True)])


def check_logsumexp(m):
    x = tx.Tensor(np.array([[1000.0, 1000.0, 990.0], [-3.0, 0.5, 2.0]]), requires_grad=True)
    y = m.logsumexp(x, axis=-1)
    assert y.shape == (2,), f"logsumexp of (2, 3) along the last axis has shape (2,), not {y.shape}"
    want = np.logaddexp.reduce(x.numpy(), axis=-1)
    assert np.allclose(y.numpy(), want, rtol=1e-12), f"logsumexp {y.numpy()} != {want} (stable for 1000?)"
    y.sum().backward()
    soft = np.exp(x.numpy() - want[:, None])
    assert np.allclose(x.grad.numpy(), soft, atol=1e-12), "the gradient of logsumexp must be softmax"
    z = m.logsumexp(tx.Tensor(np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])), axis=0)
    assert np.allclose(z.numpy(), np.logaddexp.reduce([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], axis=0)), \
        "logsumexp along axis=0"


def check_fixed_mul(m):
    rng = _rng(1)
    for sa, sb in (((2, 3), (3,)), ((2, 1), (1, 3)), ((4,), (4,))):
        a = tx.Tensor(rng.standard_normal(sa), requires_grad=True)
        b = tx.Tensor(rng.standard_normal(sb), requires_grad=True)
        out = m.FixedMul.apply(a, b)
        assert np.allclose(out.numpy(), a.numpy() * b.numpy()), "FixedMul forward is not a * b"
        try:
            tx.gradcheck(m.FixedMul.apply, [a, b])
        except Exception as e:
            raise AssertionError(f"FixedMul backward, shapes {sa} * {sb}: {e}") from e


def check_topological_order(m):
    x = tx.Tensor([2.0], requires_grad=True)
    a, b = x * 3.0, x.exp()
    y = a * b + a                                          # a diamond: a is used twice
    order = m.topological_order(y._ctx)
    assert isinstance(order, list) and all(isinstance(n, tx.Function) for n in order), \
        "return a list of graph nodes (tx.Function), leaves left out"
    want = set(autograd.topological_order(y._ctx))
    assert len(order) == len(set(order)), "a node appears twice"
    assert set(order) == want, f"{len(order)} nodes, expected the {len(want)} reachable from root"
    position = {n: i for i, n in enumerate(order)}
    for n in order:
        for p in n.parents:
            if isinstance(p, tx.Function):
                assert position[p] < position[n], f"{p.op_name} comes after {n.op_name}, which uses it"
    assert order[-1] is y._ctx, "the root comes last"
    deep = tx.Tensor([1.0], requires_grad=True)
    h = deep
    for _ in range(10_000):
        h = h * 1.0
    try:
        chain = m.topological_order(h._ctx)
    except RecursionError as e:
        raise AssertionError("a chain of 10,000 ops hits the recursion limit: use an explicit stack") from e
    assert len(chain) == 10_000


def check_attention_head(m):
    from tinygrad_tx.models.attention import scaled_dot_product_attention
    rng = _rng(2)
    T, d_model, d_k = 5, 6, 3
    mask = tx.Tensor(np.tril(np.ones((T, T), dtype=bool)))
    for use_mask in (False, True):
        x = tx.Tensor(rng.standard_normal((T, d_model)), requires_grad=True)
        ws = [tx.Tensor(rng.standard_normal((d_model, d_k)) / math.sqrt(d_model), requires_grad=True)
              for _ in range(3)]
        out, weights = m.attention_head(x, *ws, mask if use_mask else None)
        assert out.shape == (T, d_k) and weights.shape == (T, T), \
            f"shapes: output {out.shape} (want {(T, d_k)}), weights {weights.shape} (want {(T, T)})"
        q, k, v = (x @ w for w in ws)
        ref_out, ref_w = scaled_dot_product_attention(q, k, v, mask if use_mask else None)
        assert np.allclose(weights.numpy(), ref_w.numpy(), atol=1e-9), f"weights differ (mask: {use_mask})"
        assert np.allclose(out.numpy(), ref_out.numpy(), atol=1e-9), f"outputs differ (mask: {use_mask})"
        upstream = tx.Tensor(rng.standard_normal((T, d_k)))
        (out * upstream).sum().backward()
        mine = [t.grad.numpy().copy() for t in [x, *ws]]
        for t in [x, *ws]:
            t.grad = None
        q, k, v = (x @ w for w in ws)
        (scaled_dot_product_attention(q, k, v, mask if use_mask else None)[0] * upstream).sum().backward()
        for name, g, t in zip(("x", "w_q", "w_k", "w_v"), mine, [x, *ws]):
            assert np.allclose(g, t.grad.numpy(), atol=1e-9), f"the gradient of {name} differs (mask: {use_mask})"


def check_cross_entropy_grad(m):
    rng = _rng(3)
    for smoothing in (0.0, 0.1):
        logits = rng.standard_normal((4, 7)) * 3
        targets = rng.integers(0, 7, size=4)
        z = tx.Tensor(logits, requires_grad=True)
        F.cross_entropy(z, tx.Tensor(targets), label_smoothing=smoothing).backward()
        mine = np.asarray(m.cross_entropy_grad(logits, targets, smoothing))
        assert mine.shape == logits.shape, f"shape {mine.shape}, expected {logits.shape}"
        assert np.allclose(mine, z.grad.numpy(), atol=1e-12), \
            f"dL/dlogits differs from the engine's (smoothing {smoothing}); max error " \
            f"{np.abs(mine - z.grad.numpy()).max():.2e}"


def check_central_difference(m):
    x = np.array([0.3, -1.2, 2.0])
    before = x.copy()

    def f(v):
        return float(np.sum(np.sin(v) * v ** 2))

    exact = np.cos(x) * x ** 2 + 2 * x * np.sin(x)
    g = np.asarray(m.central_difference_gradient(f, x, 1e-5))
    assert np.array_equal(x, before), "the checker changed x"
    assert g.shape == x.shape and np.allclose(g, exact, atol=1e-8), f"gradient {g}, expected {exact}"
    coarse = np.abs(np.asarray(m.central_difference_gradient(f, x, 1e-2)) - exact).max()
    fine = np.abs(np.asarray(m.central_difference_gradient(f, x, 1e-3)) - exact).max()
    assert 50 < coarse / fine < 200, \
        f"error {coarse:.1e} at h=1e-2 and {fine:.1e} at h=1e-3: central differences shrink it 100x (O(h^2))"


CHECKS = {"softplus": check_softplus, "logsumexp": check_logsumexp, "fixed_mul": check_fixed_mul,
          "topological_order": check_topological_order, "attention_head": check_attention_head,
          "cross_entropy_grad": check_cross_entropy_grad, "central_difference": check_central_difference}


def run(path: str = DEFAULT_ANSWERS, only=()) -> int:
    """Run the checks on the answers in `path`; print PASS/FAIL per exercise; return the failures."""
    answers = load_answers(path)
    failures = 0
    for number, (name, check) in enumerate(CHECKS.items(), start=1):
        if only and not any(word in name for word in only):
            continue
        try:
            check(answers)
            print(f"PASS  {number}. {name}")
        except NotImplementedError:
            failures += 1
            print(f"TODO  {number}. {name}: not written yet")
        except Exception as e:  # noqa: BLE001 -- an answer may fail in any way: report it, go on
            failures += 1
            print(f"FAIL  {number}. {name}: {type(e).__name__}: {e}")
            if os.environ.get("TX_EXERCISES_TRACEBACK"):
                traceback.print_exc()
    return failures


# pytest entry points: `python -m pytest examples/exercises/check.py`
def _answers_for_pytest():
    return load_answers(os.environ.get("TX_EXERCISES", DEFAULT_ANSWERS))


def test_softplus():
    check_softplus(_answers_for_pytest())


def test_logsumexp():
    check_logsumexp(_answers_for_pytest())


def test_fixed_mul():
    check_fixed_mul(_answers_for_pytest())


def test_topological_order():
    check_topological_order(_answers_for_pytest())


def test_attention_head():
    check_attention_head(_answers_for_pytest())


def test_cross_entropy_grad():
    check_cross_entropy_grad(_answers_for_pytest())


def test_central_difference():
    check_central_difference(_answers_for_pytest())


if __name__ == "__main__":
    args = sys.argv[1:]
    path = DEFAULT_ANSWERS
    if "--answers" in args:
        i = args.index("--answers")
        path = args[i + 1]
        args = args[:i] + args[i + 2:]
    sys.exit(1 if run(path, args) else 0)
