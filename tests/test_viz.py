"""tinygrad_tx.viz: graph structure on known expressions, depth folding, backward drawings, explain,
rendering with the real `dot`, the no-Graphviz path, and the attention / positional-encoding plots."""
import gc
import html
import os
import re
import struct
import subprocess
import sys
import weakref

import numpy as np
import pytest
from conftest import needs_dot

import tinygrad_tx as tx
from tinygrad_tx import nn
from tinygrad_tx.app import drawings
from tinygrad_tx.viz import graph as viz_graph
from tinygrad_tx.viz import record as viz_record

graphviz = pytest.importorskip("graphviz")


# ---------------------------------------------------------------------------- reading a drawing back
def _attr(statement, name):
    m = re.search(name + r'=(<<TABLE.*?</TABLE>>|"(?:[^"\\]|\\.)*"|[^ \]]+)', statement)
    if m is None:
        return None
    value = m.group(1)
    if value.startswith("<<TABLE"):            # an HTML label: one table row per line
        return "\n".join(html.unescape(cell) for cell in re.findall(r"<TD>(.*?)</TD>", value))
    return value[1:-1] if value.startswith('"') else value


def parse(g):
    """nodes: id -> (label, [enclosing clusters, outermost first]); edges: [(src, dst, label)]; clusters."""
    nodes, edges, stack, clusters = {}, [], [], []
    for statement in g.body:
        s = statement.strip()
        m = re.match(r'subgraph "?(cluster_[^"]*)"? \{', s)
        if m:
            stack.append(m.group(1))
            clusters.append((m.group(1), list(stack[:-1])))
            continue
        if s == "}":
            stack.pop()
            continue
        m = re.match(r"(\w+) -> (\w+)", s)
        if m:
            edges.append((m.group(1), m.group(2), _attr(s, "label")))
            continue
        m = re.match(r"(\w+) \[", s)
        if m and m.group(1) not in ("graph", "node", "edge"):
            nodes[m.group(1)] = (_attr(s, "label"), list(stack))
    return nodes, edges, dict(clusters)


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def labels(g):
    return [label for label, _ in parse(g)[0].values()]


def named(t, name):
    t.name = name
    return t


def broadcast_example():
    """y = sum(a * b) with a (2, 3) and b (3,): b is broadcast over the rows of a."""
    a = named(tx.Tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True), "a")
    b = named(tx.Tensor([0.5, -1.0, 2.0], requires_grad=True), "b")
    return a, b, (a * b).sum()


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x).relu()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def net_loss():
    tx.manual_seed(0)
    net = Net()
    x = named(tx.Tensor(np.ones((3, 4), dtype=np.float32)), "x")
    return net, net(x).sum()


# ---------------------------------------------------------------------------- forward structure
def test_importing_tinygrad_tx_needs_neither_graphviz_nor_matplotlib():
    code = ("import sys, tinygrad_tx as tx; assert tx.viz.draw_graph; "
            "assert 'graphviz' not in sys.modules and 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_forward_nodes_edges_and_labels_of_a_known_expression():
    _, _, y = broadcast_example()
    g = tx.viz.draw_graph(y)
    nodes, edges, clusters = parse(g)
    # a, b, Mul, its output, Sum, its output
    assert len(nodes) == 6 and len(edges) == 5 and clusters == {}
    by_label = {label.split("\n")[0]: vid for vid, (label, _) in nodes.items()}
    assert {"a", "b", "Mul", "Sum"} <= set(by_label)
    assert nodes[by_label["a"]][0] == "a\n(2, 3) float32\nmin 1  mean 3.5  max 6"
    assert nodes[by_label["b"]][0] == "b\n(3,) float32\nmin -1  mean 0.5  max 2"
    assert (by_label["a"], by_label["Mul"], None) in edges and (by_label["b"], by_label["Mul"], None) in edges
    assert "() float32\nvalue 13.5" in labels(g)                   # the root is alive: its value is shown
    assert "Sum\naxes=all" in labels(g)


def test_show_values_false_and_dead_intermediates_show_shapes_only():
    a, b, y = broadcast_example()
    assert not any("min" in label for label in labels(tx.viz.draw_graph(y, show_values=False)))
    # the product was never kept by the user: its tensor is gone, its node only knows shape and dtype
    assert "(2, 3) float32" in labels(tx.viz.draw_graph(y))
    kept = named(a * b, "ab")
    total = kept.sum()
    assert "ab\n(2, 3) float32\nmin -5  mean 2.25  max 12" in labels(tx.viz.draw_graph(total))


def test_scalar_constants_and_masks_are_drawn_as_such():
    x = named(tx.Tensor([[1.0, -2.0]], requires_grad=True), "x")
    y = (x * 0.5).masked_fill(tx.Tensor([[True, False]]), 0.0).sum()
    found = labels(tx.viz.draw_graph(y))
    assert "0.5" in found
    assert "mask\n(1, 2) bool" in found


def test_clusters_nest_by_module_path_and_parameters_are_named():
    net, loss = net_loss()
    g = tx.viz.draw_graph(loss, module=net)
    nodes, _, clusters = parse(g)
    assert clusters["cluster_blocks.1.proj"] == ["cluster_Net", "cluster_blocks", "cluster_blocks.1"]
    assert clusters["cluster_head"] == ["cluster_Net"]
    where = {label.split("\n")[0]: inside for label, inside in nodes.values()}
    assert where["blocks.0.proj.weight"][-1] == "cluster_blocks.0.proj"       # the parameter sits in its module
    assert where["ReLU"][-1] == "cluster_blocks.0" or where["ReLU"][-1] == "cluster_blocks.1"
    assert where["x"] == [] and where["Sum"] == []                             # input and loss stay outside
    assert 'label="blocks.0: Block"' in g.source                               # cluster labels: path and class


def test_clusters_without_module_use_parameter_names_and_scope_paths():
    net, loss = net_loss()
    net.name_parameters()
    nodes, _, clusters = parse(tx.viz.draw_graph(loss))
    # Net.forward runs no op of its own, so without module= there is no root cluster to nest in
    assert clusters["cluster_blocks.0.proj"] == ["cluster_blocks", "cluster_blocks.0"]
    assert any(label.startswith("head.bias\n(2,) float32") for label, _ in nodes.values())


def test_depth_folds_deeper_modules_into_boxes_with_their_shapes():
    net, loss = net_loss()
    full = parse(tx.viz.draw_graph(loss, module=net))
    nodes, edges, clusters = parse(tx.viz.draw_graph(loss, module=net, depth=1))
    boxes = sorted(label for label, _ in nodes.values() if label.startswith("blocks."))
    # Net is level 0, blocks and head level 1, blocks.0 level 2: folded (Linear, ReLU)
    assert boxes == ["blocks.0: Block\nin:  (3, 4)\nout: (3, 4)\n2 ops, 2 parameters (20 values)",
                     "blocks.1: Block\nin:  (3, 4)\nout: (3, 4)\n2 ops, 2 parameters (20 values)"]
    assert set(clusters) == {"cluster_Net", "cluster_blocks", "cluster_head"}
    assert len(nodes) == len(full[0]) - 2 * (4 + 2) + 2            # a block: 2 ops, 2 tensors, 2 params
    box_id = {label.split(":")[0]: vid for vid, (label, _) in nodes.items()}
    assert (box_id["blocks.0"], box_id["blocks.1"], "(3, 4)") in edges
    top = [label for label, _ in parse(tx.viz.draw_graph(loss, module=net, depth=0))[0].values()]
    assert sorted(label for label in top if ":" in label) == [
        "blocks: ModuleList\nin:  (3, 4)\nout: (3, 4)\n4 ops, 4 parameters (40 values)",
        "head: Linear\nin:  (3, 4)\nout: (3, 2)\n1 ops, 2 parameters (10 values)"]


def test_a_folded_box_that_computes_the_root_lists_its_output_shape():
    net, _ = net_loss()
    x = named(tx.Tensor(np.ones((3, 4), dtype=np.float32)), "x")
    out = net(x)                                      # the root is made inside the folded `head`
    boxes = [label for label in labels(tx.viz.draw_graph(out, module=net, depth=0)) if ": " in label]
    assert [label.split("\n")[2] for label in sorted(boxes)] == ["out: (3, 4)", "out: (3, 2)"]


def test_labels_with_underscores_become_padded_tables_and_keep_their_text():
    w = named(tx.Tensor(np.ones((2, 2), dtype=np.float32), requires_grad=True), "W_Q")
    g = tx.viz.draw_graph((w * 2.0).sum())
    assert "<<TABLE" in g.source and "<TD>W_Q</TD>" in g.source      # a plain label would let _ strike line 2
    assert any(label.startswith("W_Q\n(2, 2) float32") for label in labels(g))
    assert "‖" not in g.source                    # the double bar renders as grey boxes in many fonts


def test_max_nodes_raises_a_clear_message_with_counts():
    net, loss = net_loss()
    with pytest.raises(ValueError, match=r"has 19 nodes .*more than max_nodes=10; pass depth=K .*nest 3 deep"):
        tx.viz.draw_graph(loss, module=net, max_nodes=10)
    assert len(parse(tx.viz.draw_graph(loss, module=net, depth=0, max_nodes=10))[0]) <= 10


def test_bad_arguments_are_named():
    _, _, y = broadcast_example()
    with pytest.raises(ValueError, match="rankdir"):
        tx.viz.draw_graph(y, rankdir="UP")
    with pytest.raises(TypeError, match="expected a Tensor"):
        tx.viz.draw_graph(y.numpy())


# ---------------------------------------------------------------------------- backward drawings
def test_backward_drawing_shows_the_unbroadcast_sum_as_its_own_step():
    _, _, y = broadcast_example()
    y.backward()
    g = tx.viz.draw_graph(y, backward=True)
    nodes, edges, _ = parse(g)
    by_label = {label.split("\n")[0]: vid for vid, (label, _) in nodes.items()}
    assert nodes[by_label["sum over axes (0,)"]][0] == "sum over axes (0,)\n(2, 3) -> (3,)\n(undo broadcasting)"
    mul = by_label["Mul backward"]
    assert (mul, by_label["sum over axes (0,)"], "(2, 3)") in edges
    assert (by_label["sum over axes (0,)"], by_label["b.grad (3,)"], "(3,)") in edges
    assert (mul, by_label["a.grad (2, 3)"], "(2, 3)") in edges
    assert len(nodes) == 6 and len(edges) == 5        # seed, Sum, Mul, the unbroadcast sum, a.grad, b.grad
    assert "record_gradients" in g.source             # says how to get the norms


def test_record_gradients_puts_norms_on_the_edges():
    a, b, y = broadcast_example()
    with tx.viz.record_gradients():
        y.backward()
    assert not tx.autograd._backward_hooks         # the block's hook is gone
    nodes, edges, _ = parse(tx.viz.draw_graph(y, backward=True))
    b_norm = np.linalg.norm(b.grad.numpy())
    a_norm = np.linalg.norm(a.grad.numpy())
    edge_labels = [label for _, _, label in edges]
    assert f"(3,)\n|g| = {b_norm:.3g}" in edge_labels and f"(2, 3)\n|g| = {a_norm:.3g}" in edge_labels
    assert f"b.grad (3,)\n|grad| = {b_norm:.3g}" in [label for label, _ in nodes.values()]


def test_backward_drawing_of_a_module_keeps_its_clusters_and_folds_with_depth():
    net, loss = net_loss()
    loss.backward()
    nodes, _, clusters = parse(tx.viz.draw_graph(loss, backward=True, module=net))
    assert clusters["cluster_head"] == ["cluster_Net"]
    assert any(label.startswith("blocks.1.proj.weight.grad (4, 4)") for label, _ in nodes.values())
    folded = labels(tx.viz.draw_graph(loss, backward=True, module=net, depth=0))
    assert any(label.startswith("head: Linear\nin:  (3, 2)\nout: (3, 4)") for label in folded)


# ---------------------------------------------------------------------------- drawing is read-only
def test_drawing_changes_nothing_and_keeps_nothing_alive():
    def run(draw):
        a, b, y = broadcast_example()
        c = (a.exp() * b).mean()
        loss = y + c
        if draw:
            tx.viz.draw_graph(loss)
            with tx.viz.record_gradients():
                loss.backward()
            tx.viz.draw_graph(loss, backward=True, depth=0)
        else:
            loss.backward()
        return a.grad.numpy(), b.grad.numpy(), weakref.ref(loss._ctx), weakref.ref(c)

    plain_a, plain_b, _, _ = run(False)
    drawn_a, drawn_b, node, intermediate = run(True)
    np.testing.assert_array_equal(plain_a, drawn_a)
    np.testing.assert_array_equal(plain_b, drawn_b)
    gc.collect()
    assert node() is None and intermediate() is None
    assert len(viz_record._records) == 0


# ---------------------------------------------------------------------------- explain
def test_explain_narrates_the_broadcast_and_performs_backward(capsys):
    a, b, y = broadcast_example()
    text = tx.viz.explain(y)
    assert capsys.readouterr().out.strip() == text.strip()
    np.testing.assert_allclose(a.grad.numpy(), np.broadcast_to([0.5, -1.0, 2.0], (2, 3)))
    np.testing.assert_allclose(b.grad.numpy(), [5.0, 7.0, 9.0])
    steps = [line for line in text.splitlines() if line.startswith("step")]
    assert steps == ["step 1: Sum -> output ()", "step 2: Mul -> output (2, 3)"]
    assert "local rule           dA = G * B, dB = G * A" in text
    assert "-> input 1, b (3,): gets (3,), norm 12.45, summed over broadcast axes (0,) of the (2, 3) gradient" in text
    assert "Gradients landed in: a.grad (2, 3), b.grad (3,)" in text
    assert not tx.autograd._backward_hooks         # the block's hook is gone


def test_explain_counts_contributions_at_a_diamond():
    x = named(tx.Tensor([1.0, 2.0], requires_grad=True), "x")
    h = x.exp()
    y = (h * h.tanh()).sum()
    text = tx.viz.explain(y, retain_graph=True)
    assert "the sum of 2 contributions" in text
    order = [line.split(":")[1].split()[0] for line in text.splitlines() if line.startswith("step")]
    assert order.index("Exp") > order.index("Tanh") and order.index("Exp") > order.index("Mul")
    grad_once = x.grad.numpy()
    y.backward()                                          # retain_graph kept the saved arrays
    np.testing.assert_allclose(x.grad.numpy(), 2 * grad_once)


def test_every_primitive_states_its_own_rule():
    from tinygrad_tx import primitives
    classes = [c for c in vars(primitives).values()
               if isinstance(c, type) and issubclass(c, tx.Function) and c is not tx.Function]
    assert len(classes) >= 30
    for c in classes:
        assert "rule" in vars(c), f"{c.__name__} has no rule of its own beside its backward"
        assert tx.viz.rule(c) == c.rule


# ---------------------------------------------------------------------------- rendering
def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@needs_dot
def test_render_svg_and_png_with_the_real_dot(tmp_path):
    net, loss = net_loss()
    g = tx.viz.draw_graph(loss, module=net)
    svg = g.pipe(format="svg").decode()
    assert "<svg" in svg and "blocks.0.proj: Linear" in svg
    path = drawings.save_drawing(g, tmp_path / "net.png")
    data = read(path, "rb")
    width, height = png_size(data)
    assert len(data) > 5_000 and width > 200 and height > 400


@needs_dot
@pytest.mark.parametrize("what", ["mlp", "attention"])
def test_draw_command_renders_the_examples(tmp_path, what):
    path = drawings.draw_command(what, tmp_path / f"{what}.png")
    data = read(path, "rb")
    assert len(data) > 5_000 and min(png_size(data)) > 200
    assert read(drawings.draw_command(what, tmp_path / "b.svg", backward=True)).count("backward") >= 3


@needs_dot
@pytest.mark.parametrize("call", [
    {"filename": "g", "format": "png"},
    {"filename": "g.gv", "directory": "sub", "format": "svg", "cleanup": True},
    {"outfile": "out/pic.svg"},
    {"filename": "src.gv", "outfile": "pic.png"},
], ids=["filename", "directory-cleanup", "outfile", "filename-and-outfile"])
def test_render_writes_what_graphviz_writes(tmp_path, monkeypatch, call):
    """Drawing.render is graphviz's render made atomic: the same files, the same returned path."""
    _, _, y = broadcast_example()
    ours = tx.viz.draw_graph(y)
    theirs = graphviz.Digraph(body=list(ours.body), graph_attr=dict(ours.graph_attr),
                              node_attr=dict(ours.node_attr), edge_attr=dict(ours.edge_attr))
    results = {}
    for name, drawing in (("ours", ours), ("theirs", theirs)):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)
        returned = drawing.render(**call)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        results[name] = (os.path.normpath(returned), files)
    assert results["ours"] == results["theirs"]
    picture = tmp_path / "ours" / results["ours"][0]
    assert picture.read_bytes() == ours.pipe(format=picture.suffix.lstrip("."))


def test_a_render_that_fails_halfway_leaves_the_old_picture_whole(tmp_path, monkeypatch):
    """A `dot` that dies after writing half a picture (killed, out of disk) must not cost the old one:
    graphviz's own render lets dot write the target file itself, so the old file would be truncated."""
    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n"
                    "for a in \"$@\"; do case \"$a\" in -O) half=1;; esac; done\n"
                    "printf 'half a picture'\n"                           # what pipe() would read
                    "for a in \"$@\"; do last=\"$a\"; done\n"
                    "[ -n \"$half\" ] && printf 'half a picture' > \"$last.png\"\n"   # what render(-O) would keep
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    _, _, y = broadcast_example()
    drawing = tx.viz.draw_graph(y)
    old = tmp_path / "pic.gv.png"
    old.write_bytes(b"the old picture")
    with pytest.raises(graphviz.CalledProcessError):
        drawing.render(tmp_path / "pic.gv", format="png")
    assert old.read_bytes() == b"the old picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "pic.gv", "pic.gv.png"]   # no temporary left
    assert (tmp_path / "pic.gv").read_text() == drawing.source
    with pytest.raises(graphviz.CalledProcessError):      # graphviz's render: the old picture is lost
        graphviz.Source(drawing.source).render(tmp_path / "pic.gv", format="png")
    assert old.read_bytes() == b"half a picture"


def test_saving_the_dot_source_goes_through_the_atomic_writer(tmp_path, monkeypatch):
    calls = []
    real = viz_graph.atomic_write
    monkeypatch.setattr(viz_graph, "atomic_write", lambda path, data: calls.append(path) or real(path, data))
    _, _, y = broadcast_example()
    drawing = tx.viz.draw_graph(y)
    path = drawing.save(tmp_path / "new" / "y.dot")
    assert calls == [path] and read(path) == drawing.source
    assert drawing.save(path, skip_existing=True) == path and len(calls) == 1


def test_draw_command_names_its_choices(tmp_path):
    with pytest.raises(ValueError, match="mlp, attention, encoder-layer"):
        drawings.draw_command("lstm", tmp_path / "x.svg")
    with pytest.raises(ValueError, match=r"\.svg, \.png, \.pdf, \.dot"):
        drawings.draw_command("mlp", tmp_path / "x.jpeg")
    dot_text = read(drawings.draw_command("attention", tmp_path / "head.dot"))
    assert dot_text.startswith("digraph") and "Softmax" in dot_text and "MaskedFill" in dot_text


def test_without_dot_the_source_is_there_and_rendering_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))          # no `dot` anywhere on PATH
    _, _, y = broadcast_example()
    g = tx.viz.draw_graph(y)
    assert "Mul" in g.source
    with pytest.raises(tx.viz.GraphvizNotInstalled) as info:
        g.pipe(format="svg")
    for hint in ("apt-get install graphviz", "brew install graphviz", "conda install graphviz"):
        assert hint in str(info.value)
    with pytest.raises(tx.viz.GraphvizNotInstalled):
        g.render(tmp_path / "y", format="png")
    written = drawings.draw_command("mlp", tmp_path / "mlp.png")
    assert written == str(tmp_path / "mlp.dot") and read(written).startswith("digraph")
    assert "wrote the dot source" in capsys.readouterr().err.lower()


def test_without_the_graphviz_package_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(viz_graph, "_drawing_class", None)
    monkeypatch.setitem(sys.modules, "graphviz", None)
    _, _, y = broadcast_example()
    with pytest.raises(ImportError, match=r"tinygrad-tx\[viz\]"):
        tx.viz.draw_graph(y)


# ---------------------------------------------------------------------------- models (when present)
def test_transformer_clusters_and_depth_two_fits_on_a_screen():
    pytest.importorskip("tinygrad_tx.models.transformer")
    example = drawings.build_example("transformer")
    nodes, _, clusters = parse(tx.viz.draw_graph(example.loss, module=example.module))
    assert clusters["cluster_decoder.layers.0.cross_attn"] == [
        "cluster_Transformer", "cluster_decoder", "cluster_decoder.layers", "cluster_decoder.layers.0"]
    assert len(nodes) > 1000                   # the full graph is far too big for a screen
    nodes, _, clusters = parse(tx.viz.draw_graph(example.loss, module=example.module, depth=2, max_nodes=80))
    boxes = [label for label, _ in nodes.values() if "Layer\nin:" in label]
    assert len(boxes) == 12 and "cluster_encoder.layers.0" not in clusters
    assert sum(label.startswith("decoder.layers.3: DecoderLayer") for label in boxes) == 1


@needs_dot
def test_encoder_layer_example_renders(tmp_path):
    pytest.importorskip("tinygrad_tx.models.transformer")
    svg = read(drawings.draw_command("encoder-layer", tmp_path / "layer.svg", depth=1))
    assert "self_attn: MultiHeadAttention" in svg and "linear1: Linear" in svg


# ---------------------------------------------------------------------------- plots
def test_plot_attention_writes_one_heatmap_per_head(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((4, 3, 5))
    weights = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    src, tgt = ["the", "cat", "sat", "down", "<eos>"], ["le", "chat", "<eos>"]
    path = tx.viz.plot_attention(tx.Tensor(weights.astype(np.float32)), src, tgt, tmp_path / "attn.png")
    data = read(path, "rb")
    width, height = png_size(data)
    assert len(data) > 5_000 and width > height > 100
    one = read(tx.viz.plot_attention(weights[0], src, tgt, tmp_path / "one.png"), "rb")
    before = sorted(os.listdir(tmp_path))
    fig = tx.viz.plot_attention(weights, src, tgt)                 # no path: the Figure, nothing written
    assert sorted(os.listdir(tmp_path)) == before and len(fig.axes) == 4 + 1     # four heads, a colorbar
    assert png_size(one)[0] < width                                # one head is narrower than four
    with pytest.raises(ValueError, match=r"need 3 tgt_tokens \(rows\) and 5 src_tokens"):
        tx.viz.plot_attention(weights, src[:4], tgt, tmp_path / "bad.png")


def test_positional_encoding_table_and_plot(tmp_path):
    table = tx.viz.sinusoid_table(50, 16)
    pos, i = np.arange(50)[:, None], np.arange(0, 16, 2)[None, :]
    np.testing.assert_allclose(table[:, 0::2], np.sin(pos / 10000 ** (i / 16)))
    np.testing.assert_allclose(table[:, 1::2], np.cos(pos / 10000 ** (i / 16)))
    try:
        from tinygrad_tx.models.transformer import sinusoidal_encoding
        np.testing.assert_allclose(table, sinusoidal_encoding(50, 16).numpy(), atol=1e-6)
    except ImportError:
        pass
    data = read(tx.viz.plot_positional_encoding(50, 16, tmp_path / "pe.png"), "rb")
    assert len(data) > 5_000 and min(png_size(data)) > 200
    # Without a path nothing is written and the Figure comes back (the guide shows it inline).
    fig = tx.viz.plot_positional_encoding(50, 16)
    assert os.listdir(tmp_path) == ["pe.png"]
    assert read(tx.viz.save_figure(fig, tmp_path / "again.png"), "rb") == data


def test_draw_never_follows_a_planted_symlink(tmp_path):
    """draw writes through serialization.atomic_write: a fresh, exclusively created temporary name."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "head.dot"
    os.symlink(victim, f"{out}.tmp-{os.getpid()}")         # the name the old writer used
    drawings.draw_command("attention", out)
    assert victim.read_text() == "precious" and read(out).startswith("digraph")


def test_every_file_the_package_writes_goes_through_the_atomic_writer():
    """No module but serialization.py opens a file for writing, renames over a path, or saves a figure."""
    root = os.path.dirname(tx.__file__)
    writes = re.compile(r"""open\([^)]*,\s*["'][wax]b?\+?["']|os\.replace\(|os\.rename\(|\.savefig\((?!f\b|buffer\b)""")
    offenders = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if not name.endswith(".py") or path.endswith("serialization.py"):
                continue
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            for number, line in enumerate(lines, start=1):
                if writes.search(line) and "/proc/self/clear_refs" not in line:
                    offenders.append(f"{os.path.relpath(path, root)}:{number}: {line.strip()}")
    assert offenders == []


def test_explain_narrates_a_double_backward(capsys):
    x = tx.Tensor([0.5, 1.0], requires_grad=True)
    (g,) = tx.grad(x.tanh().sum(), x, create_graph=True)
    text = tx.viz.explain(g.sum())
    assert "recorded by Tanh's backward" in text
    assert "differentiate a gradient" in text
    assert "local rule           dX = G * (1 - Y^2)" in text          # then through Tanh itself
    np.testing.assert_allclose(x.grad.numpy(), -2 * np.tanh([0.5, 1.0]) * (1 - np.tanh([0.5, 1.0]) ** 2), rtol=1e-6)


def test_explain_with_create_graph_says_it_records(capsys):
    x = tx.Tensor([0.5], requires_grad=True)
    text = tx.viz.explain((x * x).sum(), create_graph=True)
    assert "create_graph=True" in text and x.grad.grad_fn is not None


def test_drawing_a_gradient_shades_what_a_backward_recorded():
    x = tx.Tensor([1.0], requires_grad=True)
    (g,) = tx.grad(x.tanh().sum(), x, create_graph=True)
    source = tx.viz.draw_graph(g).source
    assert "in Tanh's backward" in source and "#ffd9b3" in source
    assert "backward" not in tx.viz.draw_graph(x.tanh()).source
