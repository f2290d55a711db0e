"""The guide's pictures: heatmap panels (matplotlib, through viz's public figure API) and `picture`,
which turns a figure or a graph drawing into a PNG that Jupyter shows inline and the guide builder
writes under docs/.

    picture(plot_heads(weights, tokens, tokens, "title", "queries", "keys"), "guide/heads.png")
    picture(tx.viz.draw_graph(loss, backward=True), "guide/backward.png", width=720)
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

from tinygrad_tx.viz import GraphvizNotInstalled, figure, host_array


class Picture:
    """A PNG with the name it is saved under (relative to docs/), shown inline by Jupyter.

    The name and the display width travel in the output's metadata, so the guide builder writes the
    PNG to docs/<name> and links it from the page; nothing is written while the notebook runs."""

    def __init__(self, png: bytes, name: str, alt: str = "", width: int | None = None):
        self.png, self.name, self.alt, self.width = png, name, alt or name, width

    def _repr_mimebundle_(self, include=None, exclude=None):
        meta = {"filename": self.name, "alt": self.alt}
        if self.width:
            meta["width"] = self.width
        data = {"image/png": base64.b64encode(self.png).decode("ascii"), "text/plain": f"<picture {self.name}>"}
        return data, {"image/png": meta}

    def __repr__(self):
        return f"<picture {self.name}: {len(self.png)} bytes>"


def picture(drawing, name: str, alt: str = "", width: int | None = None, dpi: int = 100) -> Picture:
    """A matplotlib Figure or a graphviz drawing (tx.viz.draw_graph) as a Picture named `name`.

    Args:
        drawing: a matplotlib Figure, or anything with graphviz's `.pipe(format=...)`.
        name: where the guide builder writes it, relative to docs/ ("guide/embedding.png").
        alt: the image's text alternative on the page.
        width: the width, in pixels, the page shows it at (None: its own width).
    """
    if hasattr(drawing, "savefig"):
        buffer = io.BytesIO()
        drawing.savefig(buffer, format="png", dpi=dpi)
        return Picture(buffer.getvalue(), name, alt, width)
    png = drawing.pipe(format="png")           # raises GraphvizNotInstalled without `dot`
    return Picture(png, name, alt, width)


__all__ = ["GraphvizNotInstalled", "Panel", "Picture", "picture", "plot_heads", "plot_panels", "symmetric_range"]


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


def plot_panels(panels: list[Panel], title: str | None = None, cols: int | None = None,
                colorbar: str = "", cell: float = 0.28):
    """Heatmaps side by side (or in a grid of `cols` columns), each with its labelled rows; returns the
    matplotlib Figure (show it with `picture`).

    `cell` is the size of one matrix entry in inches (wide matrices are squeezed to 7 inches);
    `colorbar` labels one colour bar shared by every panel (give them the same vmin/vmax)."""
    cols = cols or len(panels)
    grid_rows = math.ceil(len(panels) / cols)
    first = host_array(panels[0].values)
    height = grid_rows * (cell * first.shape[0] + 1.4) + (0.5 if title else 0.0)
    width = cols * (min(cell * first.shape[1], 7.0) + 2.0) + (1.0 if colorbar else 0.0)
    fig = figure(max(width, 5.0), max(height, 3.0))
    image = None
    for k, panel in enumerate(panels):
        values = host_array(panel.values)
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
    return fig


def plot_heads(weights, queries, keys, title: str, ylabel: str, xlabel: str):
    """Attention weights (n_heads, Tq, Tk) or (Tq, Tk), one annotated panel per head, two panels a row
    (wide enough to read on a web page); returns the Figure."""
    w = host_array(weights)
    w = w[None] if w.ndim == 2 else w
    cols = min(len(w), 2)
    last_row = (len(w) - 1) // cols
    panels = [Panel(w[h], queries, keys, f"head {h}" if len(w) > 1 else "", cmap="viridis", vmin=0.0, vmax=1.0,
                    xlabel=xlabel if h // cols == last_row else "", ylabel=ylabel if h % cols == 0 else "",
                    annotate=".2f") for h in range(len(w))]
    return plot_panels(panels, title=title, cols=cols, colorbar="attention weight", cell=0.42)


def symmetric_range(*values) -> dict:
    """vmin/vmax centred on 0 and shared by several panels, so that one colour means one value."""
    vmax = max(float(abs(host_array(v)).max()) for v in values)
    return {"vmin": -vmax, "vmax": vmax}


