"""Ready-made computations to draw, and the `tinygrad-tx draw` command that renders them."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

from tinygrad_tx import backend, nn, random
from tinygrad_tx import functional as F
from tinygrad_tx.nn import Parameter
from tinygrad_tx.serialization import atomic_write
from tinygrad_tx.tensor import Tensor
from tinygrad_tx.viz.explore import explore
from tinygrad_tx.viz.graph import GraphvizNotInstalled, draw_graph
from tinygrad_tx.viz.record import record_gradients

EXAMPLES = ("mlp", "attention", "encoder-layer", "decoder-layer", "transformer")
FORMATS = ("svg", "png", "pdf", "dot")
TRANSFORMER_DEPTH = 2


@dataclass
class Example:
    output: Tensor                   # what a forward drawing starts from
    loss: Tensor                     # a scalar for backward drawings
    module: nn.Module | None = None
    keep: list = field(default_factory=list)    # named intermediates kept alive so drawings show their values


class MLP(nn.Module):
    """Two linear layers with a ReLU between them."""

    def __init__(self, d_in=4, d_hidden=8, d_out=3):
        super().__init__()
        self.hidden = nn.Linear(d_in, d_hidden)
        self.out = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.out(self.hidden(x).relu())


def _named(t: Tensor, name: str) -> Tensor:
    t.name = name
    return t


def _mlp(rng) -> Example:
    mlp = MLP()
    x = _named(Tensor(rng.standard_normal((2, 4)).astype(backend.float32)), "x")
    logits = _named(mlp(x), "logits")
    loss = _named(F.cross_entropy(logits, Tensor([0, 2])), "loss")
    return Example(loss, loss, mlp, [logits])


def _attention_head(rng) -> Example:
    """One causal attention head, written out with the engine's primitives. T != d_k, so that the
    transpose in Q K^T shows in the shapes; the mask says True = may attend, as models/attention.py."""
    T, d_model, d_k = 5, 8, 3
    xp = backend.get_xp("cpu")
    x = _named(Tensor(rng.standard_normal((T, d_model)).astype(backend.float32)), "x")
    weights = {}
    for name in ("W_Q", "W_K", "W_V"):
        weights[name] = _named(Parameter(rng.standard_normal((d_model, d_k)).astype(backend.float32)
                                         / math.sqrt(d_model)), name)
    q = _named(x @ weights["W_Q"], "Q")                                  # (T, d_k)
    k = _named(x @ weights["W_K"], "K")                                  # (T, d_k)
    v = _named(x @ weights["W_V"], "V")                                  # (T, d_k)
    scores = _named((q @ k.transpose(0, 1)) * (1.0 / math.sqrt(d_k)), "scores = Q K^T / sqrt(d_k)")  # (T, T)
    allowed = _named(Tensor(xp.tril(xp.ones((T, T), dtype=backend.bool_))), "causal mask (True = may attend)")
    hidden = _named(~allowed, "~causal mask (True = a future key)")          # as models/attention.py does
    masked = _named(scores.masked_fill(hidden, -1e9), "masked scores")
    attn = _named(masked.softmax(axis=-1), "attention weights")          # (T, T)
    out = _named(attn @ v, "output")                                     # (T, d_k)
    loss = _named(out.sum(), "loss")
    return Example(out, loss, None, [q, k, v, scores, allowed, hidden, masked, attn])


def _transformer_module():
    try:
        from tinygrad_tx.models import transformer
    except ImportError as e:
        raise RuntimeError("drawing encoder-layer, decoder-layer or transformer needs the models package "
                           f"(models/transformer.py), which could not be imported: {e}") from e
    return transformer


def build_example(what: str) -> Example:
    """Build the named example with fixed seeds: mlp | attention | encoder-layer | decoder-layer | transformer."""
    if what not in EXAMPLES:
        raise ValueError(f"draw: unknown example {what!r}; choose one of {', '.join(EXAMPLES)}")
    random.manual_seed(0)
    rng = random.generator(0)
    if what == "mlp":
        return _mlp(rng)
    if what == "attention":
        return _attention_head(rng)
    return _model_example(what, rng)


def save_drawing(graph, out) -> str:
    """Write a drawing to FILE.svg|png|pdf|dot. Without Graphviz's `dot`, write FILE.dot and say so.

    Returns:
        the path written.
    """
    out = os.fspath(out)
    fmt = os.path.splitext(out)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"draw: cannot tell the format of {out!r}; end it in one of "
                         f"{', '.join('.' + f for f in FORMATS)}")
    if fmt != "dot":
        try:
            atomic_write(out, graph.pipe(format=fmt))
            return out
        except GraphvizNotInstalled as e:
            dot_path = os.path.splitext(out)[0] + ".dot"
            print(f"{e}\nWrote the DOT source to {dot_path} instead; after installing Graphviz run:\n"
                  f"    dot -T{fmt} {dot_path} -o {out}", file=sys.stderr)
            out = dot_path
    atomic_write(out, graph.source)
    return out


def draw_command(what: str, out, depth: int | None = None, backward: bool = False) -> str:
    """`tinygrad-tx draw --what WHAT [--depth K] [--backward] --out FILE`: returns the path written.

    The transformer (6+6 layers, about 2,000 ops) is drawn at depth 2 unless a depth is given:
    every op takes Graphviz a minute or more to lay out.
    """
    if depth is None and what == "transformer":
        depth = TRANSFORMER_DEPTH
        print(f"draw: drawing the transformer at --depth {depth} (one box per layer); "
              "pass --depth 10 to draw every op", file=sys.stderr)
    example = build_example(what)
    if backward:
        with record_gradients():
            example.loss.backward()
        graph = draw_graph(example.loss, backward=True, depth=depth, module=example.module)
    else:
        graph = draw_graph(example.output, depth=depth, module=example.module)
    return save_drawing(graph, out)


def explore_command(what: str, out, depth: int | None = None) -> str:
    """`tinygrad-tx draw WHAT --html FILE`: the example as an interactive page, forward and backward
    (with gradient norms) from its loss. Returns the path written."""
    example = build_example(what)
    with record_gradients():
        example.loss.backward()
    return explore(example.loss, module=example.module, path=out, depth=depth,
                   title=f"tinygrad_tx: {what} (forward, and backward from its loss)")


def _model_example(what: str, rng) -> Example:
    """An EncoderLayer, a DecoderLayer (both in eval mode, no dropout) or a 6+6 training step."""
    transformer = _transformer_module()
    B, S, L, d_model = 2, 5, 4, 16

    def floats(*shape):
        return Tensor(rng.standard_normal(shape).astype(backend.float32))

    if what == "transformer":
        config = transformer.TransformerConfig(src_vocab=20, tgt_vocab=20, d_model=32, n_heads=4, d_ff=64,
                                               n_layers=6, dropout=0.1, max_len=32)
        model = transformer.Transformer(config)
        src = _named(Tensor(rng.integers(1, 20, size=(B, S + 2))), "src tokens")
        tgt = rng.integers(1, 20, size=(B, L + 1))
        tgt_in = _named(Tensor(tgt[:, :-1]), "tgt tokens (shifted right)")
        tgt_out = _named(Tensor(tgt[:, 1:]), "tgt tokens (next)")
        logits = _named(model(src, tgt_in), "logits")
        loss = _named(F.cross_entropy(logits, tgt_out, ignore_index=config.pad_id, label_smoothing=0.1), "loss")
        return Example(loss, loss, model, [logits])
    if what == "encoder-layer":
        layer = transformer.EncoderLayer(d_model, n_heads=2, d_ff=32, dropout=0.0).eval()
        x = _named(floats(B, S, d_model), "x")
        lengths = Tensor([[S], [S - 2]])                                  # the second sentence has 2 pads
        mask = _named((Tensor(list(range(S))) < lengths).reshape(B, 1, 1, S), "padding mask")  # (B, 1, 1, S)
        out = _named(layer(x, mask), "output")
    else:
        layer = transformer.DecoderLayer(d_model, n_heads=2, d_ff=32, dropout=0.0).eval()
        x = _named(floats(B, L, d_model), "x")
        memory = _named(floats(B, S, d_model), "memory (encoder output)")
        tgt_mask = _named(transformer.causal_mask(L), "causal mask")
        out = _named(layer(x, memory, tgt_mask), "output")
    target = _named(floats(*out.shape), "target")
    loss = _named(((out - target) ** 2).mean(), "loss")                  # mean squared error to a random target
    return Example(out, loss, layer, [])
