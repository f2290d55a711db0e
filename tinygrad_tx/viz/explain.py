"""`explain(loss)`: the backward pass narrated step by step, then performed.

Each step names the op, the shape of the gradient G arriving from its output, the local derivative
rule in one line, and what is sent to each input, including where broadcasting is undone by a sum.
"""
from __future__ import annotations

from .. import autograd, backend
from ..autograd import Function
from ..nn import Parameter
from ..tensor import Tensor
from . import record


def rule(node) -> str:
    """The local derivative rule of a graph node (or Function class), as its primitive states it
    beside its backward (`rule`): G = dL/d(output), Y the output, A and B the inputs of a binary op,
    X the input of a unary one."""
    return node.rule


def fmt_shape(shape) -> str:
    return str(tuple(int(n) for n in shape))


def leaf_role(leaf: Tensor) -> str:
    """What a leaf is to the graph: 'parameter', 'input', 'constant' (a number) or 'mask'."""
    if leaf.requires_grad:
        return "parameter" if isinstance(leaf, Parameter) else "input"
    if leaf.ndim == 0:
        return "constant"
    return "mask" if leaf.dtype == backend.bool_ else "input"


def leaf_name(leaf: Tensor) -> str:
    return leaf.name or leaf_role(leaf)


def _count_contributions(nodes: list[Function]) -> dict:
    """node -> how many gradient contributions its output receives (one per use that needs it)."""
    counts: dict = {}
    for node in nodes:
        for parent, needs in zip(node.parents, node.needs_input_grad):
            if needs and isinstance(parent, Function):
                counts[parent] = counts.get(parent, 0) + 1
    return counts


def _describe_step(k: int, node: Function, steps: dict, contributions: dict) -> list[str]:
    where = f"   (in module {node.scope})" if node.scope else ""
    if node.derivative_of:
        where += f"   (recorded by {node.derivative_of}'s backward)"
    lines = [f"step {k}: {node.op_name} -> output {fmt_shape(node.out_shape)}{where}"]
    rec = record.recorded(node)
    incoming = f"{fmt_shape(rec.grad_shape)}, norm {rec.grad_norm:.4g}" if rec else fmt_shape(node.out_shape)
    n = contributions.get(node, 1)
    if n > 1:
        incoming += f", the sum of {n} contributions (one per use of this output)"
    lines.append(f"    incoming gradient G  {incoming}")
    lines.append(f"    local rule           {rule(node)}")
    for i, parent in enumerate(node.parents):
        if parent is None:
            continue                                    # a non-tensor argument (an axis, a shape)
        if isinstance(parent, Function):
            what = f"{parent.op_name} output {fmt_shape(parent.out_shape)}"
        else:
            what = f"{leaf_name(parent)} {fmt_shape(parent.shape)}"
        if not node.needs_input_grad[i]:
            lines.append(f"    -> input {i}, {what}: no gradient (does not require grad)")
            continue
        sent = rec.inputs[i] if rec else None
        if rec is not None and sent is None:
            lines.append(f"    -> input {i}, {what}: no gradient (backward returned None)")
            continue
        text = f"    -> input {i}, {what}: gets {fmt_shape(record.input_shape(parent))}"
        if sent is not None:
            text += f", norm {sent[1]:.4g}"
        full, axes = record.broadcast_axes(node, i)
        if axes:
            text += f", summed over broadcast axes {axes} of the {fmt_shape(full)} gradient"
        if isinstance(parent, Function):
            text += f"  (its backward is step {steps[parent]})" if parent in steps else ""
        else:
            text += f"  (added to {leaf_name(parent)}.grad)"
        lines.append(text)
    return lines


def explain(loss: Tensor, grad=None, retain_graph: bool | None = None, create_graph: bool = False) -> str:
    """Run `loss.backward(grad, retain_graph, create_graph)` and narrate it: print each step and return the text.

    Steps come in the order backward runs them, the reverse of a topological order: a node runs only
    after every op that used its output, so the gradient it passes on is already complete.

    A double backward narrates too: differentiate a gradient that a `create_graph=True` backward
    recorded (`explain(tx.grad(y, x, create_graph=True)[0].sum())`), and each step says whose
    backward recorded it; `create_graph=True` here narrates the first backward while it records.
    """
    if loss._ctx is None:
        autograd.backward(loss, grad, retain_graph, create_graph)     # raises the engine's own clear error
    nodes = record.graph_nodes([loss])
    contributions = _count_contributions(nodes)
    ran: list[Function] = []

    def remember_order(node, grad_output, input_grads):
        ran.append(node)

    with autograd.register_backward_hook(remember_order), record.record_gradients():
        autograd.backward(loss, grad, retain_graph, create_graph)

    steps = {node: k for k, node in enumerate(ran, start=1)}
    lines = [f"Backward pass from a tensor of shape {fmt_shape(loss.shape)}: {len(ran)} steps.",
             "Order: reverse topological. A node runs only after every op that used its output, so the",
             "gradient G it receives is complete (all contributions summed) before it is passed on."]
    if create_graph:
        lines.append("create_graph=True: each step runs its rule on Tensors, recording it, so every gradient is a "
                     "graph that can be differentiated again.")
    second = sum(1 for node in ran if node.derivative_of)
    if second:
        lines.append(f"{second} of these steps differentiate a gradient: their nodes were recorded by an earlier "
                     "create_graph backward (a double backward).")
    lines.append("")
    for k, node in enumerate(ran, start=1):
        lines += _describe_step(k, node, steps, contributions)
    leaves = {}
    for node in ran:
        for parent, needs in zip(node.parents, node.needs_input_grad):
            if needs and isinstance(parent, Tensor) and parent.grad is not None:
                leaves[id(parent)] = parent
    if leaves:
        lines += ["", "Gradients landed in: " + ", ".join(
            f"{leaf_name(t)}.grad {fmt_shape(t.grad.shape)}" for t in leaves.values())]
    text = "\n".join(lines)
    print(text)
    return text
