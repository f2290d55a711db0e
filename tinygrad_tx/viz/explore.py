"""`explore`: the computation as one self-contained HTML page that a browser opens from disk.

The page holds both views of the graph (forward, and backward with the gradient norms that
`record_gradients()` kept) before any folding, as JSON, beside Graphviz compiled to WebAssembly
(viz.js, vendored under web/vendor with its licence) and the page's own script (web/explore.js).
The browser folds modules and lays the drawing out itself, so any module can be opened or closed
by a click; nothing is fetched from the network.

The vertices, edges, labels, styles and module boxes are the ones `draw_graph` draws (graph.extract,
graph.module_summaries, graph.label); this module only adds what a static picture cannot show:
value and gradient statistics with histograms, and attention heatmaps.
"""
from __future__ import annotations

import json
import os
import re

from .. import backend
from ..autograd import Function
from ..serialization import atomic_write
from ..tensor import Tensor
from . import graph, record
from .explain import fmt_shape, leaf_name, rule

_WEB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
HISTOGRAM_BINS = 16
_VALUE_KINDS = ("tensor", "parameter", "input", "grad_leaf")


def _read(name: str) -> str:
    with open(os.path.join(_WEB, name), encoding="utf-8") as f:
        return f.read()


def _summary(array) -> dict | None:
    """min, mean, max, norm and a histogram of an array, as plain floats (None for bools and empties)."""
    if array is None or array.size == 0 or array.dtype == backend.bool_:
        return None
    host = backend.to_numpy(array).astype(backend.float64).reshape(-1)
    xp = backend.array_module(host)
    finite = host[xp.isfinite(host)]
    if finite.size == 0:
        return {"min": None, "mean": None, "max": None, "norm": None, "hist": None}
    lo, hi = float(finite.min()), float(finite.max())
    counts, edges = xp.histogram(finite, bins=HISTOGRAM_BINS if hi > lo else 1)
    return {"min": lo, "mean": float(finite.mean()), "max": hi, "norm": float(xp.sqrt(xp.dot(host, host))),
            "size": int(host.size), "hist": {"counts": [int(c) for c in counts], "lo": float(edges[0]),
                                             "hi": float(edges[-1])}}


def _tensor_of(v) -> Tensor | None:
    """The live tensor behind a vertex: a leaf, or a node's output while someone still holds it."""
    if isinstance(v.obj, Tensor):
        return v.obj
    if isinstance(v.obj, Function) and v.kind == "tensor" and v.obj.out_ref is not None:
        return v.obj.out_ref()
    return None


def _details(v, ex: graph.Extraction) -> dict:
    """What the side panel shows for one vertex: rows of (key, value) text, and value/gradient summaries."""
    obj, rows = v.obj, []
    out = {"rows": rows}
    if v.kind in ("op", "tensor", "grad_op"):
        rows.append(["op", obj.op_name])
        rows.append(["output", f"{fmt_shape(obj.out_shape)} {obj.out_dtype}"])
        inputs = [record.input_shape(p) for p in obj.parents if p is not None]
        rows.append(["inputs", ", ".join(fmt_shape(s) for s in inputs) or "-"])
        rows.append(["scope", obj.scope or "(top level)"])
        rows.append(["derivative", rule(obj)])
        rec = record.recorded(obj)
        if rec is not None:
            rows.append(["gradient in", f"{fmt_shape(rec.grad_shape)}, norm {rec.grad_norm:.4g}"])
            for i, sent in enumerate(rec.inputs):
                if sent is not None:
                    rows.append([f"gradient to input {i}", f"{fmt_shape(sent[0])}, norm {sent[1]:.4g}"])
            out["grad_norm"] = rec.grad_norm
    elif v.kind == "module":
        n_params, n_values = obj["params"]
        rows.append(["module", ex.scopes.label(obj["path"])])
        rows.append(["inputs", ", ".join(fmt_shape(s) for s in obj["inputs"].values()) or "-"])
        rows.append(["outputs", ", ".join(fmt_shape(s) for s in obj["outputs"].values()) or "-"])
        rows.append(["ops", str(obj["ops"])])
        rows.append(["parameters", f"{n_params} ({n_values:,} values)"])
    elif v.kind == "sum":
        full, axes, shape = obj
        rows.append(["op", "sum (undo broadcasting)"])
        rows.append(["shapes", f"{fmt_shape(full)} -> {fmt_shape(shape)}, over axes {axes}"])
        rows.append(["scope", v.scope or "(top level)"])
    elif v.kind == "seed":
        rows.append(["start of backward", f"{obj.name or 'output'} {fmt_shape(obj.shape)}"])
    else:                                       # a leaf: parameter, input, constant, mask, or its .grad
        name = obj.name or ex.names.get(id(obj)) or leaf_name(obj)
        rows.append(["tensor", name])
        rows.append(["shape", f"{fmt_shape(obj.shape)} {obj.dtype}"])
        rows.append(["scope", v.scope or "(top level)"])
    tensor = _tensor_of(v)
    if tensor is not None and v.kind in _VALUE_KINDS:
        if v.kind != "grad_leaf":
            out["values"] = _summary(tensor.data)
        if tensor.grad is not None:
            out["grad"] = _summary(tensor.grad.data)
    return out


def _html_label(text: str) -> str | None:
    """The Graphviz HTML label that draw_graph would use for this text (graph.dot_label), or None."""
    dot = graph.dot_label(text)
    return None if dot == text else dot


def _view(ex: graph.Extraction) -> dict:
    """One view (forward or backward) as JSON: vertices with labels, styles and details; edges; modules."""
    pic, scopes = ex.picture, ex.scopes
    vertices = []
    for v in pic.vertices.values():
        name = ""
        if isinstance(v.obj, Tensor):
            name = v.obj.name or ex.names.get(id(v.obj)) or ""
        elif v.kind == "tensor":
            t = _tensor_of(v)
            name = t.name if t is not None and t.name else ""
        text = graph.label(v, ex.names, scopes, show_values=True)
        vertices.append({"id": v.id, "kind": v.kind, "scope": v.scope, "name": name, "root": v.root,
                         "label": text, "html_label": _html_label(text),
                         "attrs": graph.vertex_attrs(v), **_details(v, ex)})
    edges = [[e.src, e.dst, e.label, fmt_shape(e.shape)] for e in pic.edges]
    modules = {}
    for path, info in graph.module_summaries(pic, scopes).items():
        box = graph.module_box(f"box:{path}", info, scopes)
        modules[path] = {"parent": scopes.parent(path), "level": scopes.level(path),
                         "cluster": graph.cluster_attrs(scopes, path),
                         "label": graph.module_label(info, scopes),
                         "html_label": _html_label(graph.module_label(info, scopes)),
                         "attrs": graph.vertex_attrs(box), **_details(box, ex)}
    return {"note": ex.note, "vertices": vertices, "edges": edges, "modules": modules, "deepest": ex.deepest}


def _attention_json(attention) -> list[dict]:
    """Attention maps as JSON: each {name, queries, keys, heads: [Tq x Tk weights, rounded]}."""
    out = []
    for a in attention or []:
        weights = backend.to_numpy(a["weights"].data if isinstance(a["weights"], Tensor) else a["weights"])
        if weights.ndim != 3:
            raise ValueError(f"explore: attention {a['name']!r} weights must be (heads, queries, keys), "
                             f"not {tuple(weights.shape)}")
        _heads, tq, tk = weights.shape
        if len(a["queries"]) != tq or len(a["keys"]) != tk:
            raise ValueError(f"explore: attention {a['name']!r} has weights {tuple(weights.shape)} but "
                             f"{len(a['queries'])} query and {len(a['keys'])} key tokens")
        out.append({"name": a["name"], "queries": list(a["queries"]), "keys": list(a["keys"]),
                    "heads": [[[round(float(w), 4) for w in row] for row in head] for head in weights]})
    return out


def page_data(root, *, module=None, title: str = "", attention=None, attention_caption: str = "",
              backward: bool = True) -> dict:
    """Everything the page shows, as a JSON-ready dict (what `explore` writes into the HTML)."""
    views = {"forward": _view(graph.extract(root, module=module))}
    roots = record.roots_of(root)
    if backward and any(r._ctx is not None and any(r._ctx.needs_input_grad) for r in roots):
        views["backward"] = _view(graph.extract(root, backward=True, module=module))
    return {"title": title or "tinygrad_tx graph", "views": views,
            "graph_attrs": graph.GRAPH_ATTRS, "node_attrs": graph.NODE_ATTRS, "edge_attrs": graph.EDGE_ATTRS,
            "attention": _attention_json(attention), "attention_caption": attention_caption}


def _script_json(obj) -> str:
    """JSON that is safe inside a <script> element (no '</' can close it early)."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")


def explore(root, *, module=None, path="graph.html", title: str = "", attention=None, attention_caption: str = "",
            depth: int | None = None):
    """Write an interactive, self-contained HTML page of the computation that produced `root`.

    Open it from disk in any browser: no server, no network. Click a folded module to open it and a
    module's frame to fold it again (or pick a depth); switch between the forward and backward views;
    hover or click a node for its op, shapes, dtype, module, value and gradient statistics with a
    histogram, and its local derivative rule; search a name such as `decoder.layers.1.cross_attn`.

    Args:
        root: a Tensor (or list of Tensors). For gradient norms in the backward view and gradient
            histograms of the parameters, run `root.backward()` inside `with tx.viz.record_gradients():`
            first (the page reads the graph record, which backward leaves in place). Values are shown for
            the tensors still alive: leaves, parameters, and intermediates you keep a reference to.
        module: the Module that computed root: names parameters and clusters, as in draw_graph.
        path: where to write the page (written atomically).
        title: the page's heading.
        attention: optional list of dicts {name, weights (heads, queries, keys), queries, keys} (token
            lists): the page adds a panel that draws the heatmap of a picked layer and head.
        attention_caption: a line above that panel (the sentence and its translation).
        depth: the depth the page opens at (None: the deepest that shows at most about 150 nodes).

    Returns:
        the path written.
    """
    if depth is not None and depth < 0:
        raise ValueError(f"explore: depth must be >= 0 or None, not {depth}")
    data = page_data(root, module=module, title=title, attention=attention, attention_caption=attention_caption)
    data["start_depth"] = depth
    html = _read("explore.html")
    parts = {"/*TITLE*/": _escape(data["title"]), "/*CSS*/": _read("explore.css"),
             "/*VIZ_JS*/": _read(os.path.join("vendor", "viz-global.js")),
             "/*DATA*/": _script_json(data), "/*EXPLORE_JS*/": _read("explore.js")}
    missing = [m for m in parts if m not in html]
    if missing:
        raise AssertionError(f"explore.html lacks the markers {missing}")
    # one pass over the template: text already inserted is never searched for markers again
    html = re.sub("|".join(re.escape(m) for m in parts), lambda m: parts[m.group(0)], html)
    path = os.fspath(path)
    atomic_write(path, html)
    return path


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
