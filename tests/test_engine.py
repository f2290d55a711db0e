"""Properties of the engine itself: accumulation, deep graphs, freeing, no_grad, dtypes, errors."""
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import to_host

import tinygrad_tx as tx
from tinygrad_tx import autograd

ROOT = Path(__file__).resolve().parents[1]


def test_diamond_accumulates(device):
    x = tx.Tensor([1.5, -2.0], requires_grad=True, device=device)
    y = x * 3
    z = y * y + y            # y used twice: dz/dx = (2y + 1) * 3
    z.sum().backward()
    np.testing.assert_allclose(to_host(x.grad), (2 * 3 * np.array([1.5, -2.0]) + 1) * 3)


def test_same_leaf_twice_and_across_calls(device):
    x = tx.Tensor([2.0], requires_grad=True, device=device)
    (x + x).sum().backward()
    np.testing.assert_allclose(to_host(x.grad), [2.0])
    (x * x).sum().backward()          # accumulates: 2 + 2x
    np.testing.assert_allclose(to_host(x.grad), [6.0])


def test_leaf_grads_are_not_aliased(device):
    a = tx.Tensor([1.0, 2.0], requires_grad=True, device=device)
    b = tx.Tensor([3.0, 4.0], requires_grad=True, device=device)
    (a + b).sum().backward()          # Add hands the same gradient to both inputs
    a.grad.data *= 10                 # e.g. clip_grad_norm scaling in place
    np.testing.assert_allclose(to_host(b.grad), [1.0, 1.0])


def test_chain_10000_deep_is_iterative(device):
    x = tx.Tensor([1.0], requires_grad=True, device=device)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(to_host(x.grad), [1.0001 ** 10_000], rtol=1e-3)


def test_second_backward_raises_unless_retained(device):
    x = tx.Tensor([1.0, 2.0], requires_grad=True, device=device)
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(to_host(x.grad), 2 * (np.exp([1.0, 2.0]) * (1 + np.array([1.0, 2.0]))), rtol=1e-6)
    with pytest.raises(RuntimeError, match="second time.*retain_graph=True"):
        y.backward()


def test_saved_arrays_released_after_backward(device):
    x = tx.Tensor(np.ones((3, 3)), requires_grad=True, device=device)
    y = x.exp()
    z = (y * 2).sum()
    node = y.grad_fn
    assert len(node.saved_tensors) == 1
    z.backward()
    assert node.saved_tensors == () and node.released


def test_intermediate_freed_when_dropped(device):
    x = tx.Tensor(np.ones(4), requires_grad=True, device=device)
    h = x.tanh()
    ref = weakref.ref(h)
    loss = (h * 2).sum()
    del h
    gc.collect()
    assert ref() is None, "the graph must not keep intermediate tensors alive"
    loss.backward()
    np.testing.assert_allclose(to_host(x.grad), 2 * (1 - np.tanh(1.0) ** 2) * np.ones(4), rtol=1e-6)


def test_graph_freed_with_loss(device):
    x = tx.Tensor(np.ones(4), requires_grad=True, device=device)
    loss = (x.exp() * 3).sum()
    node = weakref.ref(loss.grad_fn)
    loss.backward()
    del loss
    gc.collect()
    assert node() is None


def test_backward_on_non_scalar_needs_grad(device):
    x = tx.Tensor(np.ones((2, 2)), requires_grad=True, device=device)
    with pytest.raises(RuntimeError, match=r"scalar.*\(2, 2\)"):
        (x * 2).backward()


def test_no_grad_records_and_saves_nothing(device):
    saved = []

    class Spy(tx.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            saved.append(ctx.saved_tensors)
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    x = tx.Tensor([1.0], requires_grad=True, device=device)
    with tx.no_grad():
        y = Spy.apply(x) * x
    assert y.grad_fn is None and not y.requires_grad
    assert saved == [()]

    @tx.no_grad()
    def f(t):
        return t * 3
    assert f(x).grad_fn is None
    assert tx.is_grad_enabled()


def test_custom_function_cube(device):
    class Cube(tx.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 3 * x ** 2 * grad

    t = tx.Tensor([1.0, -2.0, 0.5], requires_grad=True, device=device)
    Cube.apply(t).sum().backward()
    np.testing.assert_allclose(to_host(t.grad), 3 * np.array([1.0, -2.0, 0.5]) ** 2)
    assert tx.gradcheck(Cube.apply, [t])


def test_gradcheck_catches_a_wrong_derivative():
    class WrongSquare(tx.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x          # should be 2x

    with pytest.raises(tx.GradcheckError, match=r"input 0 \(shape \(3,\)\).*largest error"):
        tx.gradcheck(WrongSquare.apply, [tx.Tensor([1.0, 2.0, 3.0], requires_grad=True)])


def test_graph_record_is_simple_to_walk():
    x = tx.Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    w = tx.Tensor(np.ones((3, 4), np.float32), requires_grad=True)
    y = (x @ w).softmax(-1)
    node = y.grad_fn
    assert node.op_name == "Softmax" and node.out_shape == (2, 4) and node.out_dtype == np.float32
    mm = node.parents[0]
    assert mm.op_name == "MatMul" and mm.parents == (x, w) and mm.out_shape == (2, 4)
    assert [n.op_name for n in autograd.topological_order(node)] == ["MatMul", "Softmax"]


def test_backward_hook_sees_every_node_until_its_handle_is_removed():
    x = tx.Tensor([1.0, 2.0], requires_grad=True)
    seen = []
    handle = autograd.register_backward_hook(lambda node, g, grads: seen.append((node.op_name, g.shape, len(grads))))
    (x.exp() * x).sum().backward()
    assert seen == [("Sum", (), 3), ("Mul", (2,), 2), ("Exp", (2,), 1)]   # Sum also gets axes, keepdims
    handle.remove()
    handle.remove()                                   # a second remove is harmless
    (x * x).sum().backward()
    assert len(seen) == 3
    with autograd.register_backward_hook(lambda node, g, grads: seen.append(node.op_name)):
        (x * 2.0).sum().backward()
    (x * 2.0).sum().backward()                        # the block's hook is gone
    assert seen[3:] == ["Sum", "Mul"]
    with pytest.raises(TypeError, match="register_backward_hook: expected a callable"):
        autograd.register_backward_hook(None)


def test_the_same_hook_registered_twice_runs_twice_and_removes_once():
    x = tx.Tensor([1.0], requires_grad=True)
    calls = []

    def hook(node, g, grads):
        calls.append(node.op_name)

    first, second = autograd.register_backward_hook(hook), autograd.register_backward_hook(hook)
    x.sum().backward()
    first.remove()
    x.sum().backward()
    second.remove()
    assert calls == ["Sum", "Sum", "Sum"]


def test_module_scope_tags_nodes_nests_and_survives_an_error():
    x = tx.Tensor([1.0], requires_grad=True)
    with autograd.module_scope("encoder"):
        a = x * 2.0
        with autograd.module_scope("encoder.layer0"):
            b = a.exp()
        c = b + 1.0
    d = c.sum()
    assert [n.scope for n in (a.grad_fn, b.grad_fn, c.grad_fn, d.grad_fn)] == ["encoder", "encoder.layer0",
                                                                                "encoder", ""]
    with pytest.raises(RuntimeError, match="boom"), autograd.module_scope("broken"):
        raise RuntimeError("boom")
    assert autograd.current_scope() == "" and (x * 1.0).grad_fn.scope == ""


def test_softmax_is_stable_for_huge_logits(device):
    x = tx.Tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], requires_grad=True, device=device)
    for out, ref in ((x.softmax(-1), torch.tensor(to_host(x)).softmax(-1)),
                     (x.log_softmax(-1), torch.tensor(to_host(x)).log_softmax(-1))):
        assert np.isfinite(to_host(out)).all()
        np.testing.assert_allclose(to_host(out), ref.numpy(), rtol=1e-6)
    x.softmax(-1).sum().backward()
    assert np.isfinite(to_host(x.grad)).all()


@pytest.mark.parametrize("fill", [-1e9, float(np.finfo(np.float32).min)])
def test_fully_masked_row_gives_no_nan(device, fill):
    scores = tx.Tensor(np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32), requires_grad=True,
                       device=device)
    mask = tx.Tensor(np.array([[False, True, False], [True, True, True]]), device=device)
    w = scores.masked_fill(mask, fill).softmax(-1)
    (w * tx.Tensor(np.arange(6.0, dtype=np.float32).reshape(2, 3), device=device)).sum().backward()
    assert np.isfinite(to_host(w)).all() and np.isfinite(to_host(scores.grad)).all()
    np.testing.assert_allclose(to_host(w).sum(-1), [1.0, 1.0], rtol=1e-6)
    assert to_host(w)[0, 1] == 0.0


def test_dtype_rules():
    assert tx.Tensor(1.5).dtype == np.float32
    assert tx.Tensor([1.0, 2]).dtype == np.float32
    assert tx.Tensor(3).dtype == np.int64
    assert tx.Tensor([1, 2]).dtype == np.int64
    assert tx.Tensor(np.ones(2, np.float64)).dtype == np.float64
    assert tx.Tensor(np.ones(2, np.float16)).dtype == np.float16
    x = tx.Tensor([1.0, 2.0], requires_grad=True)
    assert (x * 2).dtype == np.float32 and (2.5 / x).dtype == np.float32 and (x ** 2).dtype == np.float32
    assert (x + tx.Tensor([1, 2])).dtype == np.float32      # int promotes to float32, not float64
    with pytest.raises(TypeError, match="floating-point"):
        tx.Tensor([1, 2], requires_grad=True)
    # An explicit dtype takes Python floats as they are (as torch.tensor does): no detour through float32.
    assert tx.Tensor([0.5001], dtype=tx.float64).item() == 0.5001
    assert tx.Tensor(0.1, dtype=tx.float64).item() == 0.1
    assert tx.Tensor([1, 2], dtype=tx.float32).dtype == np.float32
    assert tx.Tensor([True, False], dtype=tx.bool_).tolist() == [True, False]


def test_tensor_basics(device):
    x = tx.Tensor([[1.0, 2.0], [3.0, 4.0]], device=device)
    assert x.shape == (2, 2) and x.ndim == 2 and x.device == device
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]] and x[1, 1].item() == 4.0
    host = x.numpy()
    host[0, 0] = 99
    assert x[0, 0].item() == 1.0, "numpy() returns a copy"
    assert ((x > 2).tolist() == [[False, False], [True, True]]) and (x > 2).dtype == np.bool_
    assert (x == x).requires_grad is False
    d = tx.Tensor([1.0], requires_grad=True, device=device).detach()
    assert not d.requires_grad and d.grad_fn is None
    np.testing.assert_allclose(to_host(2 - x), 2 - to_host(x))
    np.testing.assert_allclose(to_host(1 / x), 1 / to_host(x))


def test_retain_grad_on_intermediate():
    x = tx.Tensor([1.0, 2.0], requires_grad=True)
    h = (x * 3).retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), 2 * 3 * np.array([1.0, 2.0]))


def test_errors_name_the_op_and_shapes():
    a, b = tx.Tensor(np.ones((2, 3))), tx.Tensor(np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"matmul: cannot multiply \(2, 3\) by \(4, 5\)"):
        a @ b
    with pytest.raises(ValueError, match=r"add: .*\(2, 3\), \(4, 5\)"):
        a + b
    with pytest.raises(ValueError, match=r"reshape: .*\(2, 3\)"):
        a.reshape(4, 2)
    with pytest.raises(IndexError, match=r"embedding: index out of range.*\[0, 7\].*5 rows"):
        tx.functional.embedding(tx.Tensor([0, 7]), tx.Tensor(np.ones((5, 2)))).numpy()   # GPU: raised at the read
    with pytest.raises(ValueError, match=r"cross_entropy: target shape \(3,\) does not match logits \(2, 4\)"):
        tx.functional.cross_entropy(tx.Tensor(np.ones((2, 4))), tx.Tensor([0, 1, 2]))


def test_manual_seed_makes_dropout_reproducible():
    x = tx.Tensor(np.ones((4, 8), np.float32))
    tx.manual_seed(3)
    a = tx.functional.dropout(x, 0.5, True).numpy()
    tx.manual_seed(3)
    b = tx.functional.dropout(x, 0.5, True).numpy()
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, 2.0} and 0 < (a == 0).sum() < a.size
    np.testing.assert_array_equal(tx.functional.dropout(x, 0.5, False).numpy(), x.numpy())


def test_embedding_backward_sums_repeated_ids(device):
    w = tx.Tensor(np.zeros((4, 2)), requires_grad=True, device=device)
    idx = tx.Tensor(np.array([[1, 3, 1], [1, 0, 3]]), device=device)
    tx.functional.embedding(idx, w).sum().backward()
    np.testing.assert_allclose(to_host(w.grad), [[1, 1], [3, 3], [0, 0], [2, 2]])


def test_cross_entropy_ignore_index_matches_torch(rng):
    logits = rng.standard_normal((2, 5, 7))
    target = rng.integers(0, 7, (2, 5))
    target[0, 1] = target[1, 4] = 0
    x = tx.Tensor(logits, requires_grad=True)
    loss = tx.functional.cross_entropy(x, tx.Tensor(target), ignore_index=0, label_smoothing=0.1)
    xt = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(xt.reshape(-1, 7), torch.tensor(target).reshape(-1), ignore_index=0,
                                            label_smoothing=0.1)
    loss.backward()
    ref.backward()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    fence = readme.index("```bash")
    main_job, test_cmd = readme[fence + 1], readme[fence + 2]
    assert "pytest" in test_cmd and "pytest" not in main_job
    assert 'grep -m1 -- "pytest" README.md' in (ROOT / ".ci" / "run").read_text()
