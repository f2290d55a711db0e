"""`draw_graph`: the computation as a Graphviz drawing, forward or backward, clustered by module.

The drawing is built in three passes over the graph record (see autograd.py):
  1. a plain list of vertices and edges (forward: op and tensor nodes; backward: gradient steps),
     each vertex tagged with the module scope it was created in;
  2. with `depth=k`, every module deeper than k folds into one box that lists its input and output
     shapes;
  3. emission to a `graphviz.Digraph`, with one nested `cluster_<path>` subgraph per module.
Labels (and the min/mean/max they may compute) are made only in pass 3, for what is drawn.
The drawing holds strings only, never a tensor or a node.
"""
from __future__ import annotations

import contextlib
import html
import os
import textwrap

from .. import backend
from ..autograd import Function
from ..nn import Module, Parameter
from ..serialization import atomic_write
from ..tensor import Tensor
from . import record
from .explain import fmt_shape, leaf_name, leaf_role, rule

INSTALL_HINT = ("Rendering needs Graphviz's `dot` program, which is not on PATH. Install Graphviz with one of\n"
                "    apt-get install graphviz     (Debian, Ubuntu)\n"
                "    brew install graphviz        (macOS)\n"
                "    conda install graphviz       (conda)\n"
                "The drawing's DOT text is still there: graph.source, or graph.save('graph.dot').")

# Fill colours, one per kind of vertex
_STYLE = {
    "op": {"shape": "ellipse", "style": "filled", "fillcolor": "#fff2b3"},
    "tensor": {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffffff"},
    "parameter": {"shape": "box", "style": "rounded,filled", "fillcolor": "#cfe3ff"},
    "input": {"shape": "box", "style": "rounded,filled", "fillcolor": "#e4e4e4"},
    "constant": {"shape": "plaintext", "style": "", "fontsize": "10"},
    "module": {"shape": "box3d", "style": "filled", "fillcolor": "#c9ecc2"},
    "grad_op": {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffd6d6"},
    "sum": {"shape": "box", "style": "dashed,filled", "fillcolor": "#ffe9cc"},
    "grad_leaf": {"shape": "box", "style": "rounded,filled", "fillcolor": "#cfe3ff"},
    "seed": {"shape": "box", "style": "filled", "fillcolor": "#ffb380"},
}
_DERIVATIVE_FILL = "#ffd9b3"        # an op recorded by a create_graph backward (a gradient's graph)
_CLUSTER_FILLS = ("#f4f7fb", "#e8eef7", "#dde6f3", "#d2ddee")


class GraphvizNotInstalled(RuntimeError):
    """Raised when a drawing is rendered on a machine without Graphviz's `dot` program."""


def _import_graphviz():
    try:
        import graphviz
    except ImportError as e:
        raise ImportError("tinygrad_tx.viz needs the graphviz Python package: "
                          "pip install 'tinygrad-tx[viz]' (or pip install graphviz)") from e
    return graphviz


_drawing_class = None


def digraph_class():
    """graphviz.Digraph whose render/pipe explain how to install Graphviz when `dot` is missing."""
    global _drawing_class
    if _drawing_class is None:
        graphviz = _import_graphviz()

        @contextlib.contextmanager
        def explain_missing_dot():
            try:
                yield
            except graphviz.ExecutableNotFound as e:
                raise GraphvizNotInstalled(INSTALL_HINT) from e

        class Drawing(graphviz.Digraph):
            """A graphviz.Digraph from tinygrad_tx.viz.draw_graph."""

            def pipe(self, *args, **kwargs):
                with explain_missing_dot():
                    return super().pipe(*args, **kwargs)

            def save(self, filename=None, directory=None, *, skip_existing=False):
                """graphviz's save, through the one atomic writer: the DOT file is whole or absent."""
                if filename is not None:
                    self.filename = os.fspath(filename)
                if directory is not None:
                    self.directory = os.fspath(directory)
                path = self.filepath
                if skip_existing and os.path.exists(path):
                    return path
                if os.path.dirname(path):
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                atomic_write(path, self.source.encode(self.encoding))
                return path

            def render(self, filename=None, directory=None, view=False, cleanup=False, format=None,
                       renderer=None, formatter=None, neato_no_op=None, quiet=False, quiet_view=False, *,
                       outfile=None, engine=None, raise_if_result_exists=False, overwrite_source=False):
                """graphviz's render (same arguments, same files, same returned path), but every file
                appears whole or not at all: `dot` draws into memory (`pipe`) and the picture is written
                by serialization.atomic_write, so a render that fails or is interrupted halfway leaves
                an earlier picture at that path intact. The DOT source is saved beside it (by `save`)
                unless `cleanup`."""
                if outfile is not None:
                    outfile = os.fspath(outfile)
                    if directory is None:
                        outfile = os.path.join(self.directory, outfile)
                    if format is None:
                        format = os.path.splitext(outfile)[1].lstrip(".").lower() or None
                    if format is None:
                        raise graphviz.RequiredArgumentError(
                            f"render: cannot tell the format of outfile {outfile!r}: give format= or a suffix")
                    if filename is None:
                        filename = os.path.splitext(os.path.basename(outfile))[0] + ".gv"
                        directory = os.path.dirname(outfile) if directory is None else directory
                if filename is not None:
                    self.filename = os.fspath(filename)
                if directory is not None:
                    self.directory = os.fspath(directory)
                format = format or self.format
                source = self.filepath
                if outfile is None:                     # graphviz's -O: FILE.gv.[formatter.][renderer.]format
                    outfile = source + "." + ".".join(x for x in (formatter, renderer, format) if x)
                if raise_if_result_exists and os.path.exists(outfile):
                    raise graphviz.FileExistsError(f"output file exists: {outfile!r}")
                if not overwrite_source and os.path.abspath(outfile) == os.path.abspath(source):
                    raise ValueError(f"render: outfile {outfile!r} must differ from the DOT source "
                                     f"(pass overwrite_source=True to override)")
                if not cleanup:
                    self.save()
                picture = self.pipe(format=format, renderer=renderer, formatter=formatter,
                                    neato_no_op=neato_no_op, quiet=quiet, engine=engine)
                if os.path.dirname(outfile):
                    os.makedirs(os.path.dirname(outfile), exist_ok=True)
                atomic_write(outfile, picture)
                if view or quiet_view:
                    graphviz.view(outfile, quiet=quiet_view)
                return outfile

            def unflatten(self, *args, **kwargs):
                with explain_missing_dot():
                    return super().unflatten(*args, **kwargs)

        _drawing_class = Drawing
    return _drawing_class


# ============================================================================ pass 1: vertices and edges
class _Vertex:
    __slots__ = ("id", "kind", "obj", "root", "scope")

    def __init__(self, vid, kind, scope, obj=None):
        self.id, self.kind, self.scope, self.obj, self.root = vid, kind, scope, obj, False


class _Edge:
    __slots__ = ("dst", "label", "shape", "src")

    def __init__(self, src, dst, shape, label=""):
        self.src, self.dst, self.shape, self.label = src, dst, shape, label


class _Picture:
    """Vertices (in drawing order) and edges, before any Graphviz call."""

    def __init__(self):
        self.vertices: dict[str, _Vertex] = {}
        self.edges: list[_Edge] = []
        self._ids: dict[int, str] = {}

    def vertex(self, key, kind, scope, obj=None) -> _Vertex:
        """The vertex for (kind, object) `key`, created on first use with a short stable id."""
        vid = self._ids.get(key)
        if vid is None:
            vid = self._ids[key] = f"n{len(self._ids)}"
            self.vertices[vid] = _Vertex(vid, kind, scope, obj)
        return self.vertices[vid]


def _leaf_kind(leaf: Tensor) -> str:
    """The drawing style of a leaf: a mask is drawn as an input."""
    role = leaf_role(leaf)
    return "input" if role == "mask" else role


def _common_scope(scopes) -> str:
    """The innermost module containing every scope: the longest common dotted prefix."""
    parts = None
    for s in scopes:
        p = s.split(".") if s else []
        if parts is None:
            parts = p
        else:
            n = 0
            while n < min(len(parts), len(p)) and parts[n] == p[n]:
                n += 1
            parts = parts[:n]
    return ".".join(parts or [])


def _place_leaves(picture: _Picture, consumers: dict):
    """Put a leaf inside the innermost module that uses it, unless the user named it.

    Parameters, constants and the masks a module builds for itself then sit in (and fold into) their
    module; named inputs (x, tokens) stay outside, where the user sees them enter.
    """
    for vid, scopes in consumers.items():
        v = picture.vertices[vid]
        if isinstance(v.obj, Parameter) or not v.obj.name:
            v.scope = _common_scope(scopes)


def _forward_picture(roots: list[Tensor]) -> _Picture:
    pic = _Picture()
    consumers: dict[str, list[str]] = {}
    for node in record.graph_nodes(roots):
        op = pic.vertex(("op", id(node)), "op", node.scope, node)
        out = pic.vertex(("tensor", id(node)), "tensor", node.scope, node)
        for parent in node.parents:
            if parent is None:
                continue
            if isinstance(parent, Function):
                src = pic.vertex(("tensor", id(parent)), "tensor", parent.scope, parent)
            else:
                src = pic.vertex(("leaf", id(parent)), _leaf_kind(parent), "", parent)
                consumers.setdefault(src.id, []).append(node.scope)
            pic.edges.append(_Edge(src.id, op.id, record.input_shape(parent)))
        pic.edges.append(_Edge(op.id, out.id, tuple(node.out_shape)))
    for r in roots:
        v = (pic.vertex(("tensor", id(r._ctx)), "tensor", r._ctx.scope, r._ctx) if r._ctx is not None
             else pic.vertex(("leaf", id(r)), _leaf_kind(r), "", r))
        v.root = True
    _place_leaves(pic, consumers)
    return pic


def _grad_label(shape, sent) -> str:
    return fmt_shape(shape) + (f"\n|g| = {sent[1]:.3g}" if sent is not None else "")


def _backward_picture(roots: list[Tensor]) -> tuple[_Picture, bool]:
    """Gradient flow from each root to the leaves; also whether any gradient norms were recorded."""
    pic = _Picture()
    consumers: dict[str, list[str]] = {}
    any_recorded = False
    for r in roots:
        if r._ctx is None:
            continue
        seed = pic.vertex(("seed", id(r)), "seed", "", r)
        rec = record.recorded(r._ctx)
        label = _grad_label(r.shape, (None, rec.grad_norm) if rec else None)
        pic.edges.append(_Edge(seed.id, pic.vertex(("grad", id(r._ctx)), "grad_op", r._ctx.scope, r._ctx).id,
                               tuple(r.shape), label))
    for node in reversed(record.graph_nodes(roots)):
        step = pic.vertex(("grad", id(node)), "grad_op", node.scope, node)
        rec = record.recorded(node)
        any_recorded = any_recorded or rec is not None
        for i, (parent, needs) in enumerate(zip(node.parents, node.needs_input_grad)):
            if parent is None or not needs:
                continue
            if isinstance(parent, Function):
                dst = pic.vertex(("grad", id(parent)), "grad_op", parent.scope, parent)
            else:
                dst = pic.vertex(("leaf", id(parent)), "grad_leaf", "", parent)
                consumers.setdefault(dst.id, []).append(node.scope)
            sent = rec.inputs[i] if rec is not None else None
            shape = record.input_shape(parent)
            full, axes = record.broadcast_axes(node, i)
            if axes:        # the unbroadcast sum, drawn as its own step
                summed = pic.vertex(("sum", id(node), i), "sum", node.scope, (full, axes, shape))
                pic.edges.append(_Edge(step.id, summed.id, full, fmt_shape(full)))
                pic.edges.append(_Edge(summed.id, dst.id, shape, _grad_label(shape, sent)))
            else:
                pic.edges.append(_Edge(step.id, dst.id, shape, _grad_label(shape, sent)))
    _place_leaves(pic, consumers)
    return pic, any_recorded


# ============================================================================ module scopes
class _Scopes:
    """The module tree seen through scope paths.

    The root module records its class name ('EncoderLayer') for the ops of its own forward and its
    children record their paths without it ('self_attn', 'ffn.linear1'). The root is level 0, its
    children level 1, and so on; every other path nests in the path one dot shorter.
    """

    def __init__(self, scopes, module: Module | None):
        scopes = {s for s in scopes if s}
        self.classes: dict[str, str] = {}
        if module is not None:
            self.root = module._path or type(module).__name__
            for path, m in module.named_modules():
                full = f"{module._path}.{path}" if module._path and path else (path or self.root)
                self.classes[full] = type(m).__name__
        else:
            class_scopes = [s for s in scopes if "." not in s and s[:1].isupper()]
            common = _common_scope(scopes) if scopes else ""
            self.root = class_scopes[0] if len(class_scopes) == 1 else common if common in scopes else ""
        self.root_is_path = bool(self.root) and not (self.root[:1].isupper() and "." not in self.root)

    def _inside_root(self, s: str) -> bool:
        return self.root_is_path and s.startswith(self.root + ".")

    def parent(self, s: str) -> str:
        if not s or s == self.root:
            return ""
        if "." in s:
            return s.rsplit(".", 1)[0]
        return self.root if self.root and not self.root_is_path else ""

    def level(self, s: str) -> int:
        if s == self.root:
            return 0
        n = s.count(".") + 1
        return n - (self.root.count(".") + 1) if self._inside_root(s) else n

    def chain(self, s: str) -> list[str]:
        """s and its enclosing modules, outermost first."""
        out = []
        while s:
            out.append(s)
            s = self.parent(s)
        return out[::-1]

    def label(self, s: str) -> str:
        cls = self.classes.get(s)
        return f"{s}: {cls}" if cls and cls != s else s


# ============================================================================ pass 2: depth collapsing
def module_summaries(pic: _Picture, scopes: _Scopes) -> dict[str, dict]:
    """What each module looks like folded into one box: {path: {path, inputs, outputs, ops, params}}.

    inputs and outputs map the id of the vertex that carries a tensor across the module's border to its
    shape; ops counts the op (or gradient step) vertices inside; params is (count, values).
    """
    chains = {vid: scopes.chain(v.scope) for vid, v in pic.vertices.items()}
    info = {}
    for chain in chains.values():
        for s in chain:
            if s not in info:
                info[s] = {"path": s, "inputs": {}, "outputs": {}, "ops": 0, "params": [0, 0]}
    for e in pic.edges:
        src_chain, dst_chain = chains[e.src], chains[e.dst]
        for s in dst_chain:
            if s not in src_chain:
                info[s]["inputs"][e.src] = e.shape
        for s in src_chain:
            if s not in dst_chain:
                info[s]["outputs"][e.src] = e.shape
    for vid, v in pic.vertices.items():
        for s in chains[vid]:
            box = info[s]
            box["ops"] += v.kind in ("op", "grad_op")
            if v.kind == "input":        # a mask or input that the module made for itself is still an input
                box["inputs"][vid] = tuple(v.obj.shape)
            if v.root and v.kind == "tensor":        # the drawing's root leaves through no edge: still an output
                box["outputs"].setdefault(vid, tuple(v.obj.out_shape))
            if isinstance(v.obj, Parameter):
                box["params"][0] += 1
                box["params"][1] += v.obj.size
    for box in info.values():
        box["params"] = tuple(box["params"])
    return info


def module_box(vid: str, info: dict, scopes: _Scopes) -> _Vertex:
    """The vertex that stands for a folded module (info: its entry in module_summaries)."""
    return _Vertex(vid, "module", scopes.parent(info["path"]), info)


def _collapse(pic: _Picture, scopes: _Scopes, depth: int) -> _Picture:
    """Fold every module deeper than `depth` into one box vertex listing its inputs and outputs."""
    summaries = module_summaries(pic, scopes)
    box_of: dict[str, _Vertex] = {}               # vertex id -> the box that swallows it
    boxes: dict[str, _Vertex] = {}
    out = _Picture()
    for v in pic.vertices.values():
        folded = next((s for s in scopes.chain(v.scope) if scopes.level(s) > depth), None)
        if folded is None:
            out.vertices[v.id] = v
            continue
        box = boxes.get(folded)
        if box is None:
            box = boxes[folded] = module_box(f"box{len(boxes)}", summaries[folded], scopes)
            out.vertices[box.id] = box
        box_of[v.id] = box
        box.root = box.root or v.root
    seen = set()
    for e in pic.edges:
        src_box, dst_box = box_of.get(e.src), box_of.get(e.dst)
        if src_box is not None and src_box is dst_box:
            continue                                # inside one box: hidden
        src = src_box.id if src_box else e.src
        dst = dst_box.id if dst_box else e.dst
        text = e.label
        if src_box is not None:
            text = text or fmt_shape(e.shape)       # the tensor that carried it is hidden in the box
        if src_box or dst_box:
            key = (src, dst, e.src if src_box else None, text)
            if key in seen:
                continue
            seen.add(key)
        out.edges.append(_Edge(src, dst, e.shape, text))
    return out


# ============================================================================ pass 3: labels and emission
def _stats(array) -> str:
    if array.size == 0 or array.dtype == backend.bool_:
        return ""
    if array.size == 1:
        return f"value {float(array.reshape(-1)[0]):.4g}"
    xp = backend.array_module(array)
    a = array.astype(backend.float64) if array.dtype.kind in "iu" else array
    return f"min {float(xp.min(a)):.3g}  mean {float(xp.mean(a)):.3g}  max {float(xp.max(a)):.3g}"


def _tensor_label(lines, shape, dtype, array, show_values) -> str:
    lines.append(f"{fmt_shape(shape)} {dtype}")
    if show_values and array is not None:
        stats = _stats(array)
        if stats:
            lines.append(stats)
    return "\n".join(lines)


def _op_detail(node) -> str:
    """Forward arguments that the node kept and that a reader wants to see (axis, axes)."""
    for attr in ("axes", "axis"):
        if attr in vars(node):
            value = vars(node)[attr]
            return f"{attr}={'all' if value is None else value}"
    return ""


def module_label(info: dict, scopes: _Scopes) -> str:
    """The label of a folded module: its path and class, input and output shapes, ops and parameters."""
    n_params, n_values = info["params"]
    return "\n".join([
        scopes.label(info["path"]),
        "in:  " + ", ".join(fmt_shape(s) for s in info["inputs"].values()) if info["inputs"] else "in:  -",
        "out: " + ", ".join(fmt_shape(s) for s in info["outputs"].values()) if info["outputs"] else "out: -",
        f"{info['ops']} ops" + (f", {n_params} parameters ({n_values:,} values)" if n_params else "")])


def label(v: _Vertex, names: dict, scopes: _Scopes, show_values: bool) -> str:
    obj = v.obj
    if v.kind == "op":
        detail = _op_detail(obj)
        if obj.derivative_of:              # recorded by a create_graph backward: part of a gradient
            detail = f"{detail}\n" if detail else ""
            detail += f"in {obj.derivative_of}'s backward"
        return obj.op_name + (f"\n{detail}" if detail else "")
    if v.kind == "tensor":
        t = obj.out_ref() if obj.out_ref is not None else None
        lines = [t.name] if t is not None and t.name else []
        return _tensor_label(lines, obj.out_shape, obj.out_dtype, t.data if t is not None else None, show_values)
    if v.kind in ("parameter", "input"):
        name = obj.name or names.get(id(obj)) or leaf_name(obj)
        return _tensor_label([name], obj.shape, obj.dtype, obj.data, show_values)
    if v.kind == "constant":
        return f"{obj.item():.4g}" if obj.dtype != backend.bool_ else str(obj.item())
    if v.kind == "module":
        return module_label(obj, scopes)
    if v.kind == "grad_op":
        return f"{obj.op_name} backward\n" + "\n".join(textwrap.wrap(rule(obj), 44))
    if v.kind == "sum":
        full, axes, shape = obj
        return f"sum over axes {axes}\n{fmt_shape(full)} -> {fmt_shape(shape)}\n(undo broadcasting)"
    if v.kind == "grad_leaf":
        name = obj.name or names.get(id(obj)) or leaf_name(obj)
        lines = [f"{name}.grad {fmt_shape(obj.shape)}"]
        if obj.grad is not None:
            lines.append(f"|grad| = {record.norm(obj.grad.data):.3g}")
        return "\n".join(lines)
    if v.kind == "seed":
        if obj.size != 1:
            return f"{obj.name or 'output'} {fmt_shape(obj.shape)}\nstart: the grad given to backward()"
        short = obj.name if obj.name and len(obj.name) <= 6 and " " not in obj.name else "L"
        return f"{obj.name or 'output'} {fmt_shape(obj.shape)}\nstart: d{short}/d{short} = 1"
    raise AssertionError(f"unknown vertex kind {v.kind}")


def dot_label(text: str) -> str:
    """A node label for Graphviz. Plain labels put lines so close that an underscore (W_Q) strikes
    through the line below it; such labels become an HTML table with a little padding per line."""
    lines = text.split("\n")
    if not any("_" in line for line in lines[:-1]):
        return text
    rows = "".join(f"<TR><TD>{html.escape(line, quote=False) or ' '}</TD></TR>" for line in lines)
    return f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">{rows}</TABLE>>'


GRAPH_ATTRS = {"fontname": "Helvetica", "fontsize": "11", "nodesep": "0.25", "ranksep": "0.35", "newrank": "true"}
NODE_ATTRS = {"fontname": "Helvetica", "fontsize": "11", "height": "0.3", "margin": "0.08,0.04"}
EDGE_ATTRS = {"fontname": "Helvetica", "fontsize": "9", "arrowsize": "0.6", "color": "#555555"}


def cluster_attrs(scopes: _Scopes, s: str) -> dict:
    """Graphviz attributes of the cluster drawn for module path s (its fill darkens with nesting)."""
    level = len(scopes.chain(s)) - 1
    return {"label": scopes.label(s), "style": "rounded,filled", "color": "#7a8ca8",
                "fillcolor": _CLUSTER_FILLS[level % len(_CLUSTER_FILLS)], "fontsize": "11", "labeljust": "l"}


def vertex_attrs(v: _Vertex) -> dict:
    """Graphviz attributes of a vertex (without its label): its kind's style, a red frame for a root."""
    attrs = dict(_STYLE[v.kind])
    if v.root:
        attrs.update(penwidth="2.5", color="#c0392b")
    if v.kind == "grad_op":
        attrs["tooltip"] = rule(v.obj)
    if v.kind == "op" and v.obj.derivative_of:         # recorded by a create_graph backward
        attrs["fillcolor"] = _DERIVATIVE_FILL
    return attrs


def _emit(pic: _Picture, scopes: _Scopes, names: dict, show_values: bool, rankdir: str, note: str):
    Drawing = digraph_class()
    g = Drawing("tinygrad_tx", graph_attr=dict(rankdir=rankdir, **GRAPH_ATTRS), node_attr=NODE_ATTRS,
                edge_attr=EDGE_ATTRS)
    if note:
        g.attr(label=note, labelloc="b", fontsize="10")
    clusters = {}
    for v in pic.vertices.values():
        for s in scopes.chain(v.scope):
            if s not in clusters:
                clusters[s] = Drawing(name=f"cluster_{s}", graph_attr=cluster_attrs(scopes, s))
    for v in pic.vertices.values():
        target = clusters[v.scope] if v.scope else g
        target.node(v.id, dot_label(label(v, names, scopes, show_values)), **vertex_attrs(v))
    for s in sorted(clusters, key=lambda s: -len(scopes.chain(s))):      # innermost first
        parent = scopes.parent(s)
        (clusters[parent] if parent else g).subgraph(clusters[s])
    for e in pic.edges:
        g.edge(e.src, e.dst, label=e.label) if e.label else g.edge(e.src, e.dst)
    return g


def _too_many(pic: _Picture, max_nodes: int, deepest: int, depth) -> ValueError:
    kinds: dict[str, int] = {}
    for v in pic.vertices.values():
        kinds[v.kind] = kinds.get(v.kind, 0) + 1
    detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    hint = (f"pass depth=K to fold modules deeper than K into boxes (modules here nest {deepest} deep)"
            if deepest else "draw a smaller part of the computation")
    at = f" at depth={depth}" if depth is not None else ""
    return ValueError(f"draw_graph: the drawing has {len(pic.vertices)} nodes{at} ({detail}), more than "
                      f"max_nodes={max_nodes}; {hint}, or raise max_nodes")


def draw_graph(root, *, backward: bool = False, depth: int | None = None, show_values: bool = True,
               max_nodes: int | None = None, rankdir: str = "TB", module: Module | None = None):
    """Draw the computation that produced `root` as a graphviz.Digraph.

    Args:
        root: a Tensor (or a list of Tensors) whose graph is drawn.
        backward: draw the gradient flow from root to the leaves instead of the forward computation:
            one step per op, gradient shapes (and norms, when backward ran inside
            `record_gradients()`) on the edges, and every sum that undoes broadcasting as its own step.
        depth: fold every module nested deeper than `depth` into one box showing its input and output
            shapes (0 = the root module's children become boxes); None draws every op.
        show_values: write min/mean/max on the tensors whose data is still alive.
        max_nodes: raise ValueError instead of drawing more nodes than this.
        rankdir: Graphviz layout direction: "TB" (top to bottom), "LR", "BT" or "RL".
        module: the Module that computed root: names its parameters by their dotted path and its
            clusters by class. Without it, parameters show their `.name` (Module.name_parameters()).

    A gradient made with `create_graph=True` (`tx.grad(y, x, create_graph=True)`) has a graph of its
    own: drawing it shows the ops its backward recorded, shaded and marked with the op whose backward
    recorded them (the graphs of tanh's n-th derivatives grow as in DeZero).

    Returns:
        a graphviz.Digraph: shown inline in Jupyter; `.render(path, format="svg")`, `.pipe("png")`,
        `.source` for the DOT text. Rendering without Graphviz's `dot` raises GraphvizNotInstalled.
    """
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise ValueError(f"draw_graph: rankdir must be 'TB', 'LR', 'BT' or 'RL', not {rankdir!r}")
    if depth is not None and depth < 0:
        raise ValueError(f"draw_graph: depth must be >= 0 or None, not {depth}")
    digraph_class()                                   # fail early, with the install hint, without graphviz
    ex = extract(root, backward=backward, module=module)
    pic = ex.picture if depth is None else _collapse(ex.picture, ex.scopes, depth)
    if max_nodes is not None and len(pic.vertices) > max_nodes:
        raise _too_many(pic, max_nodes, ex.deepest, depth)
    return _emit(pic, ex.scopes, ex.names, show_values, rankdir, ex.note)


class Extraction:
    """One view of a computation, before any folding: the picture, its module tree, parameter names,
    a note for the reader, and how deep the modules nest."""

    def __init__(self, picture: _Picture, scopes: _Scopes, names: dict, note: str):
        self.picture, self.scopes, self.names, self.note = picture, scopes, names, note
        self.deepest = max((scopes.level(v.scope) for v in picture.vertices.values() if v.scope), default=0)


def extract(root, *, backward: bool = False, module: Module | None = None) -> Extraction:
    """Pass 1 for `root`: the forward (or backward) vertices and edges, and the module tree they sit in.

    Shared by `draw_graph` (which folds and emits it) and `explore` (which sends it to the browser).
    """
    roots = record.roots_of(root)
    note = ""
    if backward:
        pic, any_recorded = _backward_picture(roots)
        if not any_recorded:
            note = ("Gradient shapes only. For gradient norms, run backward inside "
                    "`with tx.viz.record_gradients():` and draw again.")
    else:
        pic = _forward_picture(roots)
    scopes = _Scopes((v.scope for v in pic.vertices.values()), module)
    names = {id(p): name for name, p in module.named_parameters()} if module is not None else {}
    return Extraction(pic, scopes, names, note)
