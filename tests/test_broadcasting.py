"""Property tests: hypothesis draws broadcastable shapes for every binary op."""
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import tinygrad_tx as tx

OPS = {
    "add": (lambda a, b: a + b, torch.add),
    "sub": (lambda a, b: a - b, torch.sub),
    "mul": (lambda a, b: a * b, torch.mul),
    "div": (lambda a, b: a / b, torch.div),
    "pow": (lambda a, b: a ** b, torch.pow),
    "where": (lambda a, b: tx.where(a > 1.2, a, b), lambda a, b: torch.where(a > 1.2, a, b)),
}


@settings(max_examples=25, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4),
       op=st.sampled_from(sorted(OPS)), seed=st.integers(0, 2 ** 16))
def test_binary_ops_broadcast_like_torch(shapes, op, seed):
    rng = np.random.default_rng(seed)
    sa, sb = shapes.input_shapes
    a, b = rng.uniform(0.5, 2.0, sa), rng.uniform(0.5, 2.0, sb)     # positive: valid for div and pow
    fn, ref_fn = OPS[op]
    ta, tb = tx.Tensor(a, requires_grad=True), tx.Tensor(b, requires_grad=True)
    ra, rb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    out, ref = fn(ta, tb), ref_fn(ra, rb)
    assert out.shape == tuple(ref.shape) == shapes.result_shape
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-12)
    g = rng.standard_normal(ref.shape)
    out.backward(tx.Tensor(g))
    ref.backward(torch.tensor(g))
    assert ta.grad.shape == sa and tb.grad.shape == sb
    np.testing.assert_allclose(ta.grad.numpy(), ra.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(tb.grad.numpy(), rb.grad.numpy(), rtol=1e-10, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(batch=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3),
       n=st.integers(1, 4), k=st.integers(1, 4), m=st.integers(1, 4), seed=st.integers(0, 2 ** 16))
def test_matmul_broadcasts_batch_axes(batch, n, k, m, seed):
    rng = np.random.default_rng(seed)
    sa, sb = batch.input_shapes[0] + (n, k), batch.input_shapes[1] + (k, m)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    ta, tb = tx.Tensor(a, requires_grad=True), tx.Tensor(b, requires_grad=True)
    ra, rb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    out, ref = ta @ tb, ra @ rb
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = rng.standard_normal(ref.shape)
    out.backward(tx.Tensor(g))
    ref.backward(torch.tensor(g))
    np.testing.assert_allclose(ta.grad.numpy(), ra.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(tb.grad.numpy(), rb.grad.numpy(), rtol=1e-10, atol=1e-12)
