"""One table for the primitives: each row is checked by finite differences (float64) and against torch,
forward, backward and second derivatives (a create_graph backward differentiated again), with random
upstream gradients, on every backend."""
import warnings

import numpy as np
import pytest
import torch
from conftest import to_host
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_tx as tx
from tinygrad_tx import functional as F


def pos(shape):
    """Marker: an input drawn positive (for log, sqrt, pow bases, division)."""
    return ("pos", shape)


def ints(shape, high):
    """Marker: an integer input in [0, high), no gradient."""
    return ("int", shape, high)


def mask(shape):
    """Marker: a bool input, no gradient."""
    return ("bool", shape)


# name, tinygrad_tx fn, torch fn, inputs
TABLE = [
    # elementwise, with broadcasting shapes
    ("add", lambda a, b: a + b, lambda a, b: a + b, [(2, 3), (3,)]),
    ("add_bcast_both", lambda a, b: a + b, lambda a, b: a + b, [(4, 1, 3), (2, 1)]),
    ("sub", lambda a, b: a - b, lambda a, b: a - b, [(2, 1), (1, 3)]),
    ("rsub_scalar", lambda a: 2 - a, lambda a: 2 - a, [(3,)]),
    ("mul", lambda a, b: a * b, lambda a, b: a * b, [(2, 3, 4), (3, 1)]),
    ("div", lambda a, b: a / b, lambda a, b: a / b, [(2, 3), pos((2, 1))]),
    ("rdiv_scalar", lambda a: 1 / a, lambda a: 1 / a, [pos((2, 3))]),
    ("neg", lambda a: -a, lambda a: -a, [(2, 3)]),
    ("pow_scalar", lambda a: a ** 3, lambda a: a ** 3, [(2, 3)]),
    ("pow_tensor", lambda a, b: a ** b, lambda a, b: a ** b, [pos((2, 3)), (3,)]),
    ("exp", lambda a: a.exp(), torch.exp, [(2, 3)]),
    ("log", lambda a: a.log(), torch.log, [pos((2, 3))]),
    ("sqrt", lambda a: a.sqrt(), torch.sqrt, [pos((2, 3))]),
    ("tanh", lambda a: a.tanh(), torch.tanh, [(2, 3)]),
    ("sigmoid", lambda a: a.sigmoid(), torch.sigmoid, [(2, 3)]),
    ("relu", lambda a: a.relu(), torch.relu, [(3, 4)]),
    ("abs", lambda a: a.abs(), torch.abs, [(3, 4)]),
    ("where", lambda c, a, b: tx.where(c, a, b), torch.where, [mask((2, 3)), (2, 3), (3,)]),
    # reductions
    ("sum_all", lambda a: a.sum(), lambda a: a.sum(), [(2, 3)]),
    ("sum_axis", lambda a: a.sum(axis=1), lambda a: a.sum(dim=1), [(2, 3, 4)]),
    ("sum_axes_keep", lambda a: a.sum(axis=(0, 2), keepdims=True), lambda a: a.sum(dim=(0, 2), keepdim=True),
     [(2, 3, 4)]),
    ("mean_axis", lambda a: a.mean(axis=-1), lambda a: a.mean(dim=-1), [(2, 3, 4)]),
    ("max_axis", lambda a: a.max(axis=1), lambda a: a.amax(dim=1), [(3, 5)]),
    ("max_all", lambda a: a.max(), lambda a: a.amax(), [(3, 5)]),
    ("min_keep", lambda a: a.min(axis=0, keepdims=True), lambda a: a.amin(dim=0, keepdim=True), [(3, 5)]),
    ("var", lambda a: a.var(axis=-1), lambda a: a.var(dim=-1), [(3, 5)]),
    ("var_biased", lambda a: a.var(axis=(0, 2), correction=0), lambda a: a.var(dim=(0, 2), correction=0),
     [(2, 3, 4)]),
    # movement
    ("reshape", lambda a: a.reshape(3, 2, 2), lambda a: a.reshape(3, 2, 2), [(2, 6)]),
    ("permute", lambda a: a.permute(2, 0, 1), lambda a: a.permute(2, 0, 1), [(2, 3, 4)]),
    ("transpose", lambda a: a.transpose(0, 1), lambda a: a.transpose(0, 1), [(2, 3)]),
    ("getitem_basic", lambda a: a[1:, None, ::2], lambda a: a[1:, None, ::2], [(3, 4)]),
    ("getitem_int_ellipsis", lambda a: a[..., 1], lambda a: a[..., 1], [(2, 3, 4)]),
    ("getitem_int_array", lambda a: a[tx.Tensor([0, 2, 0])], lambda a: a[torch.tensor([0, 2, 0])], [(3, 4)]),
    # an int is a basic index in torch: x[1, :, [0, 1]] is x[1][:, [0, 1]], shape (3, 2), not NumPy's (2, 3)
    ("getitem_int_slice_list", lambda a: a[1, :, [0, 1]], lambda a: a[1, :, [0, 1]], [(2, 3, 4)]),
    ("getitem_list_slice_int", lambda a: a[[0, 1, 1], :, 2], lambda a: a[[0, 1, 1], :, 2], [(2, 3, 4)]),
    ("getitem_int_list_list", lambda a: a[[1, 0], 2, [3, 3]], lambda a: a[[1, 0], 2, [3, 3]], [(2, 3, 4)]),
    ("getitem_none_int_list", lambda a: a[None, 0, ..., [2, 0]], lambda a: a[None, 0, ..., [2, 0]], [(2, 3, 4)]),
    ("cat", lambda a, b: tx.cat([a, b], axis=1), lambda a, b: torch.cat([a, b], dim=1), [(2, 3), (2, 2)]),
    ("stack", lambda a, b: tx.stack([a, b], axis=1), lambda a, b: torch.stack([a, b], dim=1), [(2, 3), (2, 3)]),
    # matmul (batch axes broadcast)
    ("matmul", lambda a, b: a @ b, lambda a, b: a @ b, [(3, 4), (4, 5)]),
    ("matmul_batch_bcast", lambda a, b: a @ b, lambda a, b: a @ b, [(2, 1, 4, 5), (3, 5, 6)]),
    ("matmul_shared_weight", lambda a, b: a @ b, lambda a, b: a @ b, [(2, 3, 4), (4, 5)]),
    ("matmul_vec", lambda a, b: a @ b, lambda a, b: a @ b, [(3, 4), (4,)]),
    ("matmul_dot", lambda a, b: a @ b, lambda a, b: a @ b, [(4,), (4,)]),
    # softmax and masking
    ("softmax", lambda a: a.softmax(-1), lambda a: a.softmax(-1), [(2, 3, 5)]),
    ("softmax_axis0", lambda a: a.softmax(0), lambda a: a.softmax(0), [(4, 3)]),
    ("log_softmax", lambda a: a.log_softmax(-1), lambda a: a.log_softmax(-1), [(2, 5)]),
    ("masked_fill", lambda a, m: a.masked_fill(m, 5.0), lambda a, m: a.masked_fill(m, 5.0), [(2, 3, 4), mask((3, 1))]),
    # nn functions
    ("linear", lambda x, w, b: F.linear(x, w, b), torch.nn.functional.linear, [(2, 3, 4), (5, 4), (5,)]),
    ("linear_no_bias", lambda x, w: F.linear(x, w), torch.nn.functional.linear, [(2, 3, 4), (5, 4)]),
    ("linear_vector", lambda x, w, b: F.linear(x, w, b), torch.nn.functional.linear, [(4,), (5, 4), (5,)]),
    ("layer_norm", lambda x, w, b: F.layer_norm(x, w, b),
     lambda x, w, b: torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b), [(2, 3, 6), (6,), (6,)]),
    ("embedding", lambda i, w: F.embedding(i, w), lambda i, w: torch.nn.functional.embedding(i, w),
     [ints((3, 4), 5), (5, 3)]),
    ("cross_entropy", lambda x, t: F.cross_entropy(x, t), lambda x, t: torch.nn.functional.cross_entropy(x, t),
     [(6, 5), ints((6,), 5)]),
    ("cross_entropy_3d_smooth", lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1),
     lambda x, t: torch.nn.functional.cross_entropy(x.reshape(-1, 5), t.reshape(-1), label_smoothing=0.1),
     [(2, 3, 5), ints((2, 3), 5)]),
    ("cross_entropy_sum", lambda x, t: F.cross_entropy(x, t, reduction="sum"),
     lambda x, t: torch.nn.functional.cross_entropy(x, t, reduction="sum"), [(4, 3), ints((4,), 3)]),
    ("cross_entropy_none", lambda x, t: F.cross_entropy(x, t, reduction="none"),
     lambda x, t: torch.nn.functional.cross_entropy(x, t, reduction="none"), [(4, 3), ints((4,), 3)]),
    ("cross_entropy_ignore_smooth", lambda x, t: F.cross_entropy(x, t, ignore_index=0, label_smoothing=0.2),
     lambda x, t: torch.nn.functional.cross_entropy(x, t, ignore_index=0, label_smoothing=0.2),
     [(6, 4), ints((6,), 4)]),
    # the ops a Transformer user reaches for
    ("sin", lambda a: a.sin(), torch.sin, [(2, 3)]),
    ("cos", lambda a: a.cos(), torch.cos, [(2, 3)]),
    ("erf", lambda a: a.erf(), torch.erf, [(2, 3)]),
    ("gelu", lambda a: F.gelu(a), torch.nn.functional.gelu, [(2, 5)]),
    ("gelu_tanh", lambda a: F.gelu(a, approximate="tanh"),
     lambda a: torch.nn.functional.gelu(a, approximate="tanh"), [(2, 5)]),
    ("softplus", lambda a: F.softplus(a * 3), lambda a: torch.nn.functional.softplus(a * 3), [(3, 4)]),
    ("softplus_beta_threshold", lambda a: F.softplus(a * 3, beta=2.0, threshold=1.5),
     lambda a: torch.nn.functional.softplus(a * 3, beta=2.0, threshold=1.5), [(3, 4)]),
    ("logsumexp", lambda a: a.logsumexp(axis=-1), lambda a: a.logsumexp(dim=-1), [(3, 5)]),
    ("logsumexp_keep", lambda a: a.logsumexp(axis=(0, 2), keepdims=True),
     lambda a: a.logsumexp(dim=(0, 2), keepdim=True), [(2, 3, 4)]),
    ("clip", lambda a: a.clip(-0.5, 0.7), lambda a: a.clip(-0.5, 0.7), [(3, 4)]),
    ("clip_min_only", lambda a: a.clip(min=0.1), lambda a: a.clip(min=0.1), [(3, 4)]),
    ("maximum", lambda a, b: a.maximum(b), torch.maximum, [(2, 3), (3,)]),
    ("minimum", lambda a, b: a.minimum(b), torch.minimum, [(2, 1), (1, 3)]),
    ("min_axis", lambda a: a.min(axis=1), lambda a: a.amin(dim=1), [(3, 5)]),
    ("min_all", lambda a: a.min(), lambda a: a.amin(), [(3, 5)]),
    ("tril", lambda a: a.tril(), lambda a: a.tril(), [(2, 4, 4)]),
    ("triu_k", lambda a: a.triu(1), lambda a: a.triu(1), [(3, 5)]),
    ("constructors", lambda a: a * tx.ones_like(a) + tx.full_like(a, 2.0) * a * a - tx.zeros_like(a)
     + tx.arange(4, dtype=a.dtype) * a + tx.full((3, 4), 0.5, dtype=a.dtype) + tx.ones(4, dtype=a.dtype),
     lambda a: a * torch.ones_like(a) + torch.full_like(a, 2.0) * a * a - torch.zeros_like(a)
     + torch.arange(4, dtype=a.dtype) * a + torch.full((3, 4), 0.5, dtype=a.dtype)
     + torch.ones(4, dtype=a.dtype), [(3, 4)]),
    ("arange_int", lambda a: a * tx.arange(1, 7, 2), lambda a: a * torch.arange(1, 7, 2), [(2, 3)]),
    ("split", lambda a: tx.cat([p * (i + 1) for i, p in enumerate(a.split(2, axis=1))], axis=1),
     lambda a: torch.cat([p * (i + 1) for i, p in enumerate(a.split(2, dim=1))], dim=1), [(2, 5)]),
    ("split_sizes", lambda a: a.split([1, 3], axis=0)[1].exp(), lambda a: a.split([1, 3], dim=0)[1].exp(),
     [(4, 2)]),
    ("chunk", lambda a: a.chunk(3, axis=-1)[2].sin(), lambda a: a.chunk(3, dim=-1)[2].sin(), [(2, 7)]),
    ("gather", lambda a: a.gather(1, tx.Tensor([[0, 0, 2], [1, 2, 1]])),
     lambda a: a.gather(1, torch.tensor([[0, 0, 2], [1, 2, 1]])), [(2, 3)]),
    ("gather_axis0_argmin", lambda a: a.gather(0, a.argmin(axis=0, keepdims=True)) * a[:1],
     lambda a: a.gather(0, a.argmin(dim=0, keepdim=True)) * a[:1], [(4, 3)]),
    ("one_hot", lambda a, t: a * F.one_hot(t, 5), lambda a, t: a * torch.nn.functional.one_hot(t, 5),
     [(4, 5), ints((4,), 5)]),
    ("nll_loss", lambda a, t: F.nll_loss(a.log_softmax(-1), t),
     lambda a, t: torch.nn.functional.nll_loss(a.log_softmax(-1), t), [(5, 4), ints((5,), 4)]),
    ("nll_loss_ignore_none", lambda a, t: F.nll_loss(a, t, ignore_index=1, reduction="none"),
     lambda a, t: torch.nn.functional.nll_loss(a, t, ignore_index=1, reduction="none"), [(5, 3), ints((5,), 3)]),
    ("prod_axis", lambda a: a.prod(axis=1), lambda a: a.prod(dim=1), [(3, 5)]),
    ("prod_all_keep", lambda a: a.prod(keepdims=True), lambda a: a.prod().reshape(1, 1), [(2, 3)]),
    ("prod_with_a_zero", lambda a: (a * tx.Tensor([1.0, 0.0, 1.0, 1.0], dtype=a.dtype)).prod(axis=-1),
     lambda a: (a * torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=a.dtype)).prod(dim=-1), [(2, 4)]),
    ("cumsum", lambda a: a.cumsum(axis=1), lambda a: a.cumsum(dim=1), [(2, 4, 3)]),
]


def make_inputs(specs, rng, device):
    """Host arrays and their tinygrad_tx / torch tensors (float64) for a row's input specs."""
    arrays = []
    for spec in specs:
        if isinstance(spec, tuple) and spec and spec[0] == "pos":
            arrays.append(rng.uniform(0.5, 2.0, spec[1]))
        elif isinstance(spec, tuple) and spec and spec[0] == "int":
            arrays.append(rng.integers(0, spec[2], spec[1]))
        elif isinstance(spec, tuple) and spec and spec[0] == "bool":
            arrays.append(rng.random(spec[1]) < 0.4)
        else:
            arrays.append(rng.standard_normal(spec))
    txs = [tx.Tensor(a, requires_grad=a.dtype == np.float64, device=device) for a in arrays]
    ths = [torch.tensor(a, requires_grad=a.dtype == np.float64) for a in arrays]
    return arrays, txs, ths


@pytest.mark.parametrize("name,fn,torch_fn,specs", TABLE, ids=[row[0] for row in TABLE])
def test_gradcheck(name, fn, torch_fn, specs, device, rng):
    _, txs, _ = make_inputs(specs, rng, device)
    assert tx.gradcheck(fn, txs)


@pytest.mark.parametrize("name,fn,torch_fn,specs", TABLE, ids=[row[0] for row in TABLE])
def test_matches_torch(name, fn, torch_fn, specs, device, rng):
    _, txs, ths = make_inputs(specs, rng, device)
    out, ref = fn(*txs), torch_fn(*ths)
    np.testing.assert_allclose(to_host(out), ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    upstream = rng.standard_normal(ref.shape)
    out.backward(tx.Tensor(upstream, device=device))
    ref.backward(torch.tensor(upstream))
    for t, r in zip(txs, ths):
        if r.requires_grad:
            assert t.grad.shape == t.shape
            np.testing.assert_allclose(to_host(t.grad), r.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,fn,torch_fn,specs", TABLE, ids=[row[0] for row in TABLE])
def test_float32_in_float32_out(name, fn, torch_fn, specs, device, rng):
    arrays, _, _ = make_inputs(specs, rng, device)
    txs = [tx.Tensor(a.astype(np.float32) if a.dtype == np.float64 else a, requires_grad=a.dtype == np.float64,
                     device=device) for a in arrays]
    out = fn(*txs)
    assert out.dtype == np.float32
    out.backward(tx.Tensor(np.ones(out.shape, np.float32), device=device))
    for t in txs:
        if t.requires_grad:
            assert t.grad.dtype == np.float32, f"{name}: gradient upcast to {t.grad.dtype}"


@pytest.mark.parametrize("name,fn,torch_fn,specs", TABLE, ids=[row[0] for row in TABLE])
def test_gradgradcheck(name, fn, torch_fn, specs, device, rng):
    _, txs, _ = make_inputs(specs, rng, device)
    assert tx.gradgradcheck(fn, txs)


def second_derivatives(grad_fn, out, inputs, upstream, weights, make):
    """d/d(inputs, upstream) of sum_i <d<out, upstream>/d input_i, w_i>, with either framework's grad."""
    firsts = grad_fn(out, inputs, make(upstream), create_graph=True, allow_unused=True)
    total = sum((g * make(w)).sum() for g, w in zip(firsts, weights) if g is not None)
    return firsts, grad_fn(total, [*inputs, upstream], allow_unused=True)


@pytest.mark.parametrize("name,fn,torch_fn,specs", TABLE, ids=[row[0] for row in TABLE])
def test_second_derivative_matches_torch(name, fn, torch_fn, specs, device, rng):
    """torch.autograd.grad(..., create_graph=True), then a second grad, with random upstream gradients."""
    _, txs, ths = make_inputs(specs, rng, device)
    t_in = [t for t in txs if t.requires_grad]
    r_in = [r for r in ths if r.requires_grad]
    out, ref = fn(*txs), torch_fn(*ths)
    upstream = rng.standard_normal(ref.shape)
    weights = [rng.standard_normal(r.shape) for r in r_in]
    t_up = tx.Tensor(upstream, requires_grad=True, device=device)
    r_up = torch.tensor(upstream, requires_grad=True)
    t_first, t_second = second_derivatives(tx.grad, out, t_in, t_up, weights,
                                           lambda a: a if isinstance(a, tx.Tensor) else tx.Tensor(a, device=device))
    r_first, r_second = second_derivatives(torch.autograd.grad, ref, r_in, r_up, weights,
                                           lambda a: a if isinstance(a, torch.Tensor) else torch.tensor(a))
    for t, r in zip(t_first, r_first):
        np.testing.assert_allclose(to_host(t), r.detach().numpy(), rtol=1e-9, atol=1e-12)
    for t, r, x in zip(t_second, r_second, [*r_in, r_up]):
        expected = np.zeros(x.shape) if r is None else r.numpy(force=True)   # None: torch found no dependence
        got = np.zeros(x.shape) if t is None else to_host(t)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- torch's semantics at the edges
@pytest.mark.parametrize("values, dtype", [([0, -2**31, 7], "int32"), ([5, 0, 1, 2, 3, 4], "uint8"),
                                           ([True, False, True], "bool"), ([3, -9], "int64")])
def test_min_and_max_of_integers_and_bools_are_exact(values, dtype):
    x = np.array(values, dtype=dtype)
    t = torch.tensor(x)
    assert tx.Tensor(x).min().numpy() == t.min().numpy() and tx.Tensor(x).max().numpy() == t.max().numpy()
    assert tx.Tensor(x).min().dtype == x.dtype
    y = x[::-1].copy()
    assert np.array_equal(tx.Tensor(x).minimum(tx.Tensor(y)).numpy(), torch.minimum(t, torch.tensor(y)).numpy())
    assert np.array_equal(tx.Tensor(x).maximum(tx.Tensor(y)).numpy(), torch.maximum(t, torch.tensor(y)).numpy())


def test_cross_entropy_with_every_target_ignored_has_zero_gradients():
    logits = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    x = tx.Tensor(logits, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # the nan is torch's answer, not an accident
        loss = F.cross_entropy(x, tx.Tensor(np.array([-100, -100, -100])))
    loss.backward()
    xt = torch.tensor(logits, requires_grad=True)
    torch.nn.functional.cross_entropy(xt, torch.tensor([-100, -100, -100])).backward()
    assert np.isnan(loss.item()) and np.array_equal(x.grad.numpy(), xt.grad.numpy())     # nan loss, 0 grads
    assert np.all(x.grad.numpy() == 0)


@pytest.mark.parametrize("op", [
    lambda x: x.softmax(), lambda x: x.log_softmax(), lambda x: x.log(), lambda x: x.exp(), lambda x: x.sqrt(),
    lambda x: x.tanh(), lambda x: x.sigmoid(), lambda x: x.sin(), lambda x: x.mean(), lambda x: x / 2,
    lambda x: F.layer_norm(x, None, None), lambda x: tx.nn.Linear(3, 2)(x), lambda x: x @ tx.Tensor(np.ones((3, 1), np.float32)),
    lambda x: F.dropout(x, 0.5), lambda x: F.cross_entropy(x, tx.Tensor([0, 1])),
], ids=["softmax", "log_softmax", "log", "exp", "sqrt", "tanh", "sigmoid", "sin", "mean", "div", "layer_norm",
        "Linear", "matmul", "dropout", "cross_entropy"])
@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_integer_tensors_in_float_ops_become_float32(op, dtype):
    x = tx.Tensor(np.array([[1, 2, 3], [0, 1, 1]], dtype=dtype))
    assert op(x).dtype == np.float32


def test_var_defaults_to_torch_correction_and_goes_to_inf_or_nan_like_torch():
    data = [1.0, 2.0, 3.0, 4.0]
    assert tx.Tensor(data).var().item() == pytest.approx(torch.tensor(data).var().item())     # 1.667, not 1.25
    assert tx.Tensor(data).var(correction=0).item() == pytest.approx(1.25)
    for values, correction in [([1.0, 2.0], 2), ([1.0, 2.0], 3), ([5.0, 5.0], 2), ([5.0], 1)]:
        ours, theirs = tx.Tensor(values).var(correction=correction).item(), torch.tensor(values).var(
            correction=correction).item()
        assert (np.isnan(ours) and np.isnan(theirs)) or ours == theirs, (values, correction, ours, theirs)


def test_empty_mean_and_zero_d_axis_zero_follow_torch():
    assert np.isnan(tx.Tensor(np.zeros((0,), np.float32)).mean().item())
    assert tx.Tensor(np.zeros((0, 3), np.float32)).mean(axis=0).shape == (3,)
    scalar = tx.Tensor(3.0, requires_grad=True)
    assert scalar.sum(0).item() == 3.0 and scalar.sum(-1).item() == 3.0 and scalar.squeeze(0).item() == 3.0
    assert scalar.max(0).item() == 3.0 and scalar.mean(0).item() == 3.0
    scalar.sum(0).backward()
    assert scalar.grad.item() == 1.0
    with pytest.raises(ValueError, match="out of range"):
        scalar.sum(1)


def test_dropout_works_in_float16():
    x = tx.Tensor(np.ones((64, 64), np.float16))
    y = F.dropout(x, 0.25)
    assert y.dtype == np.float16
    kept = y.numpy() != 0
    assert 0.6 < kept.mean() < 0.9 and np.allclose(y.numpy()[kept], 1 / 0.75, rtol=1e-3)


@st.composite
def _mixed_index(draw):
    """A shape of 3 axes and an index mixing ints, slices and integer lists, torch-style."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=3, max_size=3)))
    parts = []
    for n in shape:
        kind = draw(st.sampled_from(["int", "slice", "list"]))
        if kind == "int":
            parts.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            parts.append(slice(draw(st.integers(0, n - 1)), None))
        else:
            parts.append(draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2)))
    return shape, tuple(parts)


@settings(max_examples=60, deadline=None)
@given(case=_mixed_index())
def test_mixed_indexing_matches_torch_forward_and_backward(case):
    shape, index = case
    data = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    x = tx.Tensor(data, requires_grad=True)
    xt = torch.tensor(data, requires_grad=True)
    y, yt = x[index], xt[index]
    assert y.shape == tuple(yt.shape), (shape, index)
    np.testing.assert_array_equal(y.numpy(), yt.detach().numpy())
    weights = np.arange(1, y.numpy().size + 1, dtype=np.float64).reshape(y.shape)
    (y * tx.Tensor(weights)).sum().backward()
    (yt * torch.tensor(weights)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), xt.grad.numpy())
