"""Higher-order gradients: tx.grad with torch.autograd.grad's semantics, create_graph backward and the
n-th derivative of tanh. (Every primitive's second derivative is in test_primitives.py's table.)"""
import numpy as np
import pytest
from conftest import to_host

import tinygrad_tx as tx


def test_grad_returns_a_tuple_and_leaves_dot_grad_alone(device):
    x = tx.Tensor([1.0, 2.0, 3.0], requires_grad=True, dtype="float64", device=device)
    w = tx.Tensor([0.5, -1.0, 2.0], requires_grad=True, dtype="float64", device=device)
    gx, gw = tx.grad((x * w).sum(), [x, w])
    np.testing.assert_allclose(to_host(gx), [0.5, -1.0, 2.0])
    np.testing.assert_allclose(to_host(gw), [1.0, 2.0, 3.0])
    assert x.grad is None and w.grad is None
    (only,) = tx.grad((x * x).sum(), x)
    np.testing.assert_allclose(to_host(only), [2.0, 4.0, 6.0])


def test_grad_frees_the_graph_unless_retained_and_create_graph_retains_by_default():
    x = tx.Tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * x).sum()
    tx.grad(y, x)
    with pytest.raises(RuntimeError, match="second time"):
        tx.grad(y, x)
    y = (x.exp() * x).sum()
    tx.grad(y, x, create_graph=True)            # retain_graph defaults to create_graph
    tx.grad(y, x)


def test_unused_input_raises_unless_allow_unused():
    x = tx.Tensor([1.0], requires_grad=True)
    z = tx.Tensor([2.0], requires_grad=True)
    y = (x * 3).sum()
    with pytest.raises(RuntimeError, match="input 1 .* not used"):
        tx.grad(y, [x, z], retain_graph=True)
    gx, gz = tx.grad(y, [x, z], allow_unused=True)
    assert gz is None and gx.item() == 3.0


def test_grad_by_an_intermediate_tensor_and_of_several_outputs():
    x = tx.Tensor([1.0, 2.0], requires_grad=True, dtype="float64")
    h = x * x
    y1, y2 = (h * 3).sum(), h.sum()
    gh, gx = tx.grad([y1, y2], [h, x])
    np.testing.assert_allclose(gh.numpy(), [4.0, 4.0])              # d(3h + h)/dh
    np.testing.assert_allclose(gx.numpy(), [8.0, 16.0])             # 4 * 2x


def test_backward_create_graph_gives_a_differentiable_grad():
    x = tx.Tensor([0.3, -1.2], requires_grad=True, dtype="float64")
    (x ** 3).sum().backward(create_graph=True)
    first = x.grad
    assert first.grad_fn is not None                                # 3x^2, with its graph
    np.testing.assert_allclose(first.numpy(), 3 * x.numpy() ** 2)
    (second,) = tx.grad(first.sum(), x)
    np.testing.assert_allclose(second.numpy(), 6 * x.numpy())
    x.grad = None
    (x ** 3).sum().backward()
    assert x.grad.grad_fn is None                                   # the plain path records nothing


def tanh_derivatives(x, n):
    """d^k tanh / dx^k for k = 1..n in closed form: polynomials in t = tanh x, P_{k+1} = (1 - t^2) P_k'."""
    t = np.tanh(x)
    poly = np.polynomial.Polynomial([0.0, 1.0])                    # P_0(t) = t
    out = []
    for _ in range(n):
        poly = np.polynomial.Polynomial([1.0, 0.0, -1.0]) * poly.deriv()
        out.append(poly(t))
    return out


def test_nth_derivative_of_tanh_matches_its_closed_form():
    x = tx.Tensor(np.linspace(-2, 2, 7), requires_grad=True)
    expected = tanh_derivatives(x.numpy(), 6)
    y = x.tanh()
    for k in range(6):
        (y,) = tx.grad(y.sum(), x, create_graph=True)
        np.testing.assert_allclose(y.numpy(), expected[k], rtol=1e-10, atol=1e-10)


def test_first_order_grads_of_two_inputs_never_share_memory():
    a = tx.Tensor([1.0, 2.0], requires_grad=True)
    b = tx.Tensor([3.0, 4.0], requires_grad=True)
    ga, gb = tx.grad((a + b).sum(), [a, b])        # Add hands the same array to both inputs
    ga.data[0] = 100.0
    assert gb.data[0] == 1.0


def test_dropout_is_twice_differentiable_with_its_mask_held_fixed():
    def f(a):
        tx.manual_seed(3)                          # the same mask at every evaluation
        return tx.functional.dropout(a * a * a, p=0.4)
    x = tx.Tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True)
    assert tx.gradcheck(f, [x])
    assert tx.gradgradcheck(f, [x])


def test_a_diamond_and_a_long_chain_differentiate_twice():
    x = tx.Tensor(np.array([0.7]), requires_grad=True)
    y = x
    for _ in range(2000):                          # iterative walks: no recursion limit
        y = y * 1.0001
    z = (y * y + y).sum()                          # y used twice: a diamond
    (g,) = tx.grad(z, x, create_graph=True)
    (h,) = tx.grad(g.sum(), x)
    c = 1.0001 ** 2000
    np.testing.assert_allclose(g.numpy(), [2 * c * c * 0.7 + c], rtol=1e-10)
    np.testing.assert_allclose(h.numpy(), [2 * c * c], rtol=1e-10)
