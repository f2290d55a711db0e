"""models/attention.py and models/transformer.py against torch.nn's Transformer, in float64.

Each test copies torch's weights into our module (one helper maps torch's parameter names onto
ours), runs both on the same inputs and masks, and checks the outputs and the gradients of every
parameter and input to 1e-8. torch masks use True = "may NOT attend"; ours use True = "may attend".
"""
import numpy as np
import pytest
import torch
from conftest import to_host

import tinygrad_tx as tx
from tinygrad_tx.models.attention import MultiHeadAttention, scaled_dot_product_attention
from tinygrad_tx.models.transformer import (
    Decoder,
    DecoderLayer,
    Encoder,
    EncoderLayer,
    Transformer,
    TransformerConfig,
    causal_mask,
    padding_mask,
    sinusoidal_encoding,
)

TOL = {"rtol": 1e-8, "atol": 1e-8}
B, S, T, D, H, FF = 2, 5, 4, 8, 2, 16          # batch, source len, target len, d_model, n_heads, d_ff


# ---------------------------------------------------------------------------- torch <-> ours
def ours_from_torch(torch_state):
    """torch parameter names -> ours: the packed in_proj of MultiheadAttention becomes q/k/v_proj,
    and the decoder's `multihead_attn` is our `cross_attn`."""
    out = {}
    for name, value in torch_state.items():
        value = value.detach().numpy() if isinstance(value, torch.Tensor) else value
        name = name.replace("multihead_attn.", "cross_attn.")
        prefix, _, leaf = name.rpartition(".")
        prefix = prefix + "." if prefix else ""
        if leaf in ("in_proj_weight", "in_proj_bias"):
            q, k, v = np.split(value, 3, axis=0)
            kind = "weight" if leaf == "in_proj_weight" else "bias"
            out.update({f"{prefix}q_proj.{kind}": q, f"{prefix}k_proj.{kind}": k, f"{prefix}v_proj.{kind}": v})
        else:
            out[name] = value
    return out


def randomize(torch_module, seed):
    """Distinct random values in every torch parameter (torch's stacks deep-copy one layer, and
    LayerNorm starts at ones/zeros, which would hide a swapped weight)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in torch_module.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) - 0.5)
    return torch_module


def copy_into_ours(ours, theirs, device):
    ours.to(device=device, dtype="float64")
    ours.load_state_dict(ours_from_torch(theirs.state_dict()))
    return ours


def leaf_pair(array, device):
    """The same float64 values as a torch leaf and as our leaf, both requiring grad."""
    return (torch.tensor(array, dtype=torch.float64, requires_grad=True),
            tx.Tensor(array, dtype="float64", device=device, requires_grad=True))


def backprop_both(torch_out, our_out, seed=7):
    """Backward a weighted sum (random weights, so every output element matters) through both."""
    w = np.random.default_rng(seed).standard_normal(tuple(torch_out.shape))
    (torch_out * torch.tensor(w)).sum().backward()
    (our_out * tx.Tensor(w, dtype="float64", device=our_out.device)).sum().backward()


def assert_same_grads(ours, theirs, inputs):
    torch_grads = ours_from_torch({n: p.grad for n, p in theirs.named_parameters()})
    our_params = dict(ours.named_parameters())
    assert set(torch_grads) == set(our_params)
    for name, p in our_params.items():
        np.testing.assert_allclose(to_host(p.grad), torch_grads[name], err_msg=name, **TOL)
    for torch_x, our_x in inputs:
        np.testing.assert_allclose(to_host(our_x.grad), torch_x.grad.numpy(), **TOL)


def lengths_mask(lengths, T):
    """(B, T) bool, True at real positions."""
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


def ours_padding(real, device):
    """Our (B, 1, 1, T) padding mask from a (B, T) bool array of real positions."""
    return tx.Tensor(real, device=device).reshape(real.shape[0], 1, 1, real.shape[1])


# ---------------------------------------------------------------------------- attention
def test_scaled_dot_product_attention_matches_torch(device, rng):
    q, k, v = (rng.standard_normal(s) for s in [(B, H, T, 3), (B, H, S, 3), (B, H, S, 4)])
    allowed = rng.random((B, 1, T, S)) < 0.7
    allowed[..., 0] = True                                    # every query may attend somewhere
    (tq, oq), (tk, ok), (tv, ov) = leaf_pair(q, device), leaf_pair(k, device), leaf_pair(v, device)
    expected = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.tensor(allowed))
    out, weights = scaled_dot_product_attention(oq, ok, ov, tx.Tensor(allowed, device=device))
    np.testing.assert_allclose(to_host(out), expected.detach().numpy(), **TOL)
    assert weights.shape == (B, H, T, S)
    backprop_both(expected, out)
    for t_x, o_x in [(tq, oq), (tk, ok), (tv, ov)]:
        np.testing.assert_allclose(to_host(o_x.grad), t_x.grad.numpy(), **TOL)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_multi_head_attention_matches_torch(device, rng, cross, bias):
    theirs = randomize(torch.nn.MultiheadAttention(D, H, bias=bias, batch_first=True, dtype=torch.float64), seed=1)
    ours = copy_into_ours(MultiHeadAttention(D, H, bias=bias), theirs, device)
    Tk = S if cross else T
    tq, oq = leaf_pair(rng.standard_normal((B, T, D)), device)
    tkv, okv = leaf_pair(rng.standard_normal((B, Tk, D)), device) if cross else (tq, oq)
    real = lengths_mask([Tk, Tk - 2], Tk)
    mask = ours_padding(real, device)
    attn_mask = None
    if not cross:                                             # self-attention: padding and causal
        attn_mask = ~np.tril(np.ones((T, T), dtype=bool))
        mask = mask & causal_mask(T, device)
    expected, expected_weights = theirs(tq, tkv, tkv, key_padding_mask=torch.tensor(~real),
                                        attn_mask=None if attn_mask is None else torch.tensor(attn_mask),
                                        average_attn_weights=False)
    out = ours(oq, okv, okv, mask)
    np.testing.assert_allclose(to_host(out), expected.detach().numpy(), **TOL)
    np.testing.assert_allclose(to_host(ours.attn), expected_weights.detach().numpy(), **TOL)
    backprop_both(expected, out)
    assert_same_grads(ours, theirs, [(tq, oq)] + ([(tkv, okv)] if cross else []))


def test_attention_rows_sum_to_one_and_padded_keys_get_zero_weight(device, rng):
    tx.manual_seed(0)
    mha = MultiHeadAttention(D, H).to(device=device)
    x = tx.Tensor(rng.standard_normal((B, S, D)), dtype="float32", device=device)
    real = lengths_mask([S, 2], S)
    mha(x, x, x, ours_padding(real, device))
    weights = to_host(mha.attn)                               # (B, H, S, S)
    assert weights.shape == (B, H, S, S)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-6)
    assert np.all(weights[1, :, :, 2:] == 0.0)
    assert np.all(weights[1, :, :, :2] > 0.0)


def test_fully_masked_query_row_gives_no_nan(device, rng):
    q, k, v = (rng.standard_normal((1, 1, 3, 4)) for _ in range(3))
    allowed = np.ones((1, 1, 3, 3), dtype=bool)
    allowed[0, 0, 1] = False                                  # query 1 may attend nowhere
    oq, ok, ov = (tx.Tensor(a, device=device, requires_grad=True) for a in (q, k, v))
    out, weights = scaled_dot_product_attention(oq, ok, ov, tx.Tensor(allowed, device=device))
    out.sum().backward()
    for a in (out, weights, oq.grad, ok.grad, ov.grad):
        assert np.all(np.isfinite(to_host(a)))
    np.testing.assert_allclose(to_host(weights)[0, 0].sum(axis=-1), 1.0, rtol=1e-6)
    # A whole batch row of padding (every key padded) through the full model: still finite.
    tx.manual_seed(0)
    model = tiny_transformer().to(device=device)
    src = tx.Tensor([[3, 4, 5], [0, 0, 0]], device=device)
    logits = model(src, tx.Tensor([[1, 3], [1, 0]], device=device))
    assert np.all(np.isfinite(to_host(logits)))


# ---------------------------------------------------------------------------- layers and stacks vs torch
def torch_encoder_layer(norm_first):
    return torch.nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, activation="relu", batch_first=True,
                                            norm_first=norm_first, dtype=torch.float64)


def torch_decoder_layer(norm_first):
    return torch.nn.TransformerDecoderLayer(D, H, FF, dropout=0.0, activation="relu", batch_first=True,
                                            norm_first=norm_first, dtype=torch.float64)


def masks(device):
    """Source padding (row 1 has 2 pads) and target padding + causal, as torch and as ours."""
    src_real, tgt_real = lengths_mask([S, S - 2], S), lengths_mask([T, T - 1], T)
    torch_masks = {"src_pad": torch.tensor(~src_real), "tgt_pad": torch.tensor(~tgt_real),
                   "causal": torch.tensor(~np.tril(np.ones((T, T), dtype=bool)))}
    src_mask = ours_padding(src_real, device)
    tgt_mask = ours_padding(tgt_real, device) & causal_mask(T, device)      # (B, 1, T, T)
    return torch_masks, src_mask, tgt_mask


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("stack", [False, True], ids=["layer", "stack"])
def test_encoder_matches_torch(device, rng, norm_first, stack):
    if stack:
        norm = torch.nn.LayerNorm(D, dtype=torch.float64) if norm_first else None
        theirs = torch.nn.TransformerEncoder(torch_encoder_layer(norm_first), 2, norm=norm,
                                             enable_nested_tensor=False)
        ours = Encoder(D, H, FF, 2, dropout=0.0, norm_first=norm_first)
    else:
        theirs = torch_encoder_layer(norm_first)
        ours = EncoderLayer(D, H, FF, dropout=0.0, norm_first=norm_first)
    copy_into_ours(ours, randomize(theirs, seed=2), device)
    torch_masks, src_mask, _ = masks(device)
    tx_, ox = leaf_pair(rng.standard_normal((B, S, D)), device)
    expected = theirs(tx_, src_key_padding_mask=torch_masks["src_pad"])
    out = ours(ox, src_mask)
    np.testing.assert_allclose(to_host(out), expected.detach().numpy(), **TOL)
    backprop_both(expected, out)
    assert_same_grads(ours, theirs, [(tx_, ox)])


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("stack", [False, True], ids=["layer", "stack"])
def test_decoder_matches_torch(device, rng, norm_first, stack):
    if stack:
        norm = torch.nn.LayerNorm(D, dtype=torch.float64) if norm_first else None
        theirs = torch.nn.TransformerDecoder(torch_decoder_layer(norm_first), 2, norm=norm)
        ours = Decoder(D, H, FF, 2, dropout=0.0, norm_first=norm_first)
    else:
        theirs = torch_decoder_layer(norm_first)
        ours = DecoderLayer(D, H, FF, dropout=0.0, norm_first=norm_first)
    copy_into_ours(ours, randomize(theirs, seed=3), device)
    torch_masks, src_mask, tgt_mask = masks(device)
    tt, ot = leaf_pair(rng.standard_normal((B, T, D)), device)
    tm, om = leaf_pair(rng.standard_normal((B, S, D)), device)
    expected = theirs(tt, tm, tgt_mask=torch_masks["causal"], tgt_key_padding_mask=torch_masks["tgt_pad"],
                      memory_key_padding_mask=torch_masks["src_pad"])
    out = ours(ot, om, tgt_mask, src_mask)
    np.testing.assert_allclose(to_host(out), expected.detach().numpy(), **TOL)
    backprop_both(expected, out)
    assert_same_grads(ours, theirs, [(tt, ot), (tm, om)])


# ---------------------------------------------------------------------------- the whole model
def tiny_transformer(**overrides):
    config = {"src_vocab": 11, "tgt_vocab": 13, "d_model": D, "n_heads": H, "d_ff": FF, "n_layers": 2,
              "dropout": 0.0, "max_len": 16}
    return Transformer(TransformerConfig(**{**config, **overrides}))


def test_config_defaults_and_validation():
    c = TransformerConfig(src_vocab=5, tgt_vocab=6)
    assert (c.d_model, c.n_heads, c.d_ff, c.n_layers, c.dropout, c.max_len, c.norm_first, c.positional, c.pad_id) \
        == (512, 8, 2048, 6, 0.1, 512, False, "sinusoidal", 0)
    with pytest.raises(ValueError, match="positional"):
        TransformerConfig(src_vocab=5, tgt_vocab=6, positional="rotary")
    with pytest.raises(ValueError, match="n_heads"):
        TransformerConfig(src_vocab=5, tgt_vocab=6, d_model=10, n_heads=3)


def test_masks_and_sinusoids(device):
    np.testing.assert_array_equal(to_host(causal_mask(3, device)), [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    pad = padding_mask(tx.Tensor([[5, 6, 0], [7, 0, 0]], device=device), pad_id=0)
    assert pad.shape == (2, 1, 1, 3) and pad.dtype == tx.bool_
    np.testing.assert_array_equal(to_host(pad).reshape(2, 3), [[1, 1, 0], [1, 0, 0]])
    table = to_host(sinusoidal_encoding(50, 6))
    pos, i = np.arange(50)[:, None], np.arange(3)[None, :]
    angle = pos / 10000 ** (2 * i / 6)
    np.testing.assert_allclose(table[:, 0::2], np.sin(angle), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(table[:, 1::2], np.cos(angle), rtol=1e-6, atol=1e-6)
    assert sinusoidal_encoding(4, 5).shape == (4, 5)                       # odd d_model


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_transformer_forward_shapes_names_and_gradients(device, positional, norm_first):
    tx.manual_seed(0)
    model = tiny_transformer(positional=positional, norm_first=norm_first).to(device=device)
    names = dict(model.named_parameters())
    for name in ["src_embed.weight", "tgt_embed.weight", "encoder.layers.0.self_attn.q_proj.weight",
                 "decoder.layers.1.cross_attn.out_proj.bias", "decoder.layers.0.norm3.weight", "generator.weight"]:
        assert name in names
    assert ("pos_encoding.embedding.weight" in names) == (positional == "learned")
    assert ("encoder.norm.weight" in names) == norm_first
    src = tx.Tensor([[3, 4, 5, 6, 0], [7, 8, 0, 0, 0]], device=device)
    tgt = tx.Tensor([[1, 3, 4, 5], [1, 9, 0, 0]], device=device)
    logits = model(src, tgt)
    assert logits.shape == (2, 4, 13) and logits.dtype == tx.float32
    tx.functional.cross_entropy(logits.reshape(-1, 13), tgt.reshape(-1)).backward()
    for name, p in names.items():
        assert p.grad is not None and p.grad.shape == p.shape, name
    # Source padding is invisible: more of it changes nothing.
    longer = model(tx.Tensor([[3, 4, 5, 6, 0, 0, 0], [7, 8, 0, 0, 0, 0, 0]], device=device), tgt)
    np.testing.assert_allclose(to_host(longer), to_host(logits), rtol=1e-5, atol=1e-6)


def test_embeddings_scaled_and_positions_added(device):
    tx.manual_seed(0)
    model = tiny_transformer().to(device=device, dtype="float64")
    src = tx.Tensor([[3, 4, 5]], device=device)
    x = to_host(model._embed(model.src_embed, src))
    expected = model.src_embed.weight.numpy()[[3, 4, 5]] * np.sqrt(D) + sinusoidal_encoding(16, D).numpy()[:3]
    np.testing.assert_allclose(x[0], expected, rtol=1e-6)


def test_positions_past_max_len_raise(device):
    model = tiny_transformer(positional="learned", max_len=4).to(device=device)
    with pytest.raises(ValueError, match="max_len=4"):
        model(tx.Tensor([[3, 4, 5, 6, 7]], device=device), tx.Tensor([[1, 3]], device=device))


def test_decoder_output_at_t_ignores_later_target_tokens(device):
    tx.manual_seed(0)
    model = tiny_transformer().to(device=device, dtype="float64")
    src = tx.Tensor([[3, 4, 5, 6, 2], [7, 8, 2, 0, 0]], device=device)
    tgt = np.array([[1, 3, 4, 5, 6, 7], [1, 9, 10, 11, 12, 3]])
    base = to_host(model(src, tx.Tensor(tgt, device=device)))
    for t in range(tgt.shape[1] - 1):
        changed = tgt.copy()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1) % 10 + 3             # new real (non-pad) tokens
        out = to_host(model(src, tx.Tensor(changed, device=device)))
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], rtol=1e-12, atol=1e-12)
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:])           # later positions do change


def test_layers_hold_distinct_parameters(device):
    tx.manual_seed(0)
    model = tiny_transformer(n_layers=3).to(device=device)
    params = model.parameters()
    assert len({id(p) for p in params}) == len(params)
    assert len({id(p.data) for p in params}) == len(params)
    for stack in (model.encoder, model.decoder):
        for i in range(3):
            for j in range(i + 1, 3):
                for (name, a), (_, b) in zip(stack.layers[i].named_parameters(), stack.layers[j].named_parameters()):
                    if a.ndim > 1:                                         # matrices start different
                        assert not np.array_equal(to_host(a), to_host(b)), name
    # A gradient step on one layer leaves the others alone.
    before = model.encoder.layers[1].self_attn.q_proj.weight.numpy()
    model.encoder.layers[0].self_attn.q_proj.weight.data += 1.0
    np.testing.assert_array_equal(model.encoder.layers[1].self_attn.q_proj.weight.numpy(), before)


def test_dropout_only_in_training(device):
    tx.manual_seed(0)
    model = tiny_transformer(dropout=0.5).to(device=device)
    src = tx.Tensor([[3, 4, 5, 6]], device=device)
    tgt = tx.Tensor([[1, 3, 4]], device=device)
    assert not np.allclose(to_host(model(src, tgt)), to_host(model(src, tgt)))
    model.eval()
    np.testing.assert_array_equal(to_host(model(src, tgt)), to_host(model(src, tgt)))


def test_state_dict_round_trip_gives_same_outputs(device, tmp_path):
    tx.manual_seed(0)
    model = tiny_transformer(positional="learned").to(device=device)
    tx.manual_seed(1)
    other = tiny_transformer(positional="learned").to(device=device)
    src = tx.Tensor([[3, 4, 5, 0]], device=device)
    tgt = tx.Tensor([[1, 3, 4]], device=device)
    other.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(to_host(other(src, tgt)), to_host(model(src, tgt)))


def test_a_few_sgd_steps_learn_to_copy(device):
    """The model can fit a tiny copy task: the loss falls well below its starting value."""
    tx.manual_seed(0)
    model = tiny_transformer(d_model=16, n_heads=2, d_ff=32, n_layers=1).to(device=device)
    rng = np.random.default_rng(0)
    body = rng.integers(3, 11, size=(8, 5))
    src = tx.Tensor(body, device=device)
    tgt = tx.Tensor(np.concatenate([np.ones((8, 1), dtype=np.int64), body], axis=1), device=device)
    losses = []
    for _ in range(30):
        logits = model(src, tgt[:, :-1])
        loss = tx.functional.cross_entropy(logits.reshape(-1, 13), tgt[:, 1:].reshape(-1))
        model.zero_grad()
        loss.backward()
        for p in model.parameters():
            p.data -= 0.1 * p.grad.data
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
