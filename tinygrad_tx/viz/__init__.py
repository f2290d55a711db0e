"""Pictures of the computation: graphs (forward, backward, clustered by module), a narrated backward
pass, and attention / positional-encoding heatmaps.

Importing this package needs nothing beyond the engine: graphviz and matplotlib (the `viz` extra,
`pip install 'tinygrad-tx[viz]'`) are imported by the functions that use them.

    draw_graph(root, backward=False, depth=None, ...)   -> graphviz.Digraph
    explore(root, module=None, path="graph.html")       an interactive page: fold modules, forward/backward,
                                                        values, gradients, derivative rules, search
    record_gradients()                                  context manager: remember gradient norms
    explain(loss)                                       narrate, then run, the backward pass
    plot_attention(weights, src_tokens, tgt_tokens, path=None)
    plot_positional_encoding(max_len, d_model, path=None)
                                                        heatmaps: written to path, or returned as a Figure
    figure(width, height), save_figure(fig, path)      a blank matplotlib Figure; write one atomically
"""
from .explain import explain, rule
from .explore import explore
from .graph import GraphvizNotInstalled, draw_graph
from .plots import figure, host_array, plot_attention, plot_positional_encoding, save_figure, sinusoid_table
from .record import record_gradients

__all__ = ["GraphvizNotInstalled", "draw_graph", "explain", "explore", "figure", "host_array", "plot_attention",
           "plot_positional_encoding", "record_gradients", "rule", "save_figure", "sinusoid_table"]
