"""tx.viz.explore: the interactive page. The data it holds is checked in Python; the page itself in a
real browser (Debian's chromium, driven by Playwright), where both are installed.

The README's screenshot comes from `test_screenshot_of_a_trained_run`, of the run the README names:
    tinygrad-tx train --task numbers-en-fr --out runs/explorer --steps 1500
    TX_EXPLORER_RUN=runs/explorer TX_EXPLORER_PNG=docs/img/explorer.png .venv/bin/python -m pytest tests/test_explore.py -k screenshot
(without them it uses a run trained for a few steps, into tmp_path).
"""
import json
import os
import re
import shlex
import shutil
import struct
from pathlib import Path

import pytest

import tinygrad_tx as tx
from tinygrad_tx.app import drawings, tasks
from tinygrad_tx.app.cli import build_parser, main
from tinygrad_tx.serialization import atomic_write
from tinygrad_tx.viz.explain import rule
from tinygrad_tx.viz.explore import page_data
from tinygrad_tx.viz.graph import draw_graph
from tinygrad_tx.viz.record import graph_nodes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPO = Path(__file__).resolve().parent.parent


def page_json(path) -> dict:
    with open(path, encoding="utf-8") as f:
        html = f.read()
    data = re.search(r'<script id="tx-data" type="application/json">(.*?)</script>', html, re.DOTALL).group(1)
    return json.loads(data)


@pytest.fixture(scope="module")
def transformer_page(tmp_path_factory):
    """The 6+6 Transformer example, forward and backward with recorded gradient norms."""
    path = str(tmp_path_factory.mktemp("explore") / "transformer.html")
    assert drawings.explore_command("transformer", path) == path
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    given = os.environ.get("TX_EXPLORER_RUN")
    if given:
        return given
    folder = tmp_path_factory.mktemp("explore_run")
    train = str(folder / "train.tsv")
    tasks.write_tsv(tasks.load_task("copy", "train", seed=0, size=64), train)
    run = str(folder / "run")
    assert main(["train", "--data", train, "--out", run, "--steps", "2", "--batch-size", "16",
                 "--eval-every", "2"]) == 0
    return run


# ---------------------------------------------------------------------------- the page's data
def test_the_page_is_one_file_that_fetches_nothing(transformer_page):
    with open(transformer_page, encoding="utf-8") as f:
        html = f.read()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html)       # nothing loaded from elsewhere
    assert "Viz.instance" in html and "txExplorer" in html                    # viz.js and explore.js inlined
    assert os.path.getsize(transformer_page) < 6_000_000


def test_the_data_matches_the_static_drawing(tmp_path):
    example = drawings.build_example("mlp")
    with tx.viz.record_gradients():
        example.loss.backward()
    data = page_data(example.loss, module=example.module)
    forward, backward = data["views"]["forward"], data["views"]["backward"]
    source = draw_graph(example.loss, module=example.module).source
    for v in forward["vertices"]:          # the same labels as draw_graph (quoted on one DOT line)
        assert v["label"].split("\n")[0] in source
    ops = [v for v in forward["vertices"] if v["kind"] == "op"]
    assert {v["rows"][0][1] for v in ops} == {"Linear", "ReLU", "CrossEntropy"}
    nodes = {node.op_name: node for node in graph_nodes([example.loss])}
    for v in ops:                          # the derivative text that explain prints
        assert dict(v["rows"])["derivative"] == rule(nodes[dict(v["rows"])["op"]])
    weight = next(v for v in forward["vertices"] if v["name"] == "hidden.weight")
    assert weight["values"]["min"] == pytest.approx(float(example.module.hidden.weight.data.min()))
    assert sum(weight["values"]["hist"]["counts"]) == 32
    assert weight["grad"]["norm"] == pytest.approx(float((example.module.hidden.weight.grad.data ** 2).sum() ** 0.5),
                                                   rel=1e-5)
    assert any("|g| = " in e[2] for e in backward["edges"])                   # recorded norms on the edges
    folded = draw_graph(example.loss, module=example.module, depth=0).source
    for path in ("hidden", "out"):         # a folded module shows the box label draw_graph draws
        assert forward["modules"][path]["label"].split("\n")[1] in folded


def test_a_negative_depth_is_refused(tmp_path):
    x = tx.Tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match="explore: depth must be >= 0 or None, not -1"):
        tx.viz.explore(x.sum(), path=str(tmp_path / "p.html"), depth=-1)


def test_a_root_without_grad_has_no_backward_view():
    x = tx.Tensor([1.0, 2.0])
    data = page_data((x * 2).sum())
    assert list(data["views"]) == ["forward"]


def test_attention_of_the_wrong_shape_is_named(tmp_path):
    x = tx.Tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"attention 'enc 0' has weights \(1, 2, 2\) but 3 query"):
        tx.viz.explore(x.sum(), path=str(tmp_path / "p.html"), attention=[
            {"name": "enc 0", "weights": [[[0.5, 0.5], [0.5, 0.5]]], "queries": ["a", "b", "c"], "keys": ["a", "b"]}])
    assert not os.path.exists(tmp_path / "p.html")


def test_draw_html_from_the_command_line(tmp_path, capsys):
    path = str(tmp_path / "mlp.html")
    assert main(["draw", "mlp", "--html", path]) == 0
    assert capsys.readouterr().out.strip() == path
    assert set(page_json(path)["views"]) == {"forward", "backward"}
    assert main(["draw", "mlp"]) == 1
    assert "--out FILE" in capsys.readouterr().err


def test_draw_html_of_a_trained_run_has_every_attention_map(trained_run, tmp_path):
    path = str(tmp_path / "run.html")
    assert main(["draw", "--checkpoint", trained_run, "--sentence", "4 5 9", "--html", path]) == 0
    data = page_json(path)
    with open(os.path.join(trained_run, "config.json")) as f:
        config = json.load(f)["model"]
    assert len(data["attention"]) == 3 * config["n_layers"]
    first = data["attention"][0]
    assert len(first["heads"]) == config["n_heads"]
    for row in first["heads"][0]:
        assert sum(row) == pytest.approx(1.0, abs=1e-3)
    assert "decoder.layers.1.cross_attn" in data["views"]["forward"]["modules"]


# ---------------------------------------------------------------------------- in the browser
@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is missing: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is missing: pip install playwright (it drives the system's chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


class Page:
    """A page opened from a file, collecting console errors."""

    def __init__(self, browser, path):
        self.page = browser.new_page(viewport={"width": 1500, "height": 950})
        self.errors = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto("file://" + os.path.abspath(path))
        self.page.wait_for_selector("body[data-ready=true]", timeout=60_000)

    def node_ids(self):
        return set(self.page.eval_on_selector_all("#graph g.node", "els => els.map(e => e.id)"))

    def text(self):
        return self.page.inner_text("#graph")


def test_expand_switch_search_in_the_browser(browser, transformer_page, tmp_path):
    p = Page(browser, transformer_page)
    before = p.node_ids()
    assert "n:box:encoder.layers.0" in before                      # opens at one box per layer
    p.page.click("[id='n:box:encoder.layers.0']")                  # a click opens the module ...
    after = p.node_ids()
    assert "n:box:encoder.layers.0" not in after
    assert "n:box:encoder.layers.0.self_attn" in after and len(after) > len(before)
    p.page.click("[id='c:encoder.layers.0'] > text")              # ... a click on its frame folds it
    assert p.node_ids() == before

    p.page.hover("[id='n:box:decoder.layers.0']")                  # hovering shows the module's details
    assert "decoder.layers.0: DecoderLayer" in p.page.inner_text("#details")

    assert "|g| = " not in p.text()
    p.page.click("#view-backward")                                  # the backward view: gradient norms
    assert re.search(r"\|g\| = \d", p.text())
    grad_step = p.page.locator("#graph g.node", has_text="Add backward").first
    grad_step.click()
    assert "dA = G, dB = G" in p.page.inner_text("#details")       # the derivative rule, as explain prints it

    p.page.fill("#search", "decoder.layers.1.cross_attn")
    p.page.press("#search", "Enter")
    hit = p.page.locator("#graph .hit")
    assert hit.count() == 1 and hit.get_attribute("id") == "n:box:decoder.layers.1.cross_attn"
    box, view = hit.bounding_box(), p.page.locator("#graph").bounding_box()
    centre = (view["x"] + view["width"] / 2, view["y"] + view["height"] / 2)
    assert box["x"] <= centre[0] <= box["x"] + box["width"] and box["y"] <= centre[1] <= box["y"] + box["height"]
    p.page.fill("#search", "no.such.module")
    p.page.press("#search", "Enter")
    assert "no node or module matches" in p.page.inner_text("#status")

    png = tmp_path / "explorer.png"
    p.page.screenshot(path=str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert p.errors == []


def test_screenshot_of_a_trained_run(browser, trained_run, tmp_path):
    html = str(tmp_path / "run.html")
    assert main(["draw", "--checkpoint", trained_run, "--sentence", "one thousand, nine hundred and seventy-one" if os.environ.get(
        "TX_EXPLORER_RUN") else "4 5 9", "--html", html]) == 0
    p = Page(browser, html)
    p.page.click("#depths button[data-depth='2']")                # one box per layer, then open one head
    p.page.click("[id='n:box:encoder.layers.0']")
    p.page.click("[id='n:box:encoder.layers.0.self_attn']")
    p.page.fill("#search", "encoder.layers.0.self_attn.q_proj.weight")     # a tensor: opens q_proj too
    p.page.press("#search", "Enter")
    p.page.click("#graph .hit")
    details = p.page.inner_text("#details")
    assert "values: min" in details and "gradient: min" in details   # value and gradient histograms
    assert p.page.locator("#details .stats svg rect").count() > 1
    p.page.select_option("#attention-layer", label="decoder 0 cross-attention")
    p.page.select_option("#attention-head", "1")
    cross = next(a for a in page_json(html)["attention"] if a["name"] == "decoder 0 cross-attention")
    assert p.page.locator("#attention-map tr").count() == 1 + len(cross["queries"])
    assert p.page.locator("#attention-map td").count() == len(cross["queries"]) * len(cross["keys"])
    png = os.environ.get("TX_EXPLORER_PNG") or str(tmp_path / "explorer.png")
    atomic_write(png, p.page.screenshot())                         # the README's picture: whole or not at all
    with open(png, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1500, 950)
    assert p.errors == []


def test_the_readme_names_the_commands_that_retake_its_screenshot():
    """docs/img/explorer.png can be made again: the README's explorer section names the training run
    and the command that screenshots it (test_screenshot_of_a_trained_run, through TX_EXPLORER_RUN and
    TX_EXPLORER_PNG), and the committed picture is what that test takes (1500 x 950)."""
    section = (REPO / "README.md").read_text(encoding="utf-8").split("### The explorer", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "the README's explorer section has no bash block with the commands behind its screenshot"
    train, shoot = block.group(1).strip().splitlines()
    words = shlex.split(train)
    assert words[:2] == ["tinygrad-tx", "train"]
    args = build_parser().parse_args(words[1:])                  # the CLI accepts it as written
    assert args.steps is not None, "a run of a fixed number of steps comes out the same each time"
    assert shoot == (f"TX_EXPLORER_RUN={args.out} TX_EXPLORER_PNG=docs/img/explorer.png "
                     ".venv/bin/python -m pytest tests/test_explore.py -k screenshot")
    assert '<img src="docs/img/explorer.png"' in section
    with open(REPO / "docs" / "img" / "explorer.png", "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1500, 950)
