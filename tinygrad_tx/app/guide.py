"""The illustrated guide: docs/illustrated.md and its figures, drawn by tinygrad_tx from a trained model.

    build_guide("docs")                               # train numbers-en-fr for 3 minutes, then write
    build_guide("docs", checkpoint="runs/guide")      # load that run (or train into it when it holds none)
    build_guide("/tmp/guide", quick=True)             # a tiny model, a few steps: seconds (the tests)

The guide follows The Illustrated Transformer: tokens and embeddings, positions, self-attention,
multi-head attention, the encoder layer, the decoder's masks and cross-attention, and the backward
pass. Every number and picture in it is computed here, from the model, when the guide is built:
rebuild it after changing the engine and the pictures change with it.

Figures go to OUT/guide/ (PNG heatmaps from matplotlib, PNG graphs from Graphviz's `dot`), the text
to OUT/illustrated.md. This is the application layer: it uses the engine, viz, train and models.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import sys
import tempfile
from dataclasses import dataclass

import tinygrad_tx as tx

from tinygrad_tx import autograd, backend, primitives, viz
from tinygrad_tx.nn import Parameter
from tinygrad_tx.serialization import atomic_write_text
from tinygrad_tx.viz.plots import figure, save_figure

from . import drawings, tasks
from . import vocab as vocab_module
from .checkpoint import has_checkpoint, load_model
from .config import TrainConfig
from .train import train
from .translate import Translator
from .vocab import EOS, PairVocab

TASK = "numbers-en-fr"
SENTENCE = "nine hundred and seventy-one"          # the guide's running example
SECOND_SENTENCE = "eight hundred and forty-three thousand, two hundred and fifty-six"
DEFAULT_MINUTES = 3.0
# quick=True: a tiny model on a small slice of the task, for tests that rebuild the whole guide
QUICK_MODEL = {"d_model": 32, "n_heads": 4, "d_ff": 64, "n_layers": 1, "dropout": 0.0}
QUICK_PAIRS = {"train": 2000, "valid": 50, "test": 20}
QUICK_STEPS = 30
TEST_PAIRS = 1000
FIGURES = "guide"                                               # the figures' folder inside out_dir


def _log(message: str) -> None:
    print(f"guide: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------- the model
@dataclass
class TrainedModel:
    model: object              # models.transformer.Transformer, in eval mode
    vocab: PairVocab
    summary: str               # how it was trained, in one sentence of markdown
    steps: int | None          # training steps of the run (None: unknown)
    test_pairs: list           # held-out (english, french) pairs to report exact match on


def _quick_config(folder: str):
    """A TrainConfig for a tiny model on TSV slices of the task (written into `folder`)."""
    paths = {}
    for split in ("train", "valid"):
        paths[split] = os.path.join(folder, f"{split}.tsv")
        tasks.write_tsv(tasks.load_task(TASK, split, size=QUICK_PAIRS[split]), paths[split])
    return TrainConfig(task=None, data=paths["train"], valid=paths["valid"], model=dict(QUICK_MODEL),
                       eval_every=QUICK_STEPS)


def _last_metrics(run_dir: str) -> dict:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return records[-1] if records else {}


def _describe_run(m: dict, cfg, model) -> str:
    """The model and its training in one sentence (m: the run's last metrics record, or {})."""
    c = model.config
    n_params = sum(p.data.size for p in model.parameters())
    trained = ""
    if m:
        trained = (f", trained for {m['step']} steps ({m['seconds'] / 60:.1f} minutes of training"
                   f"; validation exact match {m['exact_match']:.1f}%)")
    data_name = cfg.task or "a slice of " + TASK
    return (f"a Transformer with d_model={c.d_model}, n_heads={c.n_heads}, d_ff={c.d_ff}, "
            f"{c.n_layers}+{c.n_layers} layers ({n_params:,} parameters) on {data_name}{trained}")


def load_or_train(checkpoint: str | None = None, steps: int | None = None, minutes: float | None = None,
                  quick: bool = False) -> TrainedModel:
    """The guide's model. A `checkpoint` run directory that holds a trained run is loaded as it is;
    otherwise a model is trained (into `checkpoint`, kept for the next build, or into a temporary
    directory), for `steps` or `minutes` (default: 3 minutes, or a few steps when `quick`)."""
    test_size = QUICK_PAIRS["test"] if quick else TEST_PAIRS
    with tempfile.TemporaryDirectory(prefix="tinygrad-tx-guide-") as tmp:
        run_dir = checkpoint or os.path.join(tmp, "run")
        if checkpoint is not None and has_checkpoint(checkpoint):
            if steps is not None or minutes is not None:
                _log(f"{checkpoint} already holds a trained run: using it as it is (steps/minutes ignored)")
            _log(f"loading {checkpoint}")
        else:
            cfg = _quick_config(tmp) if quick else TrainConfig(task=TASK)
            if steps is None and minutes is None:
                steps, minutes = (QUICK_STEPS, None) if quick else (None, DEFAULT_MINUTES)
            budget = f"{steps} steps" if steps is not None else f"{minutes:g} minutes"
            _log(f"training {TASK} for {budget} into {run_dir}")
            train(cfg, run_dir, steps=steps, minutes=minutes, progress=not quick, log=_log)
        cfg, vocab, model = load_model(run_dir)
        metrics = _last_metrics(run_dir)
        summary, steps_done = _describe_run(metrics, cfg, model), metrics.get("step")
    unknown: list[str] = []
    for sentence in (SENTENCE, SECOND_SENTENCE):
        vocab.encode_source(sentence, unknown)
    if unknown:
        raise ValueError(f"the guide needs a {TASK} model, but the checkpoint's source vocabulary lacks "
                         f"{sorted(set(unknown))} (words of its examples)")
    test_pairs = tasks.load_task(TASK, "test", seed=cfg.seed, size=test_size)
    return TrainedModel(model, vocab, summary, steps_done, test_pairs)


# ---------------------------------------------------------------------------- live computations
@dataclass
class Translation:
    """One sentence through the model: its tokens on both sides, with every layer's `.attn` filled."""
    sentence: str
    translation: str
    src_ids: list
    src_tokens: list           # the encoder's tokens, <eos> included
    tgt_in_tokens: list        # the decoder's input: <bos> and the translation
    tgt_out_tokens: list       # what the decoder predicts at each position: the translation and <eos>


def translate_and_attend(model, vocab, sentence: str) -> Translation:
    """Translate greedily, then run the model once more on its own translation (teacher forcing), so
    that every MultiHeadAttention keeps the weights of this sentence in `.attn`."""
    translator = Translator(model, vocab)
    src_ids = vocab.encode_source(sentence)
    out_ids = translator.decode_ids([src_ids])[0]
    if EOS in out_ids:
        out_ids = out_ids[:out_ids.index(EOS) + 1]
    with tx.no_grad():
        model.eval()
        src = tx.Tensor([src_ids], dtype=tx.int64, device=translator.model_device)
        tgt_in = tx.Tensor([out_ids[:-1]], dtype=tx.int64, device=translator.model_device)
        model(src, tgt_in)
    return Translation(sentence, vocab.decode_target(out_ids), src_ids,
                       [vocab.src.tokens[i] for i in src_ids],
                       [vocab.tgt.tokens[i] for i in out_ids[:-1]],
                       [vocab.tgt.tokens[i] for i in out_ids[1:]])


def embed_source(model, src_ids, positions: bool = True):
    """The encoder's input for one sentence, (T, d_model): token embeddings * sqrt(d_model), plus
    the positional encoding when `positions` (eval mode: no dropout)."""
    src = tx.Tensor([src_ids], dtype=tx.int64, device=model.src_embed.weight.device)   # (1, T)
    x = model.src_embed(src) * math.sqrt(model.config.d_model)             # (1, T, d_model)
    if positions:
        x = model.pos_encoding(x)
    return x[0]                                                             # (T, d_model)


def shuffle_through(attention, tokens, perm: list[int], positions=None):
    """Self-attention of a sentence and of its shuffled copy, compared row by row.

    Args:
        attention: a MultiHeadAttention.
        tokens: (T, d_model) token embeddings of one sentence.
        perm: the shuffle, a permutation of range(T).
        positions: None, or a function adding positions to (1, T, d_model) embeddings: they are added
            after the shuffle, as a model reading the shuffled sentence would.

    Returns:
        (attention of the shuffled tokens, the attention output shuffled), each (T, d_model).
    """
    index = tx.Tensor(perm, dtype=tx.int64, device=tokens.device)
    with tx.no_grad():
        x = tokens.unsqueeze(0)                                             # (1, T, d_model)
        xs = tokens[index].unsqueeze(0)                                     # (1, T, d_model)
        if positions is not None:
            x, xs = positions(x), positions(xs)
        of_shuffled = attention(xs, xs, xs)[0]                              # (T, d_model)
        shuffled_out = attention(x, x, x)[0][index]                         # (T, d_model)
    return of_shuffled, shuffled_out


def permutation_check(attention, tokens, perm: list[int], positions=None) -> float:
    """max |attention(shuffled tokens) - shuffle(attention(tokens))| (see shuffle_through).

    Attention compares every token with every other token and never looks at where a token sits, so
    shuffling its input rows shuffles its output rows the same way: without positions the result is
    float32 rounding (~1e-7). Positions added after the shuffle break the symmetry."""
    a, b = shuffle_through(attention, tokens, perm, positions)
    return (a - b).abs().max().item()


def one_head(attention, x, head: int, mask=None):
    """Head `head` of a MultiHeadAttention written out with its own weights, for drawing.

    The head's slices of W^Q, W^K, W^V (and biases) become leaf Parameters named after the paper,
    so the graph shows Q = x W^Q + b^Q, K, V, then models.attention.scaled_dot_product_attention.

    Returns:
        (output (T, d_k), weights (T, T), the named leaves and Q, K, V: keep them alive while drawing,
        so the drawing shows their names and values).
    """
    from tinygrad_tx.models.attention import scaled_dot_product_attention
    cols = slice(head * attention.d_k, (head + 1) * attention.d_k)
    named, projected = [], {}
    for name, proj in (("Q", attention.q_proj), ("K", attention.k_proj), ("V", attention.v_proj)):
        w = Parameter(proj.weight.data[cols].T.copy())                     # (d_model, d_k): x @ W
        w.name = f"W^{name} (head {head})"
        projected[name] = x @ w                                             # (T, d_k)
        named.append(w)
        if proj.bias is not None:
            b = Parameter(proj.bias.data[cols].copy())                      # (d_k,)
            b.name = f"b^{name}"
            projected[name] = projected[name] + b                           # (T, d_k)
            named.append(b)
        projected[name].name = name
        named.append(projected[name])
    out, weights = scaled_dot_product_attention(projected["Q"], projected["K"], projected["V"], mask)
    weights.name = "attention weights"
    out.name = f"head {head} output"
    return out, weights, named


# ---------------------------------------------------------------------------- pictures
@dataclass
class Panel:
    """One heatmap of a figure."""
    values: object             # 2-D array or Tensor
    rows: list                 # row labels
    cols: list | None          # column labels (None: numbered ticks)
    title: str
    cmap: str = "RdBu_r"
    vmin: float | None = None
    vmax: float | None = None
    xlabel: str = ""
    ylabel: str = ""
    annotate: str = ""         # a format spec (".2f") to write every value in its cell
    colorbar: str = ""         # a label: this panel gets a colour bar of its own


def plot_panels(path: str, panels: list[Panel], title: str | None = None, cols: int | None = None,
                colorbar: str = "", cell: float = 0.28) -> str:
    """Heatmaps side by side (or in a grid of `cols` columns), each with its labelled rows; returns path.

    `cell` is the size of one matrix entry in inches (wide matrices are squeezed to 7 inches);
    `colorbar` labels one colour bar shared by every panel (give them the same vmin/vmax)."""
    cols = cols or len(panels)
    grid_rows = math.ceil(len(panels) / cols)
    first = _host(panels[0].values)
    height = grid_rows * (cell * first.shape[0] + 1.4) + (0.5 if title else 0.0)
    width = cols * (min(cell * first.shape[1], 7.0) + 2.0) + (1.0 if colorbar else 0.0)
    fig = figure(max(width, 5.0), max(height, 3.0))
    image = None
    for k, panel in enumerate(panels):
        values = _host(panel.values)
        ax = fig.add_subplot(grid_rows, cols, k + 1)
        image = ax.imshow(values, cmap=panel.cmap, vmin=panel.vmin, vmax=panel.vmax, aspect="auto",
                          interpolation="nearest")
        ax.set_yticks(range(len(panel.rows)))
        ax.set_yticklabels([str(r) for r in panel.rows], fontsize=9)
        if panel.cols is not None:
            ax.set_xticks(range(len(panel.cols)))
            ax.set_xticklabels([str(c) for c in panel.cols], rotation=60, ha="right", rotation_mode="anchor",
                               fontsize=9)
        ax.set_xlabel(panel.xlabel, fontsize=9)
        ax.set_ylabel(panel.ylabel, fontsize=9)
        ax.set_title(panel.title, fontsize=10)
        if panel.annotate:
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    r, g, b, _ = image.cmap(image.norm(values[i, j]))
                    light = 0.299 * r + 0.587 * g + 0.114 * b > 0.5          # dark text on light cells
                    ax.text(j, i, format(values[i, j], panel.annotate), ha="center", va="center", fontsize=7,
                            color="black" if light else "white")
        if panel.colorbar:
            fig.colorbar(image, ax=ax, shrink=0.8, label=panel.colorbar)
    if colorbar:
        fig.colorbar(image, ax=fig.axes, shrink=0.8, label=colorbar)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_heads(path: str, weights, queries, keys, title: str, ylabel: str, xlabel: str) -> str:
    """Attention weights (n_heads, Tq, Tk) or (Tq, Tk), one annotated panel per head, two panels a row
    (wide enough to read on a web page); returns path."""
    w = _host(weights)
    w = w[None] if w.ndim == 2 else w
    cols = min(len(w), 2)
    last_row = (len(w) - 1) // cols
    panels = [Panel(w[h], queries, keys, f"head {h}" if len(w) > 1 else "", cmap="viridis", vmin=0.0, vmax=1.0,
                    xlabel=xlabel if h // cols == last_row else "", ylabel=ylabel if h % cols == 0 else "",
                    annotate=".2f") for h in range(len(w))]
    return plot_panels(path, panels, title=title, cols=cols, colorbar="attention weight", cell=0.42)


def symmetric_range(*values) -> dict:
    """vmin/vmax centred on 0 and shared by several panels, so that one colour means one value."""
    vmax = max(float(abs(_host(v)).max()) for v in values)
    return {"vmin": -vmax, "vmax": vmax}


def strongest(weights, query_tokens, key_tokens) -> list[tuple[str, str, float]]:
    """(query, the key it gives the most weight, that weight) for every row of weights (Tq, Tk)."""
    w = _host(weights)
    return [(q, key_tokens[int(w[i].argmax())], float(w[i].max())) for i, q in enumerate(query_tokens)]


def _host(values):
    return values.numpy() if isinstance(values, tx.Tensor) else backend.to_numpy(values)


def _draw(graph, path: str) -> str:
    """Render a drawing to PNG. Without Graphviz's `dot`, save_drawing writes the .dot file instead and
    says how to install Graphviz; the guide cannot go on without its pictures."""
    if drawings.save_drawing(graph, path) != path:
        raise viz.GraphvizNotInstalled(f"the guide needs Graphviz's `dot` to draw {os.path.basename(path)}")
    return path


# ---------------------------------------------------------------------------- the guide
class _Guide:
    """The shared state of the sections: the model, the example, and where figures go."""

    def __init__(self, out_dir: str, trained: TrainedModel):
        self.out_dir, self.trained = out_dir, trained
        self.model, self.vocab = trained.model, trained.vocab
        self.fig_dir = os.path.join(out_dir, FIGURES)
        os.makedirs(self.fig_dir, exist_ok=True)
        self.figures: list[str] = []
        self.example = translate_and_attend(self.model, self.vocab, SENTENCE)
        self.x = embed_source(self.model, self.example.src_ids).detach()   # (T, d_model), layer 0's input
        self.x.name = "x (embeddings + positions)"
        # docs/autodiff.md, the tour of the engine's source, exists in a checkout (not in an installed wheel)
        tour = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "autodiff.md")
        self.autodiff_link = ""
        if os.path.exists(tour):
            self.autodiff_link = (f"[A guided tour of that source]({self.relative(tour)}) shows how a Function "
                                  "saves what it needs, how the walk is ordered, how broadcasting is undone and "
                                  "how the graph is freed.")

    def relative(self, path: str) -> str:
        """path as a link relative to the guide's folder."""
        return os.path.relpath(os.path.abspath(path), os.path.abspath(self.out_dir)).replace(os.sep, "/")

    def figure(self, name: str) -> str:
        """The path to write figure `name` to; remembers it for the list of figures."""
        self.figures.append(name)
        return os.path.join(self.fig_dir, name)

    def image(self, name: str, alt: str) -> str:
        return f"![{alt}]({FIGURES}/{name})"

    def source(self, module, name: str | None = None) -> str:
        """A markdown link to a module's source file, relative to the guide (`name`: a function in it)."""
        label = f"{os.path.basename(module.__file__)}" + (f": `{name}`" if name else "")
        return f"[{label}]({self.relative(module.__file__)})"

    def encoder_mask(self):
        """(1, T) bool, True at every key a query may attend to (one sentence: every token)."""
        from tinygrad_tx.models.transformer import padding_mask
        src = tx.Tensor([self.example.src_ids], dtype=tx.int64, device=self.x.device)
        mask = padding_mask(src, self.model.config.pad_id).reshape(1, len(self.example.src_ids))  # (1, T)
        mask.name = "padding mask"
        return mask

    def layer_inputs(self):
        """x as a batch of one (1, T, d_model) and the padding mask (1, 1, 1, T), both named."""
        xb = self.x.unsqueeze(0)                                            # (1, T, d_model)
        xb.name = self.x.name
        mask = self.encoder_mask().reshape(1, 1, 1, -1)                     # (1, 1, 1, T)
        mask.name = "padding mask"
        return xb, mask


def _code(text: str, lang: str = "") -> str:
    return f"```{lang}\n{text.rstrip()}\n```"


def _tokens_table(tokens, ids) -> str:
    head = "| token | " + " | ".join(f"`{t}`" for t in tokens) + " |"
    rule = "|---|" + "---|" * len(tokens)
    row = "| id | " + " | ".join(str(i) for i in ids) + " |"
    return f"{head}\n{rule}\n{row}"


def _section_tokens(g: _Guide) -> str:
    from tinygrad_tx.models import transformer
    ex, vocab, model = g.example, g.vocab, g.model
    d_model = model.config.d_model
    emb = g.x.numpy()
    no_pos = embed_source(model, ex.src_ids, positions=False).detach()
    scale = symmetric_range(no_pos, emb)
    plot_panels(g.figure("embedding.png"), [
        Panel(no_pos, ex.src_tokens, None, "token embeddings x sqrt(d_model)", xlabel="dimension", **scale),
        Panel(emb, ex.src_tokens, None, "+ positional encoding = the encoder's input", xlabel="dimension", **scale),
    ], title=f"{SENTENCE!r}: one row of d_model={d_model} numbers per token", colorbar="value", cols=1)
    words = vocab.tokenizer.tokenize(SENTENCE)
    return f"""## 1. Tokenization and embedding

The model reads words as numbers. The tokenizer ({g.source(vocab_module, 'Tokenizer')}) splits the sentence
into words and punctuation, and hyphens become tokens of their own so that `seventy` is one entry
of the vocabulary, not one per compound. The encoder also gets an end-of-sentence token `<eos>`:

{_code(f'>>> vocab.tokenizer.tokenize({SENTENCE!r})' + chr(10) + repr(words))}

{_tokens_table(ex.src_tokens, ex.src_ids)}

The source vocabulary has {len(vocab.src)} tokens and the target vocabulary {len(vocab.tgt)}
(ids 0-3 are `<pad> <bos> <eos> <unk>`). The embedding table `src_embed.weight` has shape
`{tuple(model.src_embed.weight.shape)}`: one learned row of d_model={d_model} numbers per token, and
looking the sentence up gives a `({len(ex.src_ids)}, {d_model})` matrix. As in the paper
(section 3.4), {g.source(transformer, 'Transformer._embed')} multiplies it by sqrt(d_model) =
{math.sqrt(d_model):.1f} before adding the positions of the next section:

{g.image('embedding.png', 'The embedded example sentence, before and after adding positions')}
"""


def _section_positions(g: _Guide) -> str:
    from tinygrad_tx.models import transformer
    model, ex = g.model, g.example
    d_model, T = model.config.d_model, len(ex.src_ids)
    viz.plot_positional_encoding(64, d_model, g.figure("positional_encoding.png"))
    attention = model.encoder.layers[0].self_attn
    perm = list(range(T))
    random.Random(0).shuffle(perm)
    tokens = embed_source(model, ex.src_ids, positions=False).detach()
    diff_without = permutation_check(attention, tokens, perm)
    diff_with = permutation_check(attention, tokens, perm, model.pos_encoding)
    # The picture: the same shuffle applied before and after attention, with and without positions.
    shuffled = [ex.src_tokens[i] for i in perm]
    outputs = {label: shuffle_through(attention, tokens, perm, positions)
               for positions, label in ((None, "without positions"), (model.pos_encoding, "with positions"))}
    scale = symmetric_range(*[t for pair in outputs.values() for t in pair])
    panels = []
    for label, (a, b) in outputs.items():
        panels += [Panel(a, shuffled, None, f"{label}: attention(shuffled tokens)", xlabel="output dimension",
                         **scale),
                   Panel(b, shuffled, None, f"{label}: shuffle(attention(tokens))", xlabel="output dimension",
                         **scale)]
    plot_panels(g.figure("permutation.png"), panels, cols=2,
                title="Self-attention (encoder layer 0) of a shuffled sentence", colorbar="output value")
    shuffled_text = " ".join(ex.src_tokens[i] for i in perm)
    return f"""## 2. Positional encoding

Attention compares every token with every other token, and nothing in that comparison says where a
token stands. Without help the encoder would read `{SENTENCE}` and `{shuffled_text}` as the same
bag of words. The paper (section 3.5) adds a fixed table of sines and cosines to the embeddings,
{g.source(transformer, 'sinusoidal_encoding')}: each dimension oscillates at its own wavelength, so
each position gets its own pattern, and nearby positions similar ones.

{g.image('positional_encoding.png', 'The sinusoidal positional encoding')}

**Computed live, with the trained model's first self-attention layer** (`encoder.layers.0.self_attn`):
shuffle the {T} input rows with the permutation `{perm}`, run the layer, and compare with running
the layer first and shuffling its output
({g.source(sys.modules[__name__], 'permutation_check')}):

| encoder input | max abs difference |
|---|---|
| token embeddings only | {diff_without:.2e} |
| token embeddings, then positions added (after the shuffle) | {diff_with:.2e} |

Without positions the two agree to float32 rounding: attention is *permutation-equivariant*,
shuffle the tokens and the outputs shuffle the same way. With positions added, the same shuffle
gives different outputs: the layer now knows the order.

{g.image('permutation.png', 'Shuffling before and after self-attention, with and without positions')}
"""


def _section_self_attention(g: _Guide) -> str:
    from tinygrad_tx.models import attention as attention_module
    model, ex = g.model, g.example
    layer_attn = model.encoder.layers[0].self_attn
    mask = g.encoder_mask()
    out, weights, _named = one_head(layer_attn, g.x, 0, mask)
    graph = viz.draw_graph(out)
    _draw(graph, g.figure("one_head_graph.png"))
    real = layer_attn.attn[0, 0]                                       # from the model's own forward pass
    check = (weights.detach() - real).abs().max().item()
    plot_heads(g.figure("one_head_attention.png"), weights.detach(), ex.src_tokens, ex.src_tokens,
               "encoder layer 0, head 0: each row sums to 1", ylabel="queries", xlabel="keys")
    d_k = layer_attn.d_k
    pairs = strongest(real, ex.src_tokens, ex.src_tokens)
    looks = ", ".join(f"`{q}` → `{k}` ({w:.0%})" for q, k, w in pairs)
    return f"""## 3. Self-attention

Each token asks a question (its query, Q), offers a label (its key, K) and carries a content (its
value, V), three linear maps of the same input row. The weight a token gives another is the softmax
of their query-key dot products, scaled by 1/sqrt(d_k) = 1/sqrt({d_k}) so that the softmax does not
saturate; each token's output is the weighted average of the values:
`softmax(Q K^T / sqrt(d_k)) V`, in {g.source(attention_module, 'scaled_dot_product_attention')}.

The graph below is head 0 of the trained model's first encoder layer, for the example sentence,
drawn by `tx.viz.draw_graph(out)`: the input x ({len(ex.src_ids)} tokens x d_model), the head's
slices of W^Q, W^K and W^V, then MatMul with K transposed (Permute), the scale (Mul), the padding
mask (MaskedFill: a single sentence has no padding, so nothing is hidden), Softmax, and the MatMul
with V. Each box shows a tensor's shape and its min/mean/max.

{g.image('one_head_graph.png', 'One attention head as a graph of primitives')}

Its weights, one row per query token, each row summing to 1. They are the very numbers the
model's layer computed in its own forward pass (`layer.self_attn.attn[0, 0]`, max difference
{check:.1e}). Where each token looks most: {looks}.

{g.image('one_head_attention.png', 'Attention weights of one head')}
"""


def _section_multi_head(g: _Guide) -> str:
    model, ex = g.model, g.example
    attn = model.encoder.layers[0].self_attn
    xb, mask = g.layer_inputs()
    out = attn(xb, xb, xb, mask)                                           # (1, T, d_model)
    _draw(viz.draw_graph(out, depth=0, module=attn, show_values=False), g.figure("multi_head_graph.png"))
    heads = []
    for i, layer in enumerate(model.encoder.layers):
        name = f"heads_encoder_layer{i}.png"
        plot_heads(g.figure(name), layer.self_attn.attn[0], ex.src_tokens, ex.src_tokens,
                   f"encoder layer {i} self-attention, one panel per head", ylabel="queries", xlabel="keys")
        heads.append(g.image(name, f"Encoder layer {i}: every head"))
        favourite = []
        for h in range(layer.self_attn.n_heads):
            mean = layer.self_attn.attn[0, h].mean(axis=0)                   # (T,): the weight each key gets
            j = int(mean.argmax().item())
            favourite.append(f"head {h} gives `{ex.src_tokens[j]}` {mean[j].item():.0%}")
        heads.append(f"On average over the queries of layer {i}, " + "; ".join(favourite) + ".")
    c = model.config
    heads_text = "\n\n".join(heads)
    return f"""## 4. Multi-head attention

One softmax gives one way of mixing the tokens. The paper runs n_heads={c.n_heads} attentions side by
side, each in its own d_k = d_model / n_heads = {c.d_model // c.n_heads} dimensional subspace, and
mixes their outputs with W^O. In the code the heads are not a loop: one Linear projects all heads at
once, a Reshape to `(B, T, n_heads, d_k)` and a Permute to `(B, n_heads, T, d_k)` split them, the
heads become a batch axis of the same attention, and Permute + Reshape concatenate them back before
`out_proj` (W^O). The graph of `encoder.layers.0.self_attn` at `depth=0`, where each Linear is folded
into one green box:

{g.image('multi_head_graph.png', 'Multi-head attention at module depth')}

The weights of every head, for the example sentence. The heads of a layer attend differently:
each learned its own W^Q and W^K, so each asks its own question of the tokens.

{heads_text}
"""


def _section_encoder_layer(g: _Guide) -> str:
    from tinygrad_tx.models import transformer
    layer = g.model.encoder.layers[0]
    xb, mask = g.layer_inputs()
    out = layer(xb, mask)
    _draw(viz.draw_graph(out, module=layer, show_values=False), g.figure("encoder_layer_graph.png"))
    c = g.model.config
    return f"""## 5. Feed-forward, residual and LayerNorm: the encoder layer

After attention, every position goes through the same two-layer network on its own,
`FFN(x) = max(0, x W_1 + b_1) W_2 + b_2`, widening d_model={c.d_model} to d_ff={c.d_ff} and back.
Each of the two sublayers is wrapped as `LayerNorm(x + Sublayer(x))`: the residual Add lets the
signal and its gradient skip the sublayer, and LayerNorm keeps every row at mean 0 and variance 1
({g.source(transformer, 'EncoderLayer')}). Here is `encoder.layers.0` with every primitive, each
module in its own cluster (`self_attn` with its four Linears, `linear1`, `linear2`, `norm1`,
`norm2`). Dropout is the identity in eval mode and does not appear.

{g.image('encoder_layer_graph.png', 'The encoder layer, clustered by module')}
"""


def _section_decoder(g: _Guide) -> str:
    from tinygrad_tx.models import transformer
    model, ex = g.model, g.example
    T = len(ex.tgt_in_tokens)
    mask = transformer.causal_mask(T)
    mask = transformer.causal_mask(T).numpy()                              # (T, T) bool
    self_attn = model.decoder.layers[0].self_attn.attn[0].mean(axis=0)      # (T, T), mean of the heads
    plot_panels(g.figure("causal_mask.png"), [
        Panel(mask.astype(tx.float32), ex.tgt_in_tokens, ex.tgt_in_tokens, "causal_mask(T): 1 = may attend",
              cmap="Greens", vmin=0.0, vmax=1.6, xlabel="keys (decoder input)", ylabel="queries (decoder input)",
              annotate=".0f"),
        Panel(self_attn, ex.tgt_in_tokens, ex.tgt_in_tokens, "decoder layer 0 self-attention\n(mean of the heads)",
              cmap="viridis", vmin=0.0, vmax=1.0, xlabel="keys (decoder input)", annotate=".2f",
              colorbar="attention weight"),
    ], cell=0.5)
    cross = []
    for i, layer in enumerate(model.decoder.layers):
        name = f"cross_attention_layer{i}.png"
        plot_heads(g.figure(name), layer.cross_attn.attn[0], ex.tgt_out_tokens, ex.src_tokens,
                   f"decoder layer {i} cross-attention", ylabel="French token predicted (query)",
                   xlabel="English input token (key)")
        cross.append(g.image(name, f"Cross-attention of decoder layer {i}"))
    last = len(model.decoder.layers) - 1
    aligned = strongest(model.decoder.layers[last].cross_attn.attn[0].mean(axis=0), ex.tgt_out_tokens,
                        ex.src_tokens)
    aligned_text = ", ".join(f"`{q}` → `{k}`" for q, k, _ in aligned)
    # A second, longer sentence: from here on the layers' .attn hold its weights.
    second = translate_and_attend(model, g.vocab, SECOND_SENTENCE)
    viz.plot_attention(model.decoder.layers[last].cross_attn.attn[0].mean(axis=0), second.src_tokens,
                       second.tgt_out_tokens, g.figure("cross_attention_second.png"),
                       title=f"decoder layer {last} cross-attention, mean of the heads")
    cross_text = "\n\n".join(cross)
    return f"""## 6. The decoder: the causal mask and cross-attention

The decoder writes the French sentence one token at a time, starting from `<bos>`. In training it
reads the whole correct sentence at once (teacher forcing), so its self-attention must not peek at
the words it has still to predict: {g.source(transformer, 'causal_mask')} lets position i see
positions 0..i only. The mask, and the real decoder self-attention weights it produces (zero above
the diagonal), for the model's translation `{ex.translation}`:

{g.image('causal_mask.png', 'The causal mask and the masked decoder self-attention')}

Between its self-attention and its feed-forward network, each decoder layer has a second attention
whose queries come from the decoder and whose keys and values come from the encoder's output: for
each French word it is about to write, the decoder looks up the English words it needs. Rows are
the French tokens the decoder predicts (`{ex.translation}`), columns the English input tokens:

{cross_text}

Averaged over the heads of the last layer, the English token each French token looks at most:
{aligned_text}. Nobody told the model which words correspond; it learned this alignment from
sentence pairs alone, because looking at the right English word is what predicts the next French
word.

A longer number, `{SECOND_SENTENCE}` → `{second.translation}` (the heads of the last decoder
layer averaged):

{g.image('cross_attention_second.png', 'Cross-attention for a longer number')}
"""


EXPLAIN_EXAMPLE = """x = tx.Tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
w = tx.Tensor([0.5, -1.0, 2.0], requires_grad=True)
x.name, w.name = "x", "w"                      # labels for explain
y = ((x * w).relu().sum(axis=1) ** 2).mean()   # w broadcasts over the rows of x
tx.viz.explain(y)                              # prints the narration, then y's gradients are in x.grad, w.grad
"""


def _explain_text() -> str:
    """Run EXPLAIN_EXAMPLE and return what it prints: the page shows the very code that ran."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(EXPLAIN_EXAMPLE, {"tx": tx})      # noqa: S102 -- our own constant, shown verbatim on the page
    return printed.getvalue()


def _section_autodiff(g: _Guide) -> str:
    attn = g.model.encoder.layers[0].self_attn
    out, _weights, named = one_head(attn, g.x, 0, g.encoder_mask())
    loss = (out * out).mean()
    loss.name = "loss = mean(output^2)"
    with viz.record_gradients():
        loss.backward()
    _draw(viz.draw_graph(loss, backward=True), g.figure("one_head_backward.png"))
    grad_norm = {t.name: math.sqrt(float((t.grad * t.grad).sum().item())) for t in named if t.grad is not None}
    b_k = grad_norm["b^K"]
    return f"""## 7. Autodiff: how the model learns

Training needs the gradient of the loss with respect to every weight. tinygrad_tx records each
primitive as a graph node while the forward pass runs, then walks the graph backwards, from the
loss to the leaves, applying each primitive's local derivative rule (the chain rule). The backward
graph of the attention head of section 3, with a toy loss `mean(output^2)`, drawn with
`tx.viz.draw_graph(loss, backward=True)` after a backward run inside `tx.viz.record_gradients()`:
every red box is one op's backward, the edges carry gradient shapes and norms, and the dashed
boxes are sums that undo broadcasting (the bias b^Q was added to every row, so its gradient adds up
the rows). The gradients land in the leaves at the bottom.

One of them is (almost) zero: ||dL/db^K|| = {b_k:.1e}, against {grad_norm["b^Q"]:.2g} for b^Q. That is
not a bug. Adding the same b^K to every key adds the same number q·b^K to all the scores of a query,
and a softmax does not change when all of its inputs shift together, so the key bias cannot change
the loss. The backward pass finds this out on its own.

{g.image('one_head_backward.png', 'The backward pass of one attention head')}

`tx.viz.explain(loss)` narrates the same walk in words. For a small expression:

{_code(EXPLAIN_EXAMPLE, 'python')}

{_code(_explain_text())}

The engine behind this is short enough to read in one sitting: {g.source(autograd)} (the graph node
and the backward walk) and {g.source(primitives)} (every primitive with its derivative).
{g.autodiff_link}
"""


SECTIONS = (_section_tokens, _section_positions, _section_self_attention, _section_multi_head,
            _section_encoder_layer, _section_decoder, _section_autodiff)


def _translations_table(trained: TrainedModel, example: Translation) -> tuple[str, dict]:
    translator = Translator(trained.model, trained.vocab)
    metrics = translator.evaluate(trained.test_pairs, warn=lambda m: None)
    shown = trained.test_pairs[:5]
    outputs = translator.translate([s for s, _ in shown], warn=lambda m: None)
    lines = ["| English | model output | reference |", "|---|---|---|",
             f"| {example.sentence} | {example.translation} | (the running example) |"]
    for (src, ref), hyp in zip(shown, outputs):
        lines.append(f"| {src} | {hyp} | {trained.vocab.tokenizer.normalize(ref)} |")
    return "\n".join(lines), metrics


def build_guide(out_dir="docs", steps=None, minutes=None, checkpoint=None, quick=False) -> str:
    """Write OUT_DIR/illustrated.md and its figures in OUT_DIR/guide/, from a trained numbers-en-fr model.

    Args:
        out_dir: the folder for illustrated.md; figures go to out_dir/guide/ (created if needed).
        steps, minutes: the training budget when a model is trained (default 3 minutes; `quick`: 30 steps).
        checkpoint: a run directory (as `tinygrad-tx train --out` writes). If it holds a trained run,
            that model is loaded and not trained further; otherwise the model is trained into it, so the
            next build loads it. None: train in a temporary directory.
        quick: a tiny model trained for a few steps on a small slice of the task, to build the whole
            guide in seconds (its pictures show an untrained model).

    Returns:
        the path of illustrated.md.
    """
    trained = load_or_train(checkpoint, steps, minutes, quick)
    os.makedirs(out_dir, exist_ok=True)
    g = _Guide(out_dir, trained)
    parts = []
    for section in SECTIONS:
        _log(section.__name__.replace("_section_", "section: "))
        parts.append(section(g))
    table, metrics = _translations_table(trained, g.example)
    regenerate = "python examples/illustrated.py --out docs      # or: tinygrad-tx guide --out docs/ (trains 3 minutes)"
    if trained.steps:
        regenerate += (f"\npython examples/illustrated.py --out docs --checkpoint runs/guide --steps {trained.steps}"
                       f"   # this page's model: trained once into runs/guide, then reused")
    header = f"""# The illustrated Transformer, drawn by tinygrad_tx

This guide follows a sentence through a Transformer that translates English number words into
French, in the order of [The Illustrated Transformer](https://jalammar.github.io/illustrated-transformer/):
tokens, embeddings, positions, self-attention, heads, the encoder layer, the decoder, and the
backward pass that trains it all. Every figure and number below was computed by tinygrad_tx from a
real trained model when this page was built. Regenerate it (and change it) with

{_code(regenerate, "bash")}

The model: {trained.summary}. On {len(trained.test_pairs)} held-out numbers it translates
{metrics['exact_match']:.1f}% exactly (BLEU {metrics['bleu']:.1f}, chrF {metrics['chrf']:.1f}), greedy decoding:

{table}

The running example is **{SENTENCE}**, which the model translates as **{g.example.translation or "(nothing)"}**.
"""
    text = "\n".join([header] + parts)
    path = os.path.join(out_dir, "illustrated.md")
    atomic_write_text(path, text)
    _log(f"wrote {path} and {len(g.figures)} figures in {g.fig_dir}")
    return path
