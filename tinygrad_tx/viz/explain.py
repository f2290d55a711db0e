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

# op_name -> the local derivative rule, in the notation of primitives.py: G = dL/d(output),
# Y = the output, A and B the two inputs of a binary op, X the input of a unary one.
RULES = {
    "Add": "dA = G, dB = G",
    "Sub": "dA = G, dB = -G",
    "Mul": "dA = G * B, dB = G * A",
    "Div": "dA = G / B, dB = -G * A / B^2",
    "Neg": "dX = -G",
    "Pow": "dA = G * B * A^(B-1), dB = G * A^B * log(A)",
    "Exp": "dX = G * exp(X) = G * Y",
    "Log": "dX = G / X",
    "Sqrt": "dX = G / (2 sqrt(X)) = G / (2Y)",
    "Tanh": "dX = G * (1 - Y^2)",
    "Sigmoid": "dX = G * Y * (1 - Y)",
    "ReLU": "dX = G where X > 0, else 0",
    "Abs": "dX = G * sign(X)",
    "Where": "dA = G where cond, else 0; dB = G where not cond, else 0",
    "Cast": "dX = G cast back to X's dtype",
    "ToDevice": "dX = G moved back to X's device",
    "Sum": "dX = G copied back to every element that was summed",
    "Max": "dX = G at the maximum (shared among ties), 0 elsewhere",
    "Reshape": "dX = G reshaped back to X's shape",
    "Permute": "dX = G with the axes put back (inverse permutation)",
    "GetItem": "dX = zeros of X's shape, G written (or added, for repeated indices) at the index",
    "Cat": "dX_i = the slice of G that X_i filled",
    "MatMul": "dA = G @ B^T, dB = A^T @ G",
    "Softmax": "dX = Y * (G - sum(G * Y, axis))",
    "LogSoftmax": "dX = G - softmax(X) * sum(G, axis)",
    "MaskedFill": "dX = G where the mask is False, 0 where it is True",
    "Dropout": "dX = G * keep / (1 - p), the same kept positions as forward",
    "LayerNorm": "dX = r (Gw - mean(Gw) - xh mean(Gw xh)), dw = sum(G xh), db = sum(G)  (xh = normalised X, r = 1/std)",
    "Embedding": "dW[k] = sum of G over the positions whose index is k",
    "CrossEntropy": "dlogits = (softmax(logits) - target distribution) * G / rows",
}


def rule(op_name: str) -> str:
    return RULES.get(op_name, "a user-defined Function: see its backward()")


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
    lines = [f"step {k}: {node.op_name} -> output {fmt_shape(node.out_shape)}{where}"]
    rec = record.recorded(node)
    incoming = f"{fmt_shape(rec.grad_shape)}, norm {rec.grad_norm:.4g}" if rec else fmt_shape(node.out_shape)
    n = contributions.get(node, 1)
    if n > 1:
        incoming += f", the sum of {n} contributions (one per use of this output)"
    lines.append(f"    incoming gradient G  {incoming}")
    lines.append(f"    local rule           {rule(node.op_name)}")
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


def explain(loss: Tensor, grad=None, retain_graph: bool = False) -> str:
    """Run `loss.backward(grad, retain_graph)` and narrate it: print each step and return the text.

    Steps come in the order backward runs them, the reverse of a topological order: a node runs only
    after every op that used its output, so the gradient it passes on is already complete.
    """
    if loss._ctx is None:
        autograd.backward(loss, grad, retain_graph)     # raises the engine's own clear error
    nodes = record.graph_nodes([loss])
    contributions = _count_contributions(nodes)
    ran: list[Function] = []

    def remember_order(node, grad_output, input_grads):
        ran.append(node)

    with autograd.register_backward_hook(remember_order), record.record_gradients():
        autograd.backward(loss, grad, retain_graph)

    steps = {node: k for k, node in enumerate(ran, start=1)}
    lines = [f"Backward pass from a tensor of shape {fmt_shape(loss.shape)}: {len(ran)} steps.",
             "Order: reverse topological. A node runs only after every op that used its output, so the",
             "gradient G it receives is complete (all contributions summed) before it is passed on.",
             ""]
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
