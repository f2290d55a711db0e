"""Size and load time of the explorer page (tx.viz.explore) of a Transformer reading one sentence.

    python benchmarks/explorer_page.py                    # presets small and paper, 3 loads each
    python benchmarks/explorer_page.py --run RUN_DIR      # also the page of a trained run

For each preset: the page `tinygrad-tx draw --checkpoint RUN --sentence ... --html` writes (forward,
backward with gradient norms, every attention head), here for a model with that preset's shape and
random weights. Opened from disk in Debian's chromium (Playwright, no browser download), it reports:
the file size; first contentful paint (the page's header and controls); the time until the first
graph is drawn (viz.js compiled, the opening depth laid out by Graphviz in WebAssembly); and the time
to lay out every op (depth "all") and the backward view at the opening depth. Medians of the loads.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

from playwright.sync_api import sync_playwright
from tinygrad_tx.models.transformer import Transformer, TransformerConfig

from tinygrad_tx import random as tx_random
from tinygrad_tx.app import tasks
from tinygrad_tx.app.cli import explore_sentence, explore_translation
from tinygrad_tx.app.config import MODEL_PRESETS
from tinygrad_tx.app.vocab import PAD, PairVocab

SENTENCE = "one thousand, nine hundred and seventy-one"

MEASURE = """async () => {
  await window.txExplorer.ready;
  const paint = performance.getEntriesByName('first-contentful-paint')[0];
  const drawn = performance.getEntriesByName('tx-graph-drawn')[0];
  const e = window.txExplorer, g = e.visibleGraph(e.currentView());
  return {fcp: paint.startTime, drawn: drawn.startTime, nodes: g.nodes.length + g.boxes.length};
}"""
TIME = """(action) => {
  const e = window.txExplorer, t = performance.now();
  if (action === 'all') { e.setDepth(Infinity); e.render(); }
  else { document.querySelector('#view-backward').click(); }
  const g = e.visibleGraph(e.currentView());
  return {ms: performance.now() - t, nodes: g.nodes.length + g.boxes.length};
}"""


def preset_page(name: str, folder: str) -> str:
    tx_random.manual_seed(0)
    vocab = PairVocab.build(tasks.load_task("numbers-en-fr", "train", seed=0, size=300))
    config = TransformerConfig(src_vocab=len(vocab.src), tgt_vocab=len(vocab.tgt), pad_id=PAD, **MODEL_PRESETS[name])
    path = os.path.join(folder, f"{name}.html")
    return explore_sentence(Transformer(config), vocab, SENTENCE, path, title=f"{name} (random weights)")


def measure(browser, path: str, loads: int) -> dict:
    runs = []
    for _ in range(loads):
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        errors = []
        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
        page.goto("file://" + os.path.abspath(path))
        result = page.evaluate(MEASURE)
        result["all"] = page.evaluate(TIME, "all")
        page.close()
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        page.goto("file://" + os.path.abspath(path))
        page.evaluate(MEASURE)
        result["backward"] = page.evaluate(TIME, "backward")
        page.close()
        if errors:
            raise RuntimeError(f"{path}: page errors {errors}")
        runs.append(result)
    med = lambda f: statistics.median(f(r) for r in runs)
    return {"mb": os.path.getsize(path) / 1e6, "fcp": med(lambda r: r["fcp"]), "drawn": med(lambda r: r["drawn"]),
            "nodes": runs[0]["nodes"], "all_ms": med(lambda r: r["all"]["ms"]), "all_nodes": runs[0]["all"]["nodes"],
            "back_ms": med(lambda r: r["backward"]["ms"]), "back_nodes": runs[0]["backward"]["nodes"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["small", "paper"], choices=list(MODEL_PRESETS))
    p.add_argument("--run", help="also measure the page of this trained run")
    p.add_argument("--loads", type=int, default=3)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="explorer-bench-")
    pages = []
    for name in args.presets:
        t = time.perf_counter()
        pages.append((name, preset_page(name, folder), time.perf_counter() - t))
    if args.run:
        t = time.perf_counter()
        path = explore_translation(args.run, SENTENCE, os.path.join(folder, "run.html"))
        pages.append((f"run {os.path.basename(os.path.normpath(args.run))}", path, time.perf_counter() - t))
    print(f"chromium {args.chromium}, {args.loads} loads each (medians); pages in {folder}")
    print("| page | size MB | written in s | first paint ms | graph drawn ms | nodes at start | "
          "depth all: ms (nodes) | backward: ms (nodes) |")
    print("|---|---|---|---|---|---|---|---|")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        for name, path, seconds in pages:
            m = measure(browser, path, args.loads)
            print(f"| {name} | {m['mb']:.2f} | {seconds:.1f} | {m['fcp']:.0f} | {m['drawn']:.0f} | {m['nodes']} | "
                  f"{m['all_ms']:.0f} ({m['all_nodes']}) | {m['back_ms']:.0f} ({m['back_nodes']}) |")
            sys.stdout.flush()
        browser.close()


if __name__ == "__main__":
    main()
