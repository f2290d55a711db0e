# ---
# jupyter:
#   jupytext:
#     formats: notebooks//ipynb,src//py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # The illustrated Transformer, drawn by tinygrad_tx
#
# This guide follows a sentence through a Transformer that translates English number words into
# French, in the order of [The Illustrated Transformer](https://jalammar.github.io/illustrated-transformer/):
# tokens, embeddings, positions, self-attention, heads, the encoder layer, the decoder, the output
# layer and its loss, decoding, and the backward pass that trains it all. Every figure and number
# below was computed by tinygrad_tx from a real trained model when this page was built.
#
# The page is generated from one source, [src/illustrated.py](src/illustrated.py), which is also the
# notebook [notebooks/illustrated.ipynb](notebooks/illustrated.ipynb): open that in Jupyter and run it
# top to bottom (it trains the model for 3 minutes on a CPU the first time, into `runs/guide`). To
# rebuild this page, its notebook and every figure under `docs/`:
#
# ```bash
# tinygrad-tx guide --checkpoint runs/guide          # trains into runs/guide when it holds no run
# tinygrad-tx guide --quick --out /tmp/docs          # a tiny model, a few steps: what CI runs
# ```
#
# Claims the prose makes about the numbers are `assert`s in the cells, so the page cannot be built
# when one of them stops holding.

# %%
import contextlib
import io
import math
import os
import random

import numpy as np
from IPython.display import Markdown
from tinygrad_tx.models import transformer
from tinygrad_tx.models.decoding import beam_search, greedy_decode

import tinygrad_tx as tx
from tinygrad_tx import functional as F
from tinygrad_tx import viz
from tinygrad_tx.app import analysis
from tinygrad_tx.app.figures import Panel, picture, plot_heads, plot_panels, symmetric_range
from tinygrad_tx.app.vocab import BOS, EOS, PAD

QUICK = os.environ.get("TX_GUIDE_QUICK") == "1"        # CI: a tiny model trained for a few steps
TRAINED = not QUICK                                    # claims about what training taught the model
CHECKPOINT = os.environ.get("TX_GUIDE_CHECKPOINT", "runs/guide")

trained = analysis.load_or_train(CHECKPOINT, quick=QUICK)
model, vocab = trained.model, trained.vocab
SENTENCE = analysis.SENTENCE
ex = analysis.translate_and_attend(model, vocab, SENTENCE)
table, metrics = analysis.translations_table(trained, ex)         # decodes the test set: overwrites every .attn
ex = analysis.translate_and_attend(model, vocab, SENTENCE)       # every layer's .attn now holds this sentence

# %% tags=["remove-input"]
Markdown(f"The model: {trained.summary}. On {len(trained.test_pairs)} held-out numbers it translates "
         f"{metrics['exact_match']:.1f}% exactly (BLEU {metrics['bleu']:.1f}, chrF {metrics['chrf']:.1f}), "
         f"greedy decoding:\n\n{table}\n\nThe running example is **{SENTENCE}**, which the model translates "
         f"as **{ex.translation or '(nothing)'}**.")

# %% [markdown]
# ## 1. Tokenization and embedding
#
# The model reads words as numbers. The tokenizer ([vocab.py: `Tokenizer`](../tinygrad_tx/app/vocab.py))
# splits the sentence into words and punctuation, and hyphens become tokens of their own so that
# `seventy` is one entry of the vocabulary, not one per compound. The encoder also gets an
# end-of-sentence token `<eos>`; ids 0-3 of both vocabularies are `<pad> <bos> <eos> <unk>`.

# %%
print(vocab.tokenizer.tokenize(SENTENCE))
print(dict(zip(ex.src_tokens, ex.src_ids)))
print(f"source vocabulary {len(vocab.src)} tokens, target vocabulary {len(vocab.tgt)} tokens")
print("src_embed.weight:", tuple(model.src_embed.weight.shape))

# %% [markdown]
# The embedding table `src_embed.weight` holds one learned row of d_model numbers per token, and
# looking the sentence up gives a (T, d_model) matrix. As in the paper (section 3.4),
# [transformer.py: `Transformer._embed`](../models/transformer.py) multiplies it by sqrt(d_model)
# before adding the positions of the next section.

# %% tags=["remove-input"]
d_model = model.config.d_model
x = analysis.embed_source(model, ex.src_ids).detach()              # (T, d_model): encoder layer 0's input
x.name = "x (embeddings + positions)"
no_pos = analysis.embed_source(model, ex.src_ids, positions=False).detach()
scale = symmetric_range(no_pos, x)
picture(plot_panels([
    Panel(no_pos, ex.src_tokens, None, "token embeddings x sqrt(d_model)", xlabel="dimension", **scale),
    Panel(x, ex.src_tokens, None, "+ positional encoding = the encoder's input", xlabel="dimension", **scale),
], title=f"{SENTENCE!r}: one row of d_model={d_model} numbers per token", colorbar="value", cols=1),
    "guide/embedding.png", "The embedded example sentence, before and after adding positions")

# %% [markdown]
# ## 2. Positional encoding
#
# Attention compares every token with every other token, and nothing in that comparison says where a
# token stands. Without help the encoder would read a sentence and its shuffled copy as the same bag of
# words. The paper (section 3.5) adds a fixed table of sines and cosines to the embeddings,
# [transformer.py: `sinusoidal_encoding`](../models/transformer.py):
#
#     PE[pos, 2i]   = sin(pos / 10000^(2i / d_model))
#     PE[pos, 2i+1] = cos(pos / 10000^(2i / d_model))
#
# Columns come in pairs: columns 2i and 2i+1 share one wavelength, 2π · 10000^(2i/d_model), one as a
# sine and one as a cosine, and the wavelength grows from 2π (pair 0) to almost 2π · 10000 (the last
# pair). Each position gets its own pattern, and nearby positions similar ones. The columns of the
# figure are the dimensions j = 0 .. d_model-1 of the encoding, so pair i fills columns j = 2i and
# j = 2i+1.

# %%
table_pe = viz.sinusoid_table(64, d_model)                        # (64, d_model), float64
pairs = table_pe[:, 0::2] ** 2 + table_pe[:, 1::2] ** 2            # sin^2 + cos^2 of one angle
assert np.allclose(pairs, 1.0), "columns 2i and 2i+1 are the sine and cosine of one angle"
wavelengths = 2 * np.pi * 10000.0 ** (np.arange(0, d_model, 2) / d_model)
print(f"wavelength of pair 0: {wavelengths[0]:.2f} positions, of the last pair: {wavelengths[-1]:.0f}")

# %% tags=["remove-input"]
picture(viz.plot_positional_encoding(64, d_model), "guide/positional_encoding.png",
        "The sinusoidal positional encoding")

# %% [markdown]
# **Computed live, with the trained model's first self-attention layer** (`encoder.layers.0.self_attn`):
# shuffle the input rows, run the layer, and compare with running the layer first and shuffling its
# output ([analysis.py: `permutation_check`](../tinygrad_tx/app/analysis.py)).

# %%
attention = model.encoder.layers[0].self_attn
T = len(ex.src_ids)
perm = list(range(T))
random.Random(0).shuffle(perm)
diff_without = analysis.permutation_check(attention, no_pos, perm)
diff_with = analysis.permutation_check(attention, no_pos, perm, model.pos_encoding)
print("shuffled:", " ".join(ex.src_tokens[i] for i in perm))
print(f"max |attention(shuffled) - shuffled(attention)|: without positions {diff_without:.2e}, "
      f"with positions {diff_with:.2e}")
assert diff_without < 1e-5 and diff_with > 1e-2

# %% [markdown]
# Without positions the two agree to float32 rounding: attention is *permutation-equivariant*:
# shuffle the tokens and the outputs shuffle the same way. With positions added (after the shuffle,
# as a model reading the shuffled sentence would), the same shuffle gives different outputs: the
# layer now knows the order.

# %% tags=["remove-input"]
shuffled = [ex.src_tokens[i] for i in perm]
outputs = {label: analysis.shuffle_through(attention, no_pos, perm, positions)
           for positions, label in ((None, "without positions"), (model.pos_encoding, "with positions"))}
scale = symmetric_range(*[t for pair in outputs.values() for t in pair])
panels = []
for label, (a, b) in outputs.items():
    panels += [Panel(a, shuffled, None, f"{label}: attention(shuffled tokens)", xlabel="output dimension", **scale),
               Panel(b, shuffled, None, f"{label}: shuffle(attention(tokens))", xlabel="output dimension", **scale)]
picture(plot_panels(panels, cols=2, title="Self-attention (encoder layer 0) of a shuffled sentence",
                    colorbar="output value"),
        "guide/permutation.png", "Shuffling before and after self-attention, with and without positions")

# %% [markdown]
# ## 3. Self-attention
#
# Each token asks a question (its query, Q), offers a label (its key, K) and carries a content (its
# value, V): three linear maps of the same input row. The weight a token gives another is the softmax
# of their query-key dot products, scaled by 1/sqrt(d_k) so that the softmax does not saturate; each
# token's output is the weighted average of the values: `softmax(Q K^T / sqrt(d_k)) V`, in
# [attention.py: `scaled_dot_product_attention`](../models/attention.py).
#
# Below is head 0 of the trained model's first encoder layer, for the example sentence, written out
# with its own slices of W^Q, W^K and W^V ([analysis.py: `one_head`](../tinygrad_tx/app/analysis.py))
# and drawn by `tx.viz.draw_graph(out)`: the input x (T tokens × d_model), the three projections, the
# MatMul with K transposed (Permute), the scale (Mul), the padding mask (MaskedFill; one sentence has
# no padding, so nothing is hidden here: section 8 shows a batch where it matters), Softmax, and the
# MatMul with V. Each box shows a tensor's shape and its min/mean/max. In a notebook,
# `tx.viz.draw_graph(out)` at the end of a cell shows the drawing inline.

# %%
mask = transformer.padding_mask(tx.Tensor([ex.src_ids]), model.config.pad_id).reshape(1, T)   # (1, T)
mask.name = "padding mask (True = may attend)"
out, weights, named = analysis.one_head(attention, x, 0, mask)
real = attention.attn[0, 0]                                        # from the model's own forward pass
check = (weights.detach() - real).abs().max().item()
print(f"max |hand-written head - the layer's own weights| = {check:.1e}")
assert check < 1e-5
picture(viz.draw_graph(out), "guide/one_head_graph.png", "One attention head as a graph of primitives")

# %% [markdown]
# Its weights, one row per query token, each row summing to 1: the very numbers the model's layer
# computed in its own forward pass (`layer.self_attn.attn[0, 0]`).

# %% tags=["remove-input"]
assert np.allclose(real.numpy().sum(axis=-1), 1.0, atol=1e-5)
picture(plot_heads(real, ex.src_tokens, ex.src_tokens, "encoder layer 0, head 0: each row sums to 1",
                   ylabel="queries", xlabel="keys"),
        "guide/one_head_attention.png", "Attention weights of one head")

# %% [markdown]
# ## 4. Multi-head attention
#
# One softmax gives one way of mixing the tokens. The paper runs n_heads attentions side by side, each
# in its own d_k = d_model / n_heads dimensional subspace, and mixes their outputs with W^O. In the
# code the heads are not a loop: W^Q, W^K and W^V are three Linear modules, `q_proj`, `k_proj` and
# `v_proj`, and each projects all heads at once, one matrix product for the queries, one for the keys
# and one for the values. A Reshape to `(B, T, n_heads, d_k)` and a Permute to `(B, n_heads, T, d_k)`
# split each result into its heads, the heads become a batch axis of the same attention, and
# Permute + Reshape concatenate them back before `out_proj` (W^O). The graph of
# `encoder.layers.0.self_attn` at `depth=0`, where each of the four Linear modules is folded into one
# green box that lists its input and output shapes:

# %%
c = model.config
print(f"n_heads={c.n_heads}, d_k = {c.d_model} / {c.n_heads} = {c.d_model // c.n_heads}")
xb = x.unsqueeze(0)                                                # (1, T, d_model)
xb.name = x.name
mask4 = mask.reshape(1, 1, 1, T)                                   # (1, 1, 1, T)
mask4.name = "padding mask"
out_mha = attention(xb, xb, xb, mask4)                             # (1, T, d_model)
picture(viz.draw_graph(out_mha, depth=0, module=attention, show_values=False), "guide/multi_head_graph.png",
        "Multi-head attention at module depth 0")

# %% [markdown]
# The weights of every head, for the example sentence. The heads of a layer attend differently: each
# learned its own W^Q and W^K, so each asks its own question of the tokens. The table under each
# figure gives, for every head, the key that receives the most weight on average over the queries,
# and the runner-up: where the two are close, the head spreads its attention and has no single
# favourite.

# %% tags=["remove-input"]
def favourites(weights, keys):
    """A markdown table: per head, the key with the most weight on average over the queries, and the next."""
    rows = ["| head | most weight (mean over queries) | runner-up |", "|---|---|---|"]
    for h in range(weights.shape[0]):
        mean = weights[h].numpy().mean(axis=0)                     # (Tk,): the weight each key gets
        first, second = np.argsort(-mean)[:2]
        rows.append(f"| {h} | `{keys[first]}` {mean[first]:.0%} | `{keys[second]}` {mean[second]:.0%} |")
    return "\n".join(rows)


for i, layer in enumerate(model.encoder.layers):
    display(picture(plot_heads(layer.self_attn.attn[0], ex.src_tokens, ex.src_tokens,   # noqa: F821 (Jupyter)
                               f"encoder layer {i} self-attention, one panel per head",
                               ylabel="queries", xlabel="keys"),
                    f"guide/heads_encoder_layer{i}.png", f"Encoder layer {i}: every head"))
    display(Markdown(favourites(layer.self_attn.attn[0], ex.src_tokens)))                  # noqa: F821

# %% [markdown]
# ## 5. Feed-forward, residual and LayerNorm: the encoder layer
#
# After attention, every position goes through the same two-layer network on its own,
# `FFN(x) = max(0, x W_1 + b_1) W_2 + b_2`, widening d_model to d_ff and back. Each of the two
# sublayers is wrapped as `LayerNorm(x + Sublayer(x))` ([transformer.py: `EncoderLayer`](../models/transformer.py)):
# the residual Add lets the signal and its gradient skip the sublayer. LayerNorm first normalises
# each row to mean 0 and variance 1, then multiplies it by a learned gain γ (`norm.weight`) and adds
# a learned bias β (`norm.bias`), one number per dimension. So the rows that leave the layer are
# *not* at mean 0 and variance 1; only `(output - β) / γ` is. Measured on the example sentence:

# %%
layer = model.encoder.layers[0]
with tx.no_grad():
    h = layer(xb, mask4)[0].numpy()                                # (T, d_model): the layer's output
gamma, beta = layer.norm2.weight.numpy(), layer.norm2.bias.numpy()
normalised = (h - beta) / gamma                                    # undo the gain and the bias
print(f"output rows:     mean {h.mean(axis=1).round(2)},\n                 std  {h.std(axis=1).round(2)}")
print(f"(output - β)/γ:  mean {normalised.mean(axis=1).round(2)},\n                 std  "
      f"{normalised.std(axis=1).round(2)}")
assert np.allclose(normalised.mean(axis=1), 0, atol=1e-3) and np.allclose(normalised.std(axis=1), 1, atol=1e-2)
if TRAINED:
    assert np.abs(h.std(axis=1) - 1).max() > 0.05, "after training, the gain moves the rows off variance 1"

# %% [markdown]
# Here is `encoder.layers.0` with every primitive, each module in its own cluster (`self_attn` with
# its four Linears, `linear1`, `linear2`, `norm1`, `norm2`). Dropout is the identity in eval mode and
# does not appear.

# %%
out_layer = layer(xb, mask4)
picture(viz.draw_graph(out_layer, module=layer, show_values=False), "guide/encoder_layer_graph.png",
        "The encoder layer, clustered by module")

# %% [markdown]
# ## 6. The decoder: the causal mask and cross-attention
#
# The decoder writes the French sentence one token at a time, starting from `<bos>`. In training it
# reads the whole correct sentence at once (teacher forcing), so its self-attention must not peek at
# the words it has still to predict: [transformer.py: `causal_mask`](../models/transformer.py) lets
# position i see positions 0..i only (True = may attend, the convention of
# [attention.py](../models/attention.py)).
#
# **One convention for every decoder figure on this page:** a row is a decoder position, labelled by
# the token the decoder *reads* there (its input: `<bos>`, then the translation so far). The token it
# *predicts* at that position is the next one; the tables name both.

# %% tags=["remove-input"]
T_dec = len(ex.tgt_in_tokens)
causal = transformer.causal_mask(T_dec).numpy()                    # (T, T) bool
self_attn = model.decoder.layers[0].self_attn.attn[0].numpy().mean(axis=0)   # (T, T), mean of the heads
assert np.all(self_attn[~causal] == 0), "no weight on a future position"
picture(plot_panels([
    Panel(causal.astype(np.float32), ex.tgt_in_tokens, ex.tgt_in_tokens, "causal_mask(T): 1 = may attend",
          cmap="Greens", vmin=0.0, vmax=1.6, xlabel="keys (decoder input)", ylabel="queries (decoder input)",
          annotate=".0f"),
    Panel(self_attn, ex.tgt_in_tokens, ex.tgt_in_tokens, "decoder layer 0 self-attention\n(mean of the heads)",
          cmap="viridis", vmin=0.0, vmax=1.0, xlabel="keys (decoder input)", annotate=".2f",
          colorbar="attention weight"),
], cell=0.5), "guide/causal_mask.png", "The causal mask and the masked decoder self-attention")

# %% [markdown]
# Between its self-attention and its feed-forward network, each decoder layer has a second attention
# whose queries come from the decoder and whose keys and values come from the encoder's output: for
# each French word it is about to write, the decoder looks up the English words it needs. Rows are
# decoder positions (labelled by the token read there, as above), columns the English input tokens:

# %% tags=["remove-input"]
for i, layer_i in enumerate(model.decoder.layers):
    display(picture(plot_heads(layer_i.cross_attn.attn[0], ex.tgt_in_tokens, ex.src_tokens,     # noqa: F821
                               f"decoder layer {i} cross-attention",
                               ylabel="decoder position (token read)", xlabel="English input token (key)"),
                    f"guide/cross_attention_layer{i}.png", f"Cross-attention of decoder layer {i}"))

# %% [markdown]
# What does the last layer look at? For each decoder position, the table gives the English token with
# the most weight, averaged over the heads, and the runner-up. Where the two weights are close, the
# position splits its attention; averaging heads can also hide that one head looks at one token and
# another head at another, so read a close call as "these two tokens", not as one alignment.

# %% tags=["remove-input"]
last = len(model.decoder.layers) - 1
cross = model.decoder.layers[last].cross_attn.attn[0].numpy()     # (n_heads, T_dec, T_src)
mean_cross = cross.mean(axis=0)
rows = ["| reads | predicts | most weight | runner-up | heads whose own favourite it is |",
        "|---|---|---|---|---|"]
close_calls = 0
for i, (read, predicted) in enumerate(zip(ex.tgt_in_tokens, ex.tgt_out_tokens)):
    first, second = np.argsort(-mean_cross[i])[:2]
    agree = sum(int(cross[h, i].argmax() == first) for h in range(cross.shape[0]))
    close_calls += mean_cross[i, first] - mean_cross[i, second] < 0.1
    rows.append(f"| `{read}` | `{predicted}` | `{ex.src_tokens[first]}` {mean_cross[i, first]:.0%} "
                f"| `{ex.src_tokens[second]}` {mean_cross[i, second]:.0%} | {agree} of {cross.shape[0]} |")
Markdown("\n".join(rows) + f"\n\n{close_calls} of {len(rows) - 2} positions are close calls (the top two "
         "weights differ by less than 10 points).")

# %% [markdown]
# Nobody told the model which words correspond; whatever alignment it has, it learned from sentence
# pairs alone, because looking at the right English words is what predicts the next French word.
# A longer number (the heads of the last decoder layer averaged; rows labelled by the token read):

# %% tags=["remove-input"]
second = analysis.translate_and_attend(model, vocab, analysis.SECOND_SENTENCE)
print(f"{analysis.SECOND_SENTENCE} -> {second.translation}")
fig = plot_heads(model.decoder.layers[last].cross_attn.attn[0].numpy().mean(axis=0), second.tgt_in_tokens,
                 second.src_tokens, f"decoder layer {last} cross-attention, mean of the heads",
                 ylabel="decoder position (token read)", xlabel="English input token (key)")
picture(fig, "guide/cross_attention_second.png", "Cross-attention for a longer number")

# %% [markdown]
# ## 7. The output layer, the loss, and the gradient that starts it all
#
# The decoder's last layer gives one d_model vector per position. The *generator*, one Linear
# (`model.generator`), turns it into one score (logit) per word of the target vocabulary, and a
# softmax turns the scores into probabilities p. For the running example (teacher forcing: the
# decoder reads `<bos>` and the translation), the five most likely next tokens at each position:

# %%
src = tx.Tensor([ex.src_ids])                                      # (1, S)
tgt_ids = [BOS] + [vocab.tgt.index[t] for t in ex.tgt_out_tokens]  # <bos> ... <eos>
tgt_in, tgt_out = tx.Tensor([tgt_ids[:-1]]), tx.Tensor([tgt_ids[1:]])   # (1, T) each
with tx.no_grad():
    logits = model(src, tgt_in)                                    # (1, T, tgt_vocab)
p = logits.softmax(axis=-1)[0].numpy()                             # (T, tgt_vocab)
rows = ["| reads | top 5 next tokens (probability) |", "|---|---|"]
for i, read in enumerate(ex.tgt_in_tokens):
    top = np.argsort(-p[i])[:5]
    rows.append(f"| `{read}` | " + ", ".join(f"`{vocab.tgt.tokens[j]}` {p[i, j]:.3f}" for j in top) + " |")
Markdown("\n".join(rows))

# %% [markdown]
# Training compares p with a target distribution q. With *label smoothing* ε (the paper uses
# ε = 0.1; [functional.py: `cross_entropy`](../tinygrad_tx/functional.py) follows torch), q is not
# one-hot: the correct token gets 1 - ε + ε/C and every other token ε/C, with C the vocabulary size.
# The loss at one position is the cross-entropy `L = -Σ_j q_j log p_j`. Its gradient with respect to
# the logits z is the whole reason training works, and it takes two lines. With
# `log p_j = z_j - log Σ_k e^{z_k}`:
#
#     ∂L/∂z_i = -Σ_j q_j (δ_ij - p_i) = -q_i + p_i Σ_j q_j
#             = p_i - q_i                  (because Σ_j q_j = 1)
#
# The gradient is "what the model said minus what it should have said". With the loss averaged over
# the T positions, each row is divided by T. The engine computes it in one fused primitive
# (`CrossEntropy` in [primitives.py](../tinygrad_tx/primitives.py)); the cell checks it against p - q.

# %%
eps, C, T_out = 0.1, len(vocab.tgt), len(ex.tgt_out_tokens)
q = np.full((T_out, C), eps / C)
q[np.arange(T_out), tgt_ids[1:]] += 1 - eps                        # the label-smoothed target
z = tx.Tensor(logits.numpy()[0], requires_grad=True)               # (T, C): the logits as a leaf
loss = F.cross_entropy(z, tgt_out[0], label_smoothing=eps)
loss.backward()
by_hand = (p - q) / T_out
print(f"loss {loss.item():.4f}; max |engine dL/dz - (p - q)/T| = {np.abs(z.grad.numpy() - by_hand).max():.1e}")
assert np.allclose(z.grad.numpy(), by_hand, atol=1e-6)

# %% tags=["remove-input"]
shown = sorted(set(np.argsort(-p[0])[:6]) | {tgt_ids[1]})
labels = [vocab.tgt.tokens[j] for j in shown]
fig = viz.figure(8, 3.2)
ax = fig.add_subplot(1, 1, 1)
pos = np.arange(len(shown))
ax.bar(pos - 0.2, p[0, shown], width=0.4, label="p = softmax(logits)")
ax.bar(pos + 0.2, q[0, shown], width=0.4, label=f"q, label smoothing ε = {eps}")
ax.set_xticks(pos)
ax.set_xticklabels(labels, rotation=30, ha="right")
ax.set_ylabel("probability")
ax.set_title(f"position 0 (reads `<bos>`, should predict `{ex.tgt_out_tokens[0]}`): p - q is the gradient; "
             f"the other {C - len(shown)} tokens get q = ε/C = {eps / C:.4f}", fontsize=9)
ax.legend(fontsize=8)
picture(fig, "guide/loss_target.png", "Predicted distribution p and label-smoothed target q at the first position")

# %% [markdown]
# **Following that gradient into an attention head.** Between the logits and an attention head lie
# the rest of the decoder, but the step that matters inside the head is the softmax. To see it
# without twenty ops in between, put a readout on head 0 of section 3: its output O (T × d_k) goes
# through a fixed random matrix R to C logits per position, and the same label-smoothed loss. Then
# the gradient comes back as
#
#     dL/dlogits = (p - q) / T          (above)
#     dL/dO      = dL/dlogits · R^T     (MatMul: dA = G @ B^T)
#     dL/dA      = dL/dO · V^T          (A: the attention weights, O = A V)
#     dL/dS      = A ⊙ (dL/dA - rowsum(dL/dA ⊙ A))     (S: the scaled scores, A = softmax(S))
#
# The last line is the softmax Jacobian, applied without ever building it: for one row,
# ∂A_j/∂S_k = A_j (δ_jk - A_k), so `dS_k = Σ_j dA_j A_j (δ_jk - A_k) = A_k (dA_k - Σ_j dA_j A_j)`. The
# cell computes every line by hand in NumPy and compares with what the engine's backward stored, and
# `tx.viz.explain` narrates the same Softmax step.

# %%
rng = np.random.default_rng(0)
head = slice(0, attention.d_k)
Wq, Wk, Wv = (tx.Tensor(proj.weight.numpy()[head].T.copy()) for proj in
              (attention.q_proj, attention.k_proj, attention.v_proj))          # (d_model, d_k) each
bq, bk, bv = (tx.Tensor(proj.bias.numpy()[head].copy()) for proj in
              (attention.q_proj, attention.k_proj, attention.v_proj))          # (d_k,) each
R = tx.Tensor(rng.standard_normal((attention.d_k, C)).astype(np.float32))     # (d_k, C)
xs = tx.Tensor(x.numpy(), requires_grad=True)                      # (T, d_model)
Q, K, Vh = xs @ Wq + bq, xs @ Wk + bk, xs @ Wv + bv                # (T, d_k) each
S = (Q @ K.transpose(0, 1)) * (1.0 / math.sqrt(attention.d_k))      # (T, T)
A = S.softmax(axis=-1)                                             # (T, T)
O = A @ Vh                                                         # (T, d_k)
head_logits = O @ R                                                # (T, C)
for t in (S, A, O, head_logits):
    t.retain_grad()
targets = [tgt_ids[1:][i % T_out] for i in range(T)]               # any targets will do: one per row
head_loss = F.cross_entropy(head_logits, tx.Tensor(targets), label_smoothing=eps)
explained = io.StringIO()
with contextlib.redirect_stdout(explained):
    viz.explain(head_loss)
# By hand, from the forward values only:
ph = head_logits.softmax(axis=-1).numpy()
qh = np.full_like(ph, eps / C)
qh[np.arange(T), targets] += 1 - eps
d_logits = (ph - qh) / T
d_O = d_logits @ R.numpy().T
d_A = d_O @ Vh.numpy().T
a = A.numpy()
d_S = a * (d_A - (d_A * a).sum(axis=-1, keepdims=True))
for name, mine, engine in (("dL/dlogits", d_logits, head_logits.grad), ("dL/dO", d_O, O.grad),
                           ("dL/dA", d_A, A.grad), ("dL/dS", d_S, S.grad)):
    err = np.abs(mine - engine.numpy()).max()
    print(f"{name:10s} by hand vs engine: max difference {err:.1e}")
    assert err < 1e-5
print("... and explain's narration of the Softmax step:")
text = explained.getvalue().splitlines()
start = next(i for i, line in enumerate(text) if ": Softmax ->" in line)
print("\n".join(text[start:start + 4]))

# %% [markdown]
# Every row of dL/dS sums to zero: adding the same number to all the scores of a row does not change
# its softmax, so no gradient can push in that direction. That is also why the key bias b^K of
# section 9 receives (almost) no gradient.

# %%
dS = S.grad.numpy()
ratio = np.abs(dS.sum(axis=-1)).max() / np.abs(dS).max()
print(f"largest |row sum of dL/dS| / largest |entry of dL/dS| = {ratio:.1e}  (float32 rounding)")
assert ratio < 1e-5

# %% [markdown]
# ## 8. Decoding, step by step
#
# At inference there is no French sentence to read: the decoder starts from `<bos>`, predicts one
# token, reads it back, and goes on until it writes `<eos>`. **Greedy decoding** keeps the most likely
# token at every step. With a *key/value cache* ([attention.py: `KVCache`](../models/attention.py)),
# each decoder layer keeps the keys and values of the tokens already decoded, so a step projects only
# the newest token: the self-attention cache grows by one position per step, while the
# cross-attention cache holds the encoder memory, projected once at the first step. The loop below is
# [decoding.py: `greedy_decode`](../models/decoding.py) written out for one sentence:

# %%
with tx.no_grad():
    src_mask = transformer.padding_mask(src, model.config.pad_id)  # (1, 1, 1, S)
    memory = model.encode(src, src_mask)                           # (1, S, d_model)
    cache = model.decoder.init_cache()                             # one {self_attn, cross_attn} per layer
    ys = [BOS]
    for step in range(2 * len(ex.src_ids) + 16):
        h = model.decode(memory, tx.Tensor([ys[-1:]]), src_mask, cache=cache)   # (1, 1, d_model)
        probs = model.generator(h[:, -1]).softmax(axis=-1)[0].numpy()          # (tgt_vocab,)
        top3 = np.argsort(-probs)[:3]
        ys.append(int(top3[0]))
        kv = cache[0]["self_attn"], cache[0]["cross_attn"]
        print(f"step {step}: " + ", ".join(f"{vocab.tgt.tokens[j]!r} {probs[j]:.3f}" for j in top3)
              + f"  | layer-0 cache: self K {tuple(kv[0].k.shape)}, cross K {tuple(kv[1].k.shape)}")
        if ys[-1] == EOS:
            break
library = greedy_decode(model, src, 2 * len(ex.src_ids) + 16, BOS, EOS).tolist()[0]
print("greedy:", vocab.decode_target(ys), "| models.decoding.greedy_decode agrees:", library[:len(ys)] == ys)
assert library[:len(ys)] == ys

# %% [markdown]
# The cache shapes read `(batch, n_heads, positions, d_k)`: after step t the self-attention cache
# holds t + 1 positions (`<bos>` and every token so far), and the cross-attention cache always holds
# the S source positions. Without the cache every step would run the decoder over the whole prefix
# again; `greedy_decode(..., use_cache=False)` does that and gives the same tokens.
#
# **Beam search** keeps the K best prefixes instead of one. At every step each live beam is extended
# by every token, the candidates are ranked by their total log-probability divided by the length
# penalty `((5 + length) / 6)^α` (α = 0.6, as in GNMT), and the best K survive; a beam that wrote
# `<eos>` stays, frozen, and competes by its final score. The loop below is
# [decoding.py: `beam_search`](../models/decoding.py) for K = 3 written out, without the cache, and it
# prints the beams after each step:

# %%
def penalty(n, alpha=0.6):
    return ((5.0 + n) / 6.0) ** alpha


K = 3
beams = [([BOS], 0.0, False)]                                      # (tokens, log P, finished)
with tx.no_grad():
    for step in range(2 * len(ex.src_ids) + 15):
        candidates = []
        for tokens, logp, done in beams:
            if done:
                candidates.append((tokens, logp, True))
                continue
            T_prefix = len(tokens)
            h = model.decode(memory, tx.Tensor([tokens]), src_mask, transformer.causal_mask(T_prefix))
            log_probs = F.log_softmax(model.generator(h[:, -1]), axis=-1)[0].numpy()   # (tgt_vocab,)
            for j in np.argsort(-log_probs)[:K]:
                candidates.append((tokens + [int(j)], logp + float(log_probs[j]), int(j) == EOS))
        candidates.sort(key=lambda c: -c[1] / penalty(len(c[0]) - 1))
        beams = candidates[:K]
        print(f"step {step}: " + " | ".join(f"{vocab.decode_target(b[0]) or '…'!r} {b[1]:.2f}"
                                            + (" (done)" if b[2] else "") for b in beams))
        if all(done for _, _, done in beams):
            break
best = max(beams, key=lambda b: b[1] / penalty(len(b[0]) - 1))
library = beam_search(model, src, beam_size=K, max_len=2 * len(ex.src_ids) + 16, bos_id=BOS, eos_id=EOS)
library = [t for t in library.tolist()[0] if t != PAD]
print("beam search:", vocab.decode_target(best[0]), "| models.decoding.beam_search agrees:", library == best[0])
assert library == best[0]

# %% [markdown]
# (Each line shows the K beams, best first by the length-normalised score, each with log P of its
# prefix; extending a beam only by its own top K tokens loses nothing, since no candidate outside
# them could enter the K best.)
#
# **Padding.** Sentences of a batch have different lengths, so the shorter ones are padded with
# `<pad>` (id 0) up to the longest. The padding mask (`padding_mask(src, pad_id)`, True = a real
# token) hides the padded keys from every query. Here the running example is batched with the longer
# number of section 6; below, the short sentence's encoder self-attention with the mask and without
# it (layer 0, the head that gives the padding the most weight when nothing hides it):

# %%
long_ids = vocab.encode_source(analysis.SECOND_SENTENCE)
S_max = max(len(long_ids), len(ex.src_ids))
batch = tx.Tensor([ex.src_ids + [PAD] * (S_max - len(ex.src_ids)), long_ids + [PAD] * (S_max - len(long_ids))])
batch_mask = transformer.padding_mask(batch, model.config.pad_id)  # (2, 1, 1, S_max)
print("batch", tuple(batch.shape), "| row 0:", batch.tolist()[0])
layer0 = model.encoder.layers[0]
with tx.no_grad():
    embedded = model.pos_encoding(model.src_embed(batch) * math.sqrt(d_model))   # (2, S_max, d_model)
    masked_out = layer0(embedded, batch_mask)[0, :T].numpy()       # the short sentence, masked
    w_masked_all = layer0.self_attn.attn[0].numpy()                # (n_heads, S_max, S_max)
    unmasked_out = layer0(embedded, None)[0, :T].numpy()           # the same batch, no mask
    w_unmasked_all = layer0.self_attn.attn[0].numpy()
    alone = layer0(embedded[0:1, :T], None)[0].numpy()             # the short sentence alone, unpadded
shown_head = int(w_unmasked_all[:, :T, T:].sum(axis=-1).max(axis=-1).argmax())
w_masked, w_unmasked = w_masked_all[shown_head], w_unmasked_all[shown_head]     # (S_max, S_max) each
pad_weight = w_unmasked[:T, T:].sum(axis=-1)
print(f"head {shown_head}: weight the real tokens give the padding: with the mask "
      f"{w_masked[:T, T:].sum(axis=-1).max():.1e}, without it up to {pad_weight.max():.0%}")
print(f"max |output - the sentence alone|: with the mask {np.abs(masked_out - alone).max():.1e}, "
      f"without it {np.abs(unmasked_out - alone).max():.2f}")
assert w_masked_all[:, :T, T:].max() == 0 and np.abs(masked_out - alone).max() < 1e-4
assert np.abs(unmasked_out - alone).max() > 1e-2

# %% tags=["remove-input"]
padded_tokens = ex.src_tokens + ["<pad>"] * (S_max - T)
picture(plot_panels([
    Panel(w_masked[:T], padded_tokens[:T], padded_tokens, f"head {shown_head}, with the padding mask",
          cmap="viridis", vmin=0.0,
          vmax=1.0, xlabel="keys", ylabel="queries (real tokens)", annotate=".2f"),
    Panel(w_unmasked[:T], padded_tokens[:T], padded_tokens, "without it: weight leaks to <pad>", cmap="viridis",
          vmin=0.0, vmax=1.0, xlabel="keys", annotate=".2f", colorbar="attention weight"),
], cell=0.42), "guide/padding_mask.png", "The short sentence of a padded batch, with and without the padding mask")

# %% [markdown]
# With the mask, the short sentence gives the padding exactly zero weight, and its outputs are those
# of the sentence alone (up to float32 rounding): batching changes nothing. Without it, queries
# spend part of their weight on `<pad>` (the cell prints how much, at most), and the outputs change
# with the length of the *other* sentences in the batch.
#
# ## 9. Autodiff: how the model learns
#
# Training needs the gradient of the loss with respect to every weight. tinygrad_tx records each
# primitive as a graph node while the forward pass runs, then walks the graph backwards, from the loss
# to the leaves, applying each primitive's local derivative rule (the chain rule). The backward graph
# of the attention head of section 3, with a toy loss `mean(output^2)`, is drawn with
# `tx.viz.draw_graph(loss, backward=True)` after a backward run inside `tx.viz.record_gradients()`
# (outside it, the drawing shows gradient shapes only, not their norms): every red box is one op's
# backward, the edges carry gradient shapes and norms, and the dashed boxes are sums that undo
# broadcasting (the bias b^Q was added to every row, so its gradient adds up the rows). The gradients
# land in the leaves at the bottom.

# %%
out_h, _weights, named = analysis.one_head(attention, x, 0, mask)
loss_h = (out_h * out_h).mean()
loss_h.name = "loss = mean(output^2)"
with viz.record_gradients():
    loss_h.backward()
grad_norm = {t.name: float(np.sqrt((t.grad.numpy() ** 2).sum())) for t in named if t.grad is not None}
print(f"||dL/db^K|| = {grad_norm['b^K']:.1e}, ||dL/db^Q|| = {grad_norm['b^Q']:.2g}")
assert grad_norm["b^K"] < 1e-4 * grad_norm["b^Q"]
picture(viz.draw_graph(loss_h, backward=True), "guide/one_head_backward.png",
        "The backward pass of one attention head", width=900)

# %% [markdown]
# One of them is (almost) zero: the key bias b^K. That is not a bug. Adding the same b^K to every key
# adds the same number q·b^K to all the scores of a query, and a softmax does not change when all of
# its inputs shift together (section 7: the rows of dL/dS sum to zero), so the key bias cannot change
# the loss. The backward pass finds this out on its own.
#
# `tx.viz.explain(loss)` narrates the same walk in words, then runs it; call it *instead of*
# `loss.backward()`, since a backward pass frees the graph it walked. For a small expression in which
# one intermediate result is used twice, so that its gradient is "the sum of 2 contributions":

# %%
x_small = tx.Tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
w_small = tx.Tensor([0.5, -1.0, 2.0], requires_grad=True)
x_small.name, w_small.name = "x", "w"                 # labels for explain
h_small = (x_small * w_small).relu()                  # w broadcasts over the rows of x
y_small = (h_small * h_small).sum()                   # h is used twice, by one Mul
narration = viz.explain(y_small)                      # prints the narration; the gradients land in .grad
assert "the sum of 2 contributions" in narration and "summed over broadcast axes (0,)" in narration

# %% [markdown]
# The engine behind this is short enough to read in one sitting:
# [autograd.py](../tinygrad_tx/autograd.py) (the graph node and the backward walk) and
# [primitives.py](../tinygrad_tx/primitives.py) (every primitive with its derivative).
# [The autodiff lesson](autodiff.md) (also a notebook) shows how a Function saves what it needs, why
# the walk must follow a topological order, how broadcasting is undone, how the graph is freed, how
# to check gradients, and forward mode against reverse mode; [the exercises](../examples/exercises/)
# let you write these pieces yourself, with checks that tell you whether they are right.
