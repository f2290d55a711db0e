"""The guide and the autodiff lesson: built from their literate sources (docs/src/*.py), run as notebooks
(a failing cell fails the build), written as markdown with their figures; the committed notebooks and
pages match their sources; the analysis helpers the pages and the CLI use."""
import ast
import math
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from tinygrad_tx.models.attention import MultiHeadAttention
from tinygrad_tx.models.transformer import sinusoidal_encoding

import tinygrad_tx as tx
from tinygrad_tx.app import analysis, guide

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"")
LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,2} (.+)$", flags=re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)


def headings(markdown: str) -> list[str]:
    """The page's # and ## headings, outside fenced code (where # starts a Python comment)."""
    return HEADING.findall(FENCE.sub("", markdown))
BUILD_TOOLS = "pip install jupytext nbformat nbclient ipykernel (the test extra: pip install -e '.[test]')"


def need_build_tools():
    for module in ("jupytext", "nbformat", "nbclient", "ipykernel"):
        pytest.importorskip(module, reason=f"building the guide needs {module}: {BUILD_TOOLS}")


def need_everything():
    need_build_tools()
    pytest.importorskip("matplotlib", reason="pip install matplotlib")
    pytest.importorskip("graphviz", reason="pip install graphviz")
    pytest.importorskip("num2words", reason="pip install num2words")
    if shutil.which("dot") is None:
        pytest.skip("the guide draws graphs with Graphviz's dot: apt-get install graphviz")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", head[16:24])


def images(md: Path) -> list[str]:
    return [m.group(1) or m.group(2) for m in IMAGE.finditer(md.read_text(encoding="utf-8"))]


def local_links(md: Path):
    for match in LINK.finditer(md.read_text(encoding="utf-8")):
        target = match.group(2)
        if not re.match(r"[a-z]+://", target) and not target.startswith("#"):
            yield match.group(1), target.split("#")[0]


# ---------------------------------------------------------------------------- one source, no drift
@pytest.mark.parametrize("page", guide.PAGES)
def test_committed_notebook_matches_its_source(page):
    need_build_tools()
    assert guide.notebooks_in_sync(str(DOCS), [page]) == [], \
        f"docs/notebooks/{page}.ipynb differs from docs/src/{page}.py: run `tinygrad-tx guide`"


@pytest.mark.parametrize("page", guide.PAGES)
def test_committed_page_holds_the_sources_prose_and_code_in_order(page):
    """docs/PAGE.md is what the builder makes of docs/src/PAGE.py: every markdown cell and every shown
    code cell appears in it, in the source's order (the outputs in between come from running it)."""
    need_build_tools()
    text = (DOCS / f"{page}.md").read_text(encoding="utf-8")
    assert text.startswith(f"<!-- Generated from docs/src/{page}.py")
    position = 0
    for cell in guide.read_source(str(DOCS), page).cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if "remove-cell" in tags or (cell["cell_type"] == "code" and "remove-input" in tags):
            continue
        block = cell["source"].strip()
        if not block:
            continue
        found = text.find(block, position)
        assert found >= 0, f"docs/{page}.md lacks (or reorders) this cell of its source:\n{block[:300]}"
        position = found + len(block)
    # ... and nothing was added to the page by hand: its sections are exactly the source's.
    source_headings = [h for cell in guide.read_source(str(DOCS), page).cells if cell["cell_type"] == "markdown"
                       for h in headings(cell["source"])]
    assert headings(text) == source_headings, \
        f"docs/{page}.md has sections its source lacks: edit docs/src/{page}.py, then run `tinygrad-tx guide`"


def test_committed_pages_link_only_to_existing_files_and_show_existing_figures():
    for page in guide.PAGES:
        md = DOCS / f"{page}.md"
        for _, target in local_links(md):
            assert (md.parent / target).exists(), f"{md.name} links to {target}, which does not exist"
        for target in images(md):
            width, height = png_size(md.parent / target)
            assert 200 <= width <= 6000 and 150 <= height <= 6000, f"{target} is {width}x{height}"
    figures = list((DOCS / "guide").iterdir())
    shown = {os.path.normpath(t) for t in images(DOCS / "illustrated.md")}
    assert shown == {os.path.join("guide", f.name) for f in figures}, "every figure is shown, none is stale"
    assert sum(f.stat().st_size for f in figures) < 5_000_000


def test_no_reader_facing_text_points_at_the_tracker():
    for path in [REPO / "README.md", *DOCS.glob("*.md"), *DOCS.glob("src/*.py"), REPO / "examples/exercises/README.md"]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\bissues? #?\d+\b", text, flags=re.IGNORECASE), f"{path.name} names an issue number"


def test_the_builder_and_its_helpers_exec_nothing_and_use_viz_publicly():
    for name in ("guide", "analysis", "figures"):
        tree = ast.parse((REPO / "tinygrad_tx" / "app" / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("exec", "eval"), f"app/{name}.py calls {node.func.id}"
            if isinstance(node, ast.ImportFrom) and node.module and "viz" in node.module:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"app/{name}.py imports private {private} from {node.module}"


def test_the_guide_draws_with_the_public_viz_functions_instead_of_copies():
    """What tx.viz draws (the positional-encoding heatmap, the attention heatmaps) the pages draw by
    calling it: a copy of its matplotlib lines in a page would drift from the library's picture."""
    for page in guide.PAGES:
        tree = ast.parse((DOCS / "src" / f"{page}.py").read_text(encoding="utf-8"))
        called = {node.func.attr for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
        assert "imshow" not in called, f"docs/src/{page}.py draws a heatmap of its own: call tx.viz or app.figures"
    source = (DOCS / "src" / "illustrated.py").read_text(encoding="utf-8")
    assert re.search(r"picture\(viz\.plot_positional_encoding\(", source)


# ---------------------------------------------------------------------------- building and running
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Both pages built in quick mode (a tiny model, a few steps) into out/, the model trained into run/."""
    need_everything()
    root = tmp_path_factory.mktemp("guide")
    written = guide.build(str(DOCS), quick=True, checkpoint=str(root / "run"), out=str(root / "out"))
    return root, written


def test_quick_build_runs_every_cell_and_writes_the_same_structure(built):
    """The notebooks ran top to bottom (their asserts held), and the pages have the committed pages'
    sections and figures: only the numbers, the pictures and the number of layers come from the tiny model."""
    root, written = built
    out = root / "out"
    for page in guide.PAGES:
        md = out / f"{page}.md"
        assert str(md) in written and (out / "notebooks" / f"{page}.ipynb").exists()
        text = md.read_text(encoding="utf-8")
        committed = (DOCS / f"{page}.md").read_text(encoding="utf-8")
        assert headings(text) == headings(committed)
        # one figure per layer: the quick model has fewer layers than the committed page's
        per_layer = [re.sub(r"layer\d+", "layer<i>", name) for name in images(md)]
        committed_per_layer = [re.sub(r"layer\d+", "layer<i>", name) for name in images(DOCS / f"{page}.md")]
        assert list(dict.fromkeys(per_layer)) == list(dict.fromkeys(committed_per_layer))
        for target in images(md):
            width, height = png_size(out / target)
            assert 200 <= width <= 6000 and 150 <= height <= 6000, f"{target} is {width}x{height}"
        assert "Traceback" not in text


def test_quick_build_reports_live_numbers_that_hold_for_any_model(built):
    root, _ = built
    text = (root / "out" / "illustrated.md").read_text(encoding="utf-8")
    m = re.search(r"without positions ([0-9.e+-]+), with positions ([0-9.e+-]+)", text)
    assert float(m.group(1)) < 1e-5 and float(m.group(2)) > 1e-2
    assert float(re.search(r"the layer's own weights\| = ([0-9.e+-]+)", text).group(1)) < 1e-5
    assert "greedy_decode agrees: True" in text and "beam_search agrees: True" in text
    for quantity in ("dL/dlogits", "dL/dO", "dL/dA", "dL/dS"):
        assert float(re.search(rf"{re.escape(quantity)}\s+by hand vs engine: max difference ([0-9.e+-]+)",
                               text).group(1)) < 1e-5
    assert re.search(r"self K \(1, \d+, 1, \d+\)", text), "the cache holds one position after the first step"
    lesson = (root / "out" / "autodiff.md").read_text(encoding="utf-8")
    assert "-> dz/dx = [39.]" in lesson and "-> dz/dx = [3.]" in lesson


def test_a_failing_cell_fails_the_build(tmp_path):
    need_build_tools()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "broken.py").write_text("# %% [markdown]\n# # A page\n\n# %%\nassert 1 + 1 == 3\n")
    import nbclient
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="assert 1 \\+ 1 == 3"):
        guide.build(str(tmp_path), pages=["broken"])
    assert not (tmp_path / "broken.md").exists()


def test_draw_graph_shows_inline_in_jupyter():
    graphviz = pytest.importorskip("graphviz", reason="pip install graphviz")
    x = tx.Tensor([1.0, 2.0], requires_grad=True)
    drawing = tx.viz.draw_graph((x * x).sum())
    assert isinstance(drawing, graphviz.Digraph) and hasattr(drawing, "_repr_mimebundle_")
    if shutil.which("dot") is None:
        pytest.skip("rendering needs Graphviz's dot: apt-get install graphviz")
    bundle = drawing._repr_mimebundle_()
    bundle = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "<svg" in bundle["image/svg+xml"]


def test_a_picture_carries_its_file_name_for_the_builder():
    pytest.importorskip("matplotlib", reason="pip install matplotlib")
    from tinygrad_tx.app.figures import Panel, picture, plot_panels
    fig = plot_panels([Panel(np.eye(3), ["a", "b", "c"], None, "identity")])
    data, meta = picture(fig, "guide/eye.png", "alt text", width=300)._repr_mimebundle_()
    assert meta["image/png"] == {"filename": "guide/eye.png", "alt": "alt text", "width": 300}
    import base64
    assert base64.b64decode(data["image/png"])[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------- the analysis helpers
def test_checkpoint_is_loaded_not_retrained(built):
    root, _ = built
    metrics = (root / "run" / "metrics.jsonl").read_text()
    trained = analysis.load_or_train(str(root / "run"), steps=5, quick=True)
    assert (root / "run" / "metrics.jsonl").read_text() == metrics, "the run was trained again"
    assert trained.model.config.d_model == analysis.QUICK_MODEL["d_model"] and not trained.model.training
    assert len(trained.test_pairs) == analysis.QUICK_PAIRS["test"]
    assert "trained for 30 steps" in trained.summary


def test_the_summary_says_when_validation_decoded_only_a_sample():
    from tinygrad_tx.models.transformer import Transformer

    from tinygrad_tx.app.config import TrainConfig
    cfg = TrainConfig(task="numbers-en-fr", model=dict(analysis.QUICK_MODEL))
    model = Transformer(cfg.model_config(10, 10))
    record = {"step": 500, "seconds": 90.0, "exact_match": 99.0, "decoded": 200, "valid_pairs": 1000}
    assert "validation exact match 99.0% on 200 of 1000 pairs)" in analysis._describe_run(record, cfg, model)
    record["decoded"] = 1000
    assert "validation exact match 99.0%)" in analysis._describe_run(record, cfg, model)
    del record["decoded"], record["valid_pairs"]                 # a run written before decoding was bounded
    assert "validation exact match 99.0%)" in analysis._describe_run(record, cfg, model)


def test_a_checkpoint_of_another_task_is_refused(tmp_path):
    pytest.importorskip("num2words", reason="pip install num2words")
    from tinygrad_tx.app.config import TrainConfig
    from tinygrad_tx.app.train import train
    pairs = tmp_path / "colours.tsv"
    pairs.write_text("".join(f"{a} {b}\t{b} {a}\n" for a in ("red", "green", "blue") for b in ("cat", "dog")))
    run = tmp_path / "colours"
    train(TrainConfig(task=None, data=str(pairs), valid=str(pairs), model=dict(analysis.QUICK_MODEL)), str(run),
          steps=1, progress=False, log=lambda m: None)
    with pytest.raises(ValueError, match="needs a numbers-en-fr model"):
        analysis.load_or_train(str(run), quick=True)


def test_autodiff_lesson_names_real_functions():
    """Each link whose text is a `name` points at a file that defines that name."""
    md = DOCS / "autodiff.md"
    checked = 0
    for text, target in local_links(md):
        name = re.fullmatch(r"`(?:tx\.viz\.|tx\.)?([\w.]+)(?:\(.*\))?`", text)
        if name is None or not target.endswith(".py"):
            continue
        source = (md.parent / target).read_text(encoding="utf-8")
        for part in name.group(1).split("."):
            assert re.search(rf"^\s*(def|class) {re.escape(part)}\b", source, flags=re.MULTILINE), \
                f"autodiff.md: {text} is not defined in {target}"
        checked += 1
    assert checked >= 12


def test_tests_named_in_the_lesson_exist():
    text = (DOCS / "autodiff.md").read_text(encoding="utf-8")
    tests = (REPO / "tests" / "test_engine.py").read_text(encoding="utf-8")
    names = set(re.findall(r"`(test_\w+)`", text))
    assert len(names) >= 5
    for name in names:
        assert f"def {name}(" in tests, f"autodiff.md cites {name}, which test_engine.py does not define"


def test_permutation_check_is_equivariant_without_positions():
    tx.manual_seed(0)
    attention = MultiHeadAttention(16, 4).eval()
    tokens = tx.Tensor(np.random.default_rng(0).standard_normal((6, 16)), dtype=tx.float32)
    perm = [3, 0, 5, 1, 4, 2]
    a, b = analysis.shuffle_through(attention, tokens, perm)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    assert analysis.permutation_check(attention, tokens, perm) < 1e-5
    table = sinusoidal_encoding(6, 16)
    assert analysis.permutation_check(attention, tokens, perm, positions=lambda x: x + table) > 1e-2
    assert analysis.permutation_check(attention, tokens, list(range(6)), positions=lambda x: x + table) < 1e-5


def test_one_head_reproduces_the_layer():
    tx.manual_seed(1)
    attention = MultiHeadAttention(16, 4)
    x = tx.Tensor(np.random.default_rng(1).standard_normal((5, 16)), dtype=tx.float32)
    with tx.no_grad():
        full = attention(x.unsqueeze(0), x.unsqueeze(0), x.unsqueeze(0))
    assert full.shape == (1, 5, 16)
    for head in range(4):
        out, weights, named = analysis.one_head(attention, x, head)
        np.testing.assert_allclose(weights.numpy(), attention.attn[0, head].numpy(), atol=1e-6)
        np.testing.assert_allclose(weights.numpy().sum(axis=-1), np.ones(5), rtol=1e-6)
        assert out.shape == (5, 4)
        assert [t.name for t in named][:3] == [f"W^Q (head {head})", "b^Q", "Q"]
    # The key bias cannot change the output (softmax ignores a shift shared by a whole row).
    (out * out).mean().backward()
    grads = {t.name: t.grad for t in named if t.grad is not None}
    assert math.sqrt(float((grads["b^K"].numpy() ** 2).sum())) < 1e-5 < float(np.abs(grads["b^Q"].numpy()).max())


def test_the_guide_command_checks_the_notebooks(tmp_path, capsys):
    need_build_tools()
    from tinygrad_tx.app.cli import main
    assert main(["guide", "--check", "--docs", str(DOCS)]) == 0
    shutil.copytree(DOCS / "src", tmp_path / "src")
    (tmp_path / "notebooks").mkdir()
    shutil.copy(DOCS / "notebooks" / "autodiff.ipynb", tmp_path / "notebooks" / "autodiff.ipynb")
    assert main(["guide", "--check", "--docs", str(tmp_path)]) == 1       # illustrated.ipynb is missing
    assert "illustrated.ipynb differs from its source" in capsys.readouterr().err
