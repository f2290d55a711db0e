"""Pictures of the computation: graphs (forward, backward, clustered by module), a narrated backward
pass, and attention / positional-encoding heatmaps.

Importing this package needs nothing beyond the engine: graphviz and matplotlib (the `viz` extra,
`pip install 'tinygrad-tx[viz]'`) are imported by the functions that use them.

    draw_graph(root, backward=False, depth=None, ...)   -> graphviz.Digraph
    record_gradients()                                  context manager: remember gradient norms
    explain(loss)                                       narrate, then run, the backward pass
    plot_attention(weights, src_tokens, tgt_tokens, path)
    plot_positional_encoding(max_len, d_model, path)
"""
from .explain import explain, rule
from .graph import GraphvizNotInstalled, draw_graph
from .plots import plot_attention, plot_positional_encoding, sinusoid_table
from .record import record_gradients

__all__ = ["draw_graph", "record_gradients", "explain", "rule", "plot_attention", "plot_positional_encoding",
           "sinusoid_table", "GraphvizNotInstalled"]
