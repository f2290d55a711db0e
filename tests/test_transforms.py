"""tx.vjp, tx.jvp and tx.hvp against torch.func and torch.autograd.functional.hvp, in float64, to 1e-8:
on a small MLP, and on a small encoder-decoder Transformer (all of its parameters at once); plus the
double-grad Hessian-vector product of the Transformer's label-smoothed, padded cross-entropy."""
import math

import numpy as np
import pytest
import torch
from conftest import to_host
from test_models import FF, D, H, torch_decoder_layer, torch_encoder_layer
from tinygrad_tx.models.transformer import Transformer, TransformerConfig, sinusoidal_encoding

import tinygrad_tx as tx
from tinygrad_tx import functional as F

TOL = {"rtol": 1e-8, "atol": 1e-8}


@pytest.fixture(autouse=True)
def math_attention():
    """torch's fused CPU attention has no forward-mode or second-order rules; its plain one has both."""
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        yield


def assert_close(ours, theirs):
    ours = ours if isinstance(ours, (tuple, list)) else (ours,)
    theirs = theirs if isinstance(theirs, (tuple, list)) else (theirs,)
    assert len(ours) == len(theirs)
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(to_host(o), t.detach().numpy(), **TOL)


# ---------------------------------------------------------------------------- an MLP
def mlp(lib, x):
    """A function of the MLP's four parameters, written once for both libraries (tanh, softplus-free)."""
    def f(w1, b1, w2, b2):
        h = (x @ w1 + b1).tanh()
        return (h @ w2 + b2).sigmoid() * 2.0
    return f


@pytest.fixture
def mlp_point(rng, device):
    shapes = [(3, 5), (5,), (5, 2), (2,)]
    arrays = [rng.standard_normal(s) for s in shapes]
    x = rng.standard_normal((4, 3))
    ours = [tx.Tensor(a, device=device) for a in arrays]
    theirs = [torch.tensor(a) for a in arrays]
    return (ours, tx.Tensor(x, device=device)), (theirs, torch.tensor(x)), shapes


def directions(rng, shapes, device):
    arrays = [rng.standard_normal(s) for s in shapes]
    return [tx.Tensor(a, device=device) for a in arrays], [torch.tensor(a) for a in arrays]


def test_mlp_jvp_vjp_hvp_match_torch_func(mlp_point, rng, device):
    (ours, x), (theirs, tx_x), shapes = mlp_point
    f, g = mlp(tx, x), mlp(torch, tx_x)
    t_ours, t_theirs = directions(rng, shapes, device)

    out, jvp_out = tx.jvp(f, tuple(ours), tuple(t_ours))
    ref_out, ref_jvp = torch.func.jvp(g, tuple(theirs), tuple(t_theirs))
    assert_close(out, ref_out)
    assert_close(jvp_out, ref_jvp)

    out, vjp_fn = tx.vjp(f, *ours)
    ref_out, ref_vjp_fn = torch.func.vjp(g, *theirs)
    cot = rng.standard_normal(tuple(ref_out.shape))
    assert_close(vjp_fn(tx.Tensor(cot, device=device)), ref_vjp_fn(torch.tensor(cot)))
    cot = rng.standard_normal(tuple(ref_out.shape))                  # vjp_fn may be called again
    assert_close(vjp_fn(tx.Tensor(cot, device=device)), ref_vjp_fn(torch.tensor(cot)))

    out, hv = tx.hvp(lambda *ps: (f(*ps) ** 2).sum(), tuple(ours), tuple(t_ours))
    ref_out, ref_hv = torch.autograd.functional.hvp(lambda *ps: (g(*ps) ** 2).sum(), tuple(theirs), tuple(t_theirs))
    assert_close(out, ref_out)
    assert_close(hv, ref_hv)


def test_jvp_is_the_transpose_of_vjp(mlp_point, rng, device):
    """<J t, u> = <t, J^T u> for random t and u: forward and reverse mode agree with each other."""
    (ours, x), _, shapes = mlp_point
    f = mlp(tx, x)
    t, _ = directions(rng, shapes, device)
    out, jt = tx.jvp(f, tuple(ours), tuple(t))
    u = tx.Tensor(rng.standard_normal(out.shape), device=device)
    _, vjp_fn = tx.vjp(f, *ours)
    left = float((jt * u).sum().item())
    right = sum(float((a * b).sum().item()) for a, b in zip(t, vjp_fn(u)))
    assert math.isclose(left, right, rel_tol=1e-10)


def test_transforms_leave_the_callers_graph_and_grads_alone(device):
    w = tx.Tensor([1.0, 2.0], dtype="float64", requires_grad=True, device=device)
    out, hv = tx.hvp(lambda a: (a ** 3).sum(), w, tx.Tensor([1.0, 0.0], dtype="float64", device=device))
    np.testing.assert_allclose(to_host(hv), [6.0, 0.0])
    assert w.grad is None and out.grad_fn is None and hv.grad_fn is None
    _, h2 = tx.hvp(lambda a: (a ** 3).sum(), w, tx.Tensor([1.0, 1.0], dtype="float64", device=device),
                   create_graph=True)
    assert h2.grad_fn is not None


def test_transforms_name_the_bad_argument():
    a = tx.Tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="tangent 0 has shape"):
        tx.jvp(lambda x: x * 2, (a,), (tx.Tensor([1.0]),))
    with pytest.raises(ValueError, match="one-element"):
        tx.hvp(lambda x: x * 2, a, a)
    with pytest.raises(TypeError, match="primals must be"):
        tx.jvp(lambda x: x, ([1.0],), (a,))


# ---------------------------------------------------------------------------- a small Transformer
SRC_V, TGT_V, S, T = 7, 6, 5, 4


class TorchSeq2Seq(torch.nn.Module):
    """torch's encoder-decoder laid out with our parameter tree (embeddings, 1 + 1 layers, generator),
    scaled embeddings plus the same sinusoidal positions, post-LN, no dropout."""

    def __init__(self):
        super().__init__()
        self.src_embed = torch.nn.Embedding(SRC_V, D, dtype=torch.float64)
        self.tgt_embed = torch.nn.Embedding(TGT_V, D, dtype=torch.float64)
        self.encoder = torch.nn.TransformerEncoder(torch_encoder_layer(False), 1, enable_nested_tensor=False)
        self.decoder = torch.nn.TransformerDecoder(torch_decoder_layer(False), 1)
        self.generator = torch.nn.Linear(D, TGT_V, dtype=torch.float64)
        self.pe = torch.tensor(sinusoidal_encoding(16, D).numpy(), dtype=torch.float64)

    def forward(self, src, tgt):
        x = self.src_embed(src) * math.sqrt(D) + self.pe[:src.shape[1]]
        memory = self.encoder(x, src_key_padding_mask=src == 0)
        y = self.tgt_embed(tgt) * math.sqrt(D) + self.pe[:tgt.shape[1]]
        causal = ~torch.tril(torch.ones(tgt.shape[1], tgt.shape[1], dtype=torch.bool))
        h = self.decoder(y, memory, tgt_mask=causal, tgt_key_padding_mask=tgt == 0,
                         memory_key_padding_mask=src == 0)
        return self.generator(h)


def torch_state(names, tensors):
    """Our parameter names and values -> torch's state dict (q, k, v projections packed into in_proj)."""
    state, packs = {}, {}
    for name, t in zip(names, tensors):
        name = name.replace("cross_attn.", "multihead_attn.")
        prefix, proj, kind = name.rsplit(".", 2) if name.count(".") >= 2 else ("", "", name)
        if proj in ("q_proj", "k_proj", "v_proj"):
            packs.setdefault(f"{prefix}.in_proj_{kind}", {})[proj] = t
        else:
            state[name] = t
    for key, parts in packs.items():
        state[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return state


@pytest.fixture
def seq2seq(rng, device):
    """Our Transformer and torch's, with the same random float64 weights, and a padded batch."""
    ours = Transformer(TransformerConfig(src_vocab=SRC_V, tgt_vocab=TGT_V, d_model=D, n_heads=H, d_ff=FF,
                                         n_layers=1, dropout=0.0, max_len=16))
    ours.to(device=device, dtype="float64")
    names, params = zip(*ours.named_parameters())
    for p in params:
        p.data = tx.Tensor(rng.uniform(-0.5, 0.5, p.shape), device=device).data
    theirs = TorchSeq2Seq()
    assert set(torch_state(names, [torch.tensor(to_host(p)) for p in params])) == set(dict(theirs.named_parameters()))
    src = np.array([[3, 4, 5, 6, 2], [5, 3, 4, 0, 0]])                  # the second source has 2 pads
    tgt_in = np.array([[1, 3, 4, 5], [1, 4, 3, 0]])                     # the second target has 1 pad
    tgt_out = np.array([[3, 4, 5, 2], [4, 3, 2, 0]])
    return ours, theirs, names, params, (src, tgt_in, tgt_out)


def ours_fn(model, names, batch, device, what):
    """A function of our parameter tensors: the model's logits, or its loss (CE, smoothing, padding)."""
    src, tgt_in, tgt_out = (tx.Tensor(b, device=device) for b in batch)
    slots = []
    for name in names:
        path, _, leaf = name.rpartition(".")
        module = model
        for part in path.split(".") if path else []:
            module = getattr(module, part)
        slots.append((module, leaf))

    def f(*ps):
        saved = [getattr(m, leaf) for m, leaf in slots]
        for (m, leaf), p in zip(slots, ps):
            object.__setattr__(m, leaf, p)          # swap in the transform's leaves for this call
        try:
            logits = model(src, tgt_in)
        finally:
            for (m, leaf), p in zip(slots, saved):
                object.__setattr__(m, leaf, p)
        if what == "logits":
            return logits
        return F.cross_entropy(logits, tgt_out, ignore_index=0, label_smoothing=0.1)
    return f


def theirs_fn(model, names, batch, what):
    src, tgt_in, tgt_out = (torch.tensor(b) for b in batch)

    def f(*ps):
        logits = torch.func.functional_call(model, torch_state(names, ps), (src, tgt_in))
        if what == "logits":
            return logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, TGT_V), tgt_out.reshape(-1), ignore_index=0,
                                                 label_smoothing=0.1)
    return f


def test_transformer_jvp_vjp_hvp_match_torch_func(seq2seq, rng, device):
    ours, theirs, names, params, batch = seq2seq
    t_params = tuple(torch.tensor(to_host(p)) for p in params)
    shapes = [p.shape for p in params]
    v_ours, v_theirs = directions(rng, shapes, device)

    f, g = ours_fn(ours, names, batch, device, "logits"), theirs_fn(theirs, names, batch, "logits")
    out, jvp_out = tx.jvp(f, tuple(params), tuple(v_ours))
    ref_out, ref_jvp = torch.func.jvp(g, t_params, tuple(v_theirs))
    assert_close(out, ref_out)
    assert_close(jvp_out, ref_jvp)

    _, vjp_fn = tx.vjp(f, *params)
    _, ref_vjp_fn = torch.func.vjp(g, *t_params)
    cot = rng.standard_normal(tuple(ref_out.shape))
    assert_close(vjp_fn(tx.Tensor(cot, device=device)), ref_vjp_fn(torch.tensor(cot)))

    f, g = ours_fn(ours, names, batch, device, "loss"), theirs_fn(theirs, names, batch, "loss")
    out, hv = tx.hvp(f, tuple(params), tuple(v_ours))
    ref_out, ref_hv = torch.autograd.functional.hvp(g, t_params, tuple(v_theirs))
    assert_close(out, ref_out)
    assert_close(hv, ref_hv)
    assert max(float(np.abs(r.numpy()).max()) for r in ref_hv) > 1e-3          # not a vacuous check


def test_transformer_double_grad_hvp_matches_torch(seq2seq, rng, device):
    """The Hessian-vector product by two tx.grad calls (the first with create_graph=True), as users of
    torch.autograd.grad write it, through the whole encoder-decoder with its padded, smoothed loss."""
    ours, theirs, names, params, batch = seq2seq
    for p in params:
        p.requires_grad_()
    v_ours, v_theirs = directions(rng, [p.shape for p in params], device)
    loss = ours_fn(ours, names, batch, device, "loss")(*params)
    grads = tx.grad(loss, list(params), create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, v_ours))
    hv = tx.grad(dot, list(params))

    t_params = [torch.tensor(to_host(p), requires_grad=True) for p in params]
    ref_loss = theirs_fn(theirs, names, batch, "loss")(*t_params)
    ref_grads = torch.autograd.grad(ref_loss, t_params, create_graph=True)
    ref_hv = torch.autograd.grad(sum((g * v).sum() for g, v in zip(ref_grads, v_theirs)), t_params)
    assert_close(grads, ref_grads)
    assert_close(hv, ref_hv)
