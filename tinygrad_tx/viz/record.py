"""Reading the graph record that autograd leaves behind, and recording gradients during backward.

Drawing and `explain` only *read* the record (`op_name`, `parents`, `needs_input_grad`,
`out_shape`, `out_dtype`, `scope`, `out_ref`). Nothing here is stored on the graph: recorded
gradient summaries live in a weak dictionary, so they vanish with the graph.
"""
from __future__ import annotations

import contextlib
import weakref

from .. import autograd, backend
from ..autograd import Function
from ..tensor import Tensor

# The primitives whose backward sums a gradient back down to a smaller input (primitives.unbroadcast).
BROADCASTING_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Where", "MaskedFill"})

# node -> GradientRecord, filled only inside `record_gradients()`; weak, so it never keeps a graph alive
_records: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def roots_of(root) -> list[Tensor]:
    """A Tensor, or a list/tuple of Tensors, as a list (the outputs a drawing starts from)."""
    roots = list(root) if isinstance(root, (list, tuple)) else [root]
    for r in roots:
        if not isinstance(r, Tensor):
            raise TypeError(f"viz: expected a Tensor (or a list of Tensors) to draw, not {type(r).__name__}")
    return roots


def graph_nodes(roots: list[Tensor]) -> list[Function]:
    """Every graph node reachable from the roots, each after its parents (no duplicates)."""
    order, seen = [], set()
    for r in roots:
        if r._ctx is None:
            continue
        for node in autograd.topological_order(r._ctx):
            if node not in seen:
                seen.add(node)
                order.append(node)
    return order


def input_shape(parent) -> tuple:
    """The shape of a forward argument: a node's output or a leaf tensor."""
    return tuple(parent.out_shape) if isinstance(parent, Function) else tuple(parent.shape)


def broadcast_axes(node: Function, i: int) -> tuple[tuple, tuple]:
    """How backward sends the gradient to input i: (shape before the reduction, summed axes).

    Broadcasting in forward copies an input along new or size-1 axes, so backward sums the gradient
    over those axes (`unbroadcast`). The axes are () when nothing was broadcast.
    """
    shape = input_shape(node.parents[i])
    out = tuple(node.out_shape)
    if node.op_name in BROADCASTING_OPS:
        full = out
    elif node.op_name == "MatMul" and len(shape) >= 2 and len(out) >= 2:
        full = out[:-2] + shape[-2:]        # only the batch axes broadcast in a matmul
    else:
        return shape, ()
    if full == shape:
        return shape, ()
    lead = len(full) - len(shape)
    axes = tuple(range(lead)) + tuple(lead + j for j, n in enumerate(shape) if n == 1 and full[lead + j] != 1)
    return full, axes


def norm(array) -> float:
    """The Euclidean norm of a gradient array (or Tensor, in a create_graph backward), as a Python
    float (one BLAS dot, no temporaries)."""
    if isinstance(array, Tensor):
        array = array.data
    xp = backend.array_module(array)
    flat = array.reshape(-1)
    return float(xp.sqrt(xp.dot(flat, flat)))


class GradientRecord:
    """What one node's backward received and sent: shapes and norms, never the arrays."""
    __slots__ = ("grad_shape", "grad_norm", "inputs")

    def __init__(self, grad_output, input_grads):
        self.grad_shape, self.grad_norm = tuple(grad_output.shape), norm(grad_output)
        self.inputs = tuple(None if g is None else (tuple(g.shape), norm(g)) for g in input_grads)


def _record_hook(node, grad_output, input_grads):
    _records[node] = GradientRecord(grad_output, input_grads)


@contextlib.contextmanager
def record_gradients():
    """Inside this block, every backward() remembers each node's gradient shapes and norms.

    `draw_graph(loss, backward=True)` then writes the norms on its edges:

        with tx.viz.record_gradients():
            loss.backward()
        tx.viz.draw_graph(loss, backward=True)

    Outside the block backward records nothing and costs nothing extra.
    """
    with autograd.register_backward_hook(_record_hook):
        yield


def recorded(node: Function) -> GradientRecord | None:
    return _records.get(node)
