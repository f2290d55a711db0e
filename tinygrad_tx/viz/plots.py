"""Pictures of attention weights and of the sinusoidal positional encoding (matplotlib, no pyplot).

Figures are drawn with matplotlib's object API and the Agg canvas, so plotting never changes the
user's matplotlib backend and needs no display.
"""
from __future__ import annotations

import math
import os

from .. import backend
from ..serialization import atomic_write
from ..tensor import Tensor


def figure(width, height):
    """A matplotlib Figure on its own Agg canvas (no pyplot, no display needed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("tinygrad_tx.viz plots need matplotlib: pip install 'tinygrad-tx[viz]' "
                          "(or pip install matplotlib)") from e
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path) -> str:
    """Write the figure with the one atomic writer; the format comes from the suffix (png by default)."""
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt))
    return path


def host_array(weights):
    """A Tensor, a backend array or nested lists as a NumPy array on the host (for plotting)."""
    if isinstance(weights, Tensor):
        return weights.numpy()
    return backend.to_numpy(weights) if backend.is_array(weights) else backend.host_array(weights)


def plot_attention(weights, src_tokens, tgt_tokens, path=None, title: str | None = None):
    """Heatmaps of attention weights, one per head, written to `path` (PNG, SVG or PDF) or returned.

    Args:
        weights: Tensor or array of shape (n_heads, Tq, Tk), or (Tq, Tk) for one head.
        src_tokens: the Tk key tokens (column labels).
        tgt_tokens: the Tq query tokens (row labels).
        path: output file; its suffix picks the format. None: nothing is written.
        title: optional figure title.

    Returns:
        the path written, or the matplotlib Figure when `path` is None (to show in a notebook,
        or to save yourself).
    """
    w = host_array(weights)
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3:
        raise ValueError(f"plot_attention: weights must have shape (n_heads, Tq, Tk) or (Tq, Tk), not {w.shape}")
    n_heads, tq, tk = w.shape
    src_tokens, tgt_tokens = [str(t) for t in src_tokens], [str(t) for t in tgt_tokens]
    if len(tgt_tokens) != tq or len(src_tokens) != tk:
        raise ValueError(f"plot_attention: weights {w.shape} need {tq} tgt_tokens (rows) and {tk} src_tokens "
                         f"(columns), got {len(tgt_tokens)} and {len(src_tokens)}")
    cols = min(n_heads, 4)
    rows = math.ceil(n_heads / cols)
    cell = 0.42                                         # inches per token
    longest = max([len(t) for t in src_tokens + tgt_tokens] + [1])
    width = cols * (tk * cell + 0.1 * longest + 0.9) + 1.0
    height = rows * (tq * cell + 0.1 * longest + 0.9) + 0.3
    fig = figure(max(width, 3.5), max(height, 3.0))
    vmax = float(w.max()) if w.size else 1.0
    annotate = tq * tk <= 144
    for h in range(n_heads):
        ax = fig.add_subplot(rows, cols, h + 1)
        image = ax.imshow(w[h], cmap="viridis", vmin=0.0, vmax=vmax, aspect="equal")
        ax.set_xticks(range(tk))
        ax.set_xticklabels(src_tokens, rotation=60, ha="right", rotation_mode="anchor", fontsize=9)
        ax.set_yticks(range(tq))
        ax.set_yticklabels(tgt_tokens, fontsize=9)
        if h + cols >= n_heads:                         # the lowest panel of its column
            ax.set_xlabel("keys (source)", fontsize=9)
        if h % cols == 0:
            ax.set_ylabel("queries (target)", fontsize=9)
        ax.set_title(f"head {h}" if n_heads > 1 else "attention", fontsize=10)
        if annotate:
            for i in range(tq):
                for j in range(tk):
                    value = float(w[h, i, j])
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if value > 0.6 * vmax else "white")
    fig.colorbar(image, ax=fig.axes, shrink=0.8, label="attention weight")
    if title:
        fig.suptitle(title)
    return fig if path is None else save_figure(fig, path)


def sinusoid_table(max_len: int, d_model: int):
    """PE[pos, 2i] = sin(pos / 10000^(2i/d_model)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/d_model))."""
    xp = backend.get_xp("cpu")
    pos = xp.arange(max_len, dtype=backend.float64)[:, None]                           # (max_len, 1)
    two_i = xp.arange(0, d_model, 2, dtype=backend.float64)[None, :]                   # (1, ceil(d_model/2))
    angle = pos / 10000.0 ** (two_i / d_model)                                         # (max_len, ceil(d_model/2))
    table = xp.zeros((max_len, d_model), dtype=backend.float64)
    table[:, 0::2] = xp.sin(angle)
    table[:, 1::2] = xp.cos(angle[:, : d_model // 2])
    return table


def plot_positional_encoding(max_len: int, d_model: int, path=None):
    """The sinusoidal positional encoding table (positions x dimensions) as a heatmap.

    Returns:
        the path written (its suffix picks PNG, SVG or PDF), or the matplotlib Figure when `path` is None.
    """
    if max_len < 1 or d_model < 1:
        raise ValueError(f"plot_positional_encoding: max_len and d_model must be >= 1, got {max_len}, {d_model}")
    table = sinusoid_table(max_len, d_model)
    fig = figure(min(4 + d_model / 24, 14), min(3 + max_len / 24, 10))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(table, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xlabel("dimension j of the encoding  (j = 2i: sin, j = 2i+1: cos; both share the wavelength of pair i)")
    ax.set_ylabel("position pos")
    ax.set_title(f"Sinusoidal positional encoding, max_len={max_len}, d_model={d_model}")
    fig.colorbar(image, ax=ax, label="PE[pos, j]")
    return fig if path is None else save_figure(fig, path)
