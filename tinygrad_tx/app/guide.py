"""The guide builder: each page of docs/ from one literate source, through a notebook that really runs.

    build("docs")                       # every page: docs/src/NAME.py -> notebook -> run -> docs/NAME.md
    build("docs", quick=True, out="/tmp/docs")    # a tiny model, a few steps (the tests, CI)
    notebooks_in_sync("docs")           # [] when every committed notebook matches its source

A page's source is a jupytext percent-format file, docs/src/NAME.py: markdown cells hold the prose,
code cells the computations, in the way The Annotated Transformer keeps them together. The builder

  1. reads it with jupytext and writes the paired notebook docs/notebooks/NAME.ipynb (without outputs,
     so its diff stays readable; open it in Jupyter and run it top to bottom);
  2. executes that notebook with nbclient, in a kernel of this very interpreter;
  3. writes docs/NAME.md from the executed notebook: the prose, the code, the printed outputs, and every
     figure the notebook shows with `figures.picture(..., "guide/NAME.png")`, saved as docs/guide/NAME.png.

Live numbers in the prose come from cells that display markdown, and every claim the prose makes
about them is an `assert` in a cell: a claim that stops holding stops the build.
Code cells tagged `remove-input` show only their output on the page, `remove-output` only their code,
`remove-cell` nothing (the notebook keeps them all).
"""
from __future__ import annotations

import base64
import contextlib
import os
import sys
import tempfile

from tinygrad_tx.serialization import atomic_write, atomic_write_text

PAGES = ("illustrated", "autodiff")
SOURCE_DIR, NOTEBOOK_DIR = "src", "notebooks"
PAIRING = "notebooks//ipynb,src//py:percent"        # jupytext: the notebook and its source, side by side
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
CELL_TIMEOUT = 900                                  # seconds; training the full guide's model takes minutes
ENV_QUICK, ENV_CHECKPOINT = "TX_GUIDE_QUICK", "TX_GUIDE_CHECKPOINT"
PAGE_FIGURES = "guide"                              # the pages' figures, under docs/ (the README's are in img/)


def _log(message: str) -> None:
    print(f"guide: {message}", file=sys.stderr)


def _need(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(f"the guide builder needs {module}: pip install jupytext nbformat nbclient ipykernel "
                          "(all in the test extra: pip install -e '.[test]')") from e


# ---------------------------------------------------------------------------- source -> notebook
def source_path(docs: str, page: str) -> str:
    return os.path.join(docs, SOURCE_DIR, f"{page}.py")


def notebook_path(docs: str, page: str) -> str:
    return os.path.join(docs, NOTEBOOK_DIR, f"{page}.ipynb")


def read_source(docs: str, page: str):
    """The page's source as an nbformat notebook without outputs, with the pairing and kernel metadata."""
    jupytext = _need("jupytext")
    with open(source_path(docs, page), encoding="utf-8") as f:
        nb = jupytext.reads(f.read(), fmt="py:percent")
    nb.metadata["jupytext"] = {"formats": PAIRING}
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{page}-{i}"                 # stable ids: the same source gives the same file
    return nb


def notebook_text(nb) -> str:
    nbformat = _need("nbformat")
    return nbformat.writes(nb) + "\n"


def notebooks_in_sync(docs: str = "docs", pages=PAGES) -> list[str]:
    """The committed notebooks that differ from what their sources give (empty: all in sync)."""
    stale = []
    for page in pages:
        path = notebook_path(docs, page)
        want = notebook_text(read_source(docs, page))
        if not os.path.exists(path):
            stale.append(path)
            continue
        with open(path, encoding="utf-8") as f:
            have = f.read()
        if have != want:
            stale.append(path)
    return stale


# ---------------------------------------------------------------------------- running it
@contextlib.contextmanager
def _kernel_manager():
    """A KernelManager whose kernel is this interpreter (sys.executable) with ipykernel, whatever
    kernels Jupyter has registered elsewhere on the machine."""
    _need("ipykernel")
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    with tempfile.TemporaryDirectory(prefix="tinygrad-tx-kernel-") as tmp:
        name = "tinygrad-tx-guide"
        write_kernel_spec(os.path.join(tmp, name), overrides={"display_name": "tinygrad_tx guide"})
        specs = KernelSpecManager(kernel_dirs=[tmp], ensure_native_kernel=False)
        yield KernelManager(kernel_name=name, kernel_spec_manager=specs)


@contextlib.contextmanager
def _environment(values: dict):
    """os.environ with `values` set (None: removed), restored after; the kernel inherits it."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(nb, cwd: str, quick: bool = False, checkpoint: str | None = None, timeout: int = CELL_TIMEOUT):
    """Run every cell of `nb` in order (in place) in a fresh kernel; a failing cell raises
    nbclient's CellExecutionError, which names the cell and shows its traceback."""
    nbclient = _need("nbclient")
    env = {ENV_QUICK: "1" if quick else None, ENV_CHECKPOINT: checkpoint,
           "MPLBACKEND": "Agg", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    with _environment(env), _kernel_manager() as km:
        client = nbclient.NotebookClient(nb, km=km, timeout=timeout, allow_errors=False,
                                         resources={"metadata": {"path": cwd}})
        try:
            client.execute()
        finally:                                    # nbclient leaves a kernel it did not start running
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    return nb


# ---------------------------------------------------------------------------- notebook -> page
def _tags(cell) -> set:
    return set(cell.get("metadata", {}).get("tags", []))


def _fence(text: str, lang: str) -> str:
    return f"```{lang}\n{text.rstrip()}\n```"


def _output_blocks(outputs, figures: dict) -> list[str]:
    blocks, stream = [], []

    def flush():
        if stream:
            blocks.append(_fence("".join(stream), "text"))
            stream.clear()

    for out in outputs:
        kind = out["output_type"]
        if kind == "stream":
            if out["name"] == "stdout":
                stream.append(out["text"])
            continue
        flush()
        if kind == "error":
            raise RuntimeError(f"the notebook failed: {out['ename']}: {out['evalue']}")
        data, meta = out.get("data", {}), out.get("metadata", {})
        png_meta = meta.get("image/png", {}) if isinstance(meta.get("image/png"), dict) else {}
        if "image/png" in data and "filename" in png_meta:
            name = png_meta["filename"]
            figures[name] = base64.b64decode(data["image/png"])
            alt = png_meta.get("alt", name)
            if "width" in png_meta:
                blocks.append(f'<img src="{name}" width="{png_meta["width"]}" alt="{alt}">')
            else:
                blocks.append(f"![{alt}]({name})")
        elif "text/markdown" in data:
            blocks.append(data["text/markdown"].strip())
        elif "text/plain" in data and "image/svg+xml" not in data and "image/png" not in data:
            blocks.append(_fence(data["text/plain"], "text"))
    flush()
    return blocks


def to_markdown(nb, page: str) -> tuple[str, dict]:
    """The page's markdown and its figures {name relative to docs/: PNG bytes}, from an executed notebook."""
    figures: dict[str, bytes] = {}
    notice = (f"<!-- Generated from docs/{SOURCE_DIR}/{page}.py by `tinygrad-tx guide`: edit that file, "
              f"then regenerate. The notebook docs/{NOTEBOOK_DIR}/{page}.ipynb runs the same cells. -->")
    blocks = [notice]
    for cell in nb.cells:
        tags = _tags(cell)
        if "remove-cell" in tags:
            continue
        if cell["cell_type"] == "markdown":
            blocks.append(cell["source"].strip())
        elif cell["cell_type"] == "code":
            if "remove-input" not in tags and cell["source"].strip():
                blocks.append(_fence(cell["source"], "python"))
            if "remove-output" not in tags:
                blocks.extend(_output_blocks(cell.get("outputs", []), figures))
    return "\n\n".join(blocks) + "\n", figures


# ---------------------------------------------------------------------------- the README's drawings
# The README's pictures of `tinygrad-tx draw` (its autodiff example is drawn by the autodiff lesson):
# name under docs/ -> (the draw command's example, depth)
README_DRAWINGS = {"img/attention_head.png": ("attention", None), "img/encoder_layer.png": ("encoder-layer", 0)}


def readme_drawings(out: str) -> list[str]:
    """Write the README's `tinygrad-tx draw` pictures under `out` (docs/img/); returns the paths."""
    from .drawings import draw_command
    written = []
    for name, (what, depth) in README_DRAWINGS.items():
        path = os.path.join(out, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        written.append(draw_command(what, path, depth=depth))
    return written


# ---------------------------------------------------------------------------- everything
def build(docs: str = "docs", pages=PAGES, quick: bool = False, checkpoint: str | None = None,
          out: str | None = None, timeout: int = CELL_TIMEOUT) -> list[str]:
    """Regenerate every page of the guide, its notebook and its figures, and the README's drawings.

    Args:
        docs: the folder holding src/ (the sources).
        pages: which pages (names of docs/src/*.py).
        quick: a tiny model trained for a few steps (seconds): for tests and CI. Its pictures show an
            untrained model, and the claims that need a trained one are skipped.
        checkpoint: the run directory of the guide's model (default, inside the notebook: runs/guide,
            trained there for a few minutes when it holds no run).
        out: where the notebooks, pages and figures go (default: `docs` itself).
        timeout: seconds one cell may run.

    Returns:
        the paths written.
    """
    out = out or docs
    written = readme_drawings(out)
    cwd = os.path.abspath(os.path.join(docs, os.pardir))
    for page in pages:
        nb = read_source(docs, page)
        path = notebook_path(out, page)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, notebook_text(nb))
        written.append(path)
        _log(f"running {path}" + (" (quick)" if quick else ""))
        execute(nb, cwd, quick=quick, checkpoint=checkpoint, timeout=timeout)
        text, figures = to_markdown(nb, page)
        for name, png in figures.items():
            fig_path = os.path.join(out, name)
            os.makedirs(os.path.dirname(fig_path), exist_ok=True)
            atomic_write(fig_path, png)
            written.append(fig_path)
        md = os.path.join(out, f"{page}.md")
        atomic_write_text(md, text)
        written.append(md)
        _log(f"wrote {md} and {len(figures)} figures")
    if set(pages) == set(PAGES):
        _remove_stale_figures(out, written)
    return written


def _remove_stale_figures(out: str, written: list[str]) -> None:
    """Delete the PNGs in docs/guide/ (the pages' own folder) that no page shows any more."""
    folder = os.path.join(out, PAGE_FIGURES)
    keep = {os.path.abspath(p) for p in written}
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        path = os.path.abspath(os.path.join(folder, name))
        if name.endswith(".png") and path not in keep:
            os.remove(path)
            _log(f"removed {path}: no page shows it")
