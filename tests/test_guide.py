"""The illustrated guide (tinygrad_tx.app.guide): a reduced build in seconds, its figures and links, and
the live computations it reports (permutation equivariance, one head written out by hand)."""
import math
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("graphviz")
pytest.importorskip("num2words")

import tinygrad_tx as tx
from tinygrad_tx.models.attention import MultiHeadAttention
from tinygrad_tx.models.transformer import sinusoidal_encoding
from tinygrad_tx.app import guide

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ["1. Tokenization and embedding", "2. Positional encoding", "3. Self-attention",
            "4. Multi-head attention", "5. Feed-forward, residual and LayerNorm: the encoder layer",
            "6. The decoder: the causal mask and cross-attention", "7. Autodiff: how the model learns"]
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", head[16:24])


def local_targets(md: Path, pattern=LINK):
    """(text, target) of every link in md that is not a web address, anchors dropped."""
    text = md.read_text(encoding="utf-8")
    for match in pattern.finditer(text):
        target = match.group(match.lastindex)
        if not re.match(r"[a-z]+://", target) and not target.startswith("#"):
            yield (match.group(1) if pattern is LINK else ""), target.split("#")[0]


def assert_links_resolve(md: Path):
    for _, target in list(local_targets(md)) + list(local_targets(md, IMAGE)):
        assert (md.parent / target).exists(), f"{md.name} links to {target}, which does not exist"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A reduced guide (tiny model, a few steps) trained into run/ and written to out/."""
    root = tmp_path_factory.mktemp("guide")
    path = guide.build_guide(str(root / "out"), checkpoint=str(root / "run"), quick=True)
    return root, Path(path)


def test_quick_build_writes_every_section_and_figure(built):
    _root, md = built
    assert md.name == "illustrated.md" and md.parent.name == "out"
    text = md.read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert headings == SECTIONS
    images = [target for _, target in local_targets(md, IMAGE)]
    assert len(images) >= 10
    figures = sorted((md.parent / guide.FIGURES).iterdir())
    shown = sorted(os.path.normpath(t) for t in set(images))
    assert shown == sorted(os.path.join(guide.FIGURES, f.name) for f in figures), \
        "every figure is shown, and only figures that exist"
    for f in figures:
        width, height = png_size(f)
        assert 250 <= width <= 6000 and 250 <= height <= 6000, f"{f.name} is {width}x{height}"
        assert 5_000 < f.stat().st_size < 1_500_000, f"{f.name} has {f.stat().st_size} bytes"
    assert_links_resolve(md)


def test_quick_build_reports_live_numbers(built):
    _root, md = built
    text = md.read_text(encoding="utf-8")
    # Section 2's table: equivariant without positions, not with them.
    without = float(re.search(r"\| token embeddings only \| ([0-9.e+-]+) \|", text).group(1))
    with_positions = float(re.search(r"positions added \(after the shuffle\) \| ([0-9.e+-]+) \|", text).group(1))
    assert without < 1e-5
    assert with_positions > 1e-2
    # Section 3: the hand-written head reproduces the layer's own weights.
    assert float(re.search(r"max difference\s+([0-9.e+-]+)\)", text).group(1)) < 1e-5
    # Section 7: explain's narration of the broadcasting example.
    assert "summed over broadcast axes (0,)" in text and "Gradients landed in: x.grad (2, 3), w.grad (3,)" in text


def test_checkpoint_is_loaded_not_retrained(built):
    root, _md = built
    metrics = (root / "run" / "metrics.jsonl").read_text()
    trained = guide.load_or_train(str(root / "run"), steps=5, quick=True)
    assert (root / "run" / "metrics.jsonl").read_text() == metrics, "the run was trained again"
    assert trained.model.config.d_model == guide.QUICK_MODEL["d_model"] and not trained.model.training
    assert len(trained.test_pairs) == guide.QUICK_PAIRS["test"]
    assert "trained for 30 steps" in trained.summary


def test_a_checkpoint_of_another_task_is_refused(tmp_path):
    from tinygrad_tx.app.config import TrainConfig
    from tinygrad_tx.app.train import train
    pairs = tmp_path / "colours.tsv"
    pairs.write_text("".join(f"{a} {b}\t{b} {a}\n" for a in ("red", "green", "blue") for b in ("cat", "dog")))
    run = tmp_path / "colours"
    train(TrainConfig(task=None, data=str(pairs), valid=str(pairs), model=dict(guide.QUICK_MODEL)), str(run),
          steps=1, progress=False, log=lambda m: None)
    with pytest.raises(ValueError, match="needs a numbers-en-fr model"):
        guide.load_or_train(str(run), quick=True)


def test_committed_docs_link_only_to_existing_files():
    for name in ("illustrated.md", "autodiff.md"):
        md = REPO / "docs" / name
        assert md.exists(), f"docs/{name} is missing"
        assert_links_resolve(md)
    for _, target in local_targets(REPO / "docs" / "illustrated.md", IMAGE):
        png_size(REPO / "docs" / target)
    total = sum(f.stat().st_size for f in (REPO / "docs" / guide.FIGURES).iterdir())
    assert total < 5_000_000


def test_autodiff_tour_names_real_functions():
    """Each link whose text is a `name` points at a file that defines that name."""
    md = REPO / "docs" / "autodiff.md"
    checked = 0
    for text, target in local_targets(md):
        name = re.fullmatch(r"`(?:tx\.viz\.)?([\w.]+)(?:\(.*\))?`", text)
        if name is None or not target.endswith(".py"):
            continue
        source = (md.parent / target).read_text(encoding="utf-8")
        for part in name.group(1).split("."):
            assert re.search(rf"^\s*(def|class) {re.escape(part)}\b", source, flags=re.MULTILINE), \
                f"autodiff.md: {text} is not defined in {target}"
        checked += 1
    assert checked >= 12


def test_tests_named_in_the_tour_exist():
    text = (REPO / "docs" / "autodiff.md").read_text(encoding="utf-8")
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
    a, b = guide.shuffle_through(attention, tokens, perm)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    assert guide.permutation_check(attention, tokens, perm) < 1e-5
    table = sinusoidal_encoding(6, 16)
    assert guide.permutation_check(attention, tokens, perm, positions=lambda x: x + table) > 1e-2
    assert guide.permutation_check(attention, tokens, list(range(6)), positions=lambda x: x + table) < 1e-5


def test_one_head_reproduces_the_layer():
    tx.manual_seed(1)
    attention = MultiHeadAttention(16, 4)
    x = tx.Tensor(np.random.default_rng(1).standard_normal((5, 16)), dtype=tx.float32)
    with tx.no_grad():
        full = attention(x.unsqueeze(0), x.unsqueeze(0), x.unsqueeze(0))
    assert full.shape == (1, 5, 16)
    for head in range(4):
        out, weights, named = guide.one_head(attention, x, head)
        np.testing.assert_allclose(weights.numpy(), attention.attn[0, head].numpy(), atol=1e-6)
        np.testing.assert_allclose(weights.numpy().sum(axis=-1), np.ones(5), rtol=1e-6)
        assert out.shape == (5, 4)
        assert [t.name for t in named][:3] == [f"W^Q (head {head})", "b^Q", "Q"]
    # The key bias cannot change the output (softmax ignores a shift shared by a whole row).
    (out * out).mean().backward()
    grads = {t.name: t.grad for t in named if t.grad is not None}
    assert math.sqrt(float((grads["b^K"].numpy() ** 2).sum())) < 1e-5 < float(np.abs(grads["b^Q"].numpy()).max())
