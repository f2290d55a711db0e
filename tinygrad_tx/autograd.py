"""Reverse-mode automatic differentiation: the graph node (`Function`) and the backward walk.

Every op is a `Function` subclass with a `forward` and a `backward` side by side (primitives.py).
`Function.apply` runs forward on backend arrays and, when a gradient is needed, records one graph
node: the `Function` instance itself, which doubles as the `ctx` that `forward` saves into.

A node's record, which the drawing and `explain` code read and nothing more:
    node.op_name            'MatMul', 'Softmax', ...
    node.parents            one entry per forward argument: the producing node for a non-leaf
                            tensor, the Tensor itself for a leaf, None for a non-tensor argument
    node.needs_input_grad   which of those arguments receive a gradient
    node.out_shape, node.out_dtype
    node.scope              the dotted path of the Module that was running ('' at top level)
Nodes point at their parents' *nodes*, not at the intermediate tensors, so an intermediate is
freed as soon as the user drops it, and `backward()` frees the saved arrays as it goes.

Two public hooks let the layers above watch the engine without keeping state in it:
    with module_scope("encoder.layers.0"): ...      tag the nodes recorded inside (nn.Module.__call__)
    handle = register_backward_hook(fn)             fn(node, grad_output, input_grads) after each
    handle.remove()                                 node's backward (viz.record_gradients, viz.explain)
"""
from __future__ import annotations

import functools
import itertools
import re
import sys
import weakref

from . import backend, kernels, tensor
from .tensor import Tensor

_grad_enabled = True
_scope: list[str] = []          # stack of module paths; only module_scope pushes and pops it
_backward_hooks: dict = {}      # handle id -> hook; only register_backward_hook and its handles touch it
_hook_ids = itertools.count()
_backward_of = None             # op name of the node whose backward is being recorded (create_graph)


def is_grad_enabled() -> bool:
    return _grad_enabled


class no_grad:
    """Context manager and decorator: record nothing, save nothing (inference, optimizer steps)."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, False
        return self

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        return wrapper


class module_scope:
    """Context manager: every graph node recorded inside the block gets `node.scope = name`.

    `nn.Module.__call__` wraps each forward in one, with the module's dotted path, so drawings can
    cluster the graph by module. Scopes nest; the innermost one wins.
    """
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        _scope.append(self.name)
        return self

    def __exit__(self, *exc):
        _scope.pop()
        return False


def current_scope() -> str:
    """The name of the innermost open module_scope ('' outside all of them)."""
    return _scope[-1] if _scope else ""


class RemovableHandle:
    """What `register_backward_hook` returns: `handle.remove()` unregisters the hook (as in torch).

    It is also a context manager, so a hook can live exactly as long as a block:
        with register_backward_hook(fn):
            loss.backward()
    """
    __slots__ = ("id",)

    def __init__(self, hook_id: int):
        self.id = hook_id

    def remove(self) -> None:
        """Unregister the hook; removing twice is harmless."""
        _backward_hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


def register_backward_hook(hook) -> RemovableHandle:
    """Call `hook(node, grad_output, input_grads)` after each node's backward, in every backward pass.

    `node` is the graph node (a Function), `grad_output` the gradient array it received and
    `input_grads` the tuple of arrays (or None) it returned, one per forward argument (Tensors, in
    a create_graph backward). The hook only
    watches: what it returns is ignored. Hooks run in the order they were registered.
    """
    if not callable(hook):
        raise TypeError(f"register_backward_hook: expected a callable, got {type(hook).__name__}")
    handle = RemovableHandle(next(_hook_ids))
    _backward_hooks[handle.id] = hook
    return handle


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


OUTPUT = -1     # saved_roles marker: the saved array is the op's own output


def _as_floating(args, positions):
    """args with the integer or bool Tensors at `positions` cast to float32 (a differentiable Cast)."""
    args = list(args)
    for i in positions:
        a = args[i] if i < len(args) else None
        if isinstance(a, Tensor) and not backend.is_floating(a.dtype):
            args[i] = a.to(dtype=backend.float32)
    return tuple(args)


def _role(saved, args, arrays, raw_out, out):
    """Which forward value a saved array is: an argument's index, OUTPUT, or None (an internal value)."""
    if saved is raw_out or saved is out:
        return OUTPUT
    for i, a in enumerate(arrays):
        if saved is a and isinstance(args[i], Tensor):
            return i
    return None


class Function:
    """Base class of every differentiable op, built-in or user-defined (as torch.autograd.Function).

    Subclasses define two static methods:
        forward(ctx, *args)   -> backend array; tensor arguments arrive as arrays
        backward(ctx, grad)   -> one gradient (or None) per forward argument
    and a one-line `rule`, the derivative that `viz.explain` prints (G = gradient of the output).

    backward runs in one of two modes, chosen by the walk (see `run_backward`):
      - first order (create_graph=False): `grad` and `ctx.saved_tensors` are backend arrays and
        backward computes on them directly: no graph, as fast as NumPy allows;
      - create_graph=True: `grad` is a Tensor, and every saved array that *is* a forward input or
        the output arrives as a Tensor wired into the graph (other saved arrays, such as masks,
        stay plain arrays: constants). The same arithmetic then records primitives, so the
        gradient is itself a graph that can be differentiated again (DeZero's trick).
    The built-in primitives write each backward once, with arithmetic operators, methods both types
    share (`.sum`, `.reshape`) and the small helpers in primitives.py (`exp`, `where`, ...) that
    pick the array or the Tensor version by their argument.

    A primitive may also define fused CUDA versions of both (kernels.py), with the same arguments,
    results and saved arrays: forward_cuda(ctx, *args) and backward_cuda(ctx, grad). `apply` runs
    them instead when the arguments are CuPy arrays that `kernels.accepts`; backward_cuda runs in
    first-order backward only (create_graph runs the primitive's own backward on Tensors).
    """
    forward_cuda = None
    backward_cuda = None
    released = False
    saved_tensors: tuple = ()
    saved_roles: tuple = ()     # per saved array: the forward argument it is, OUTPUT, or None
    derivative_of = None        # for a node recorded by a create_graph backward: whose backward ('Tanh')
    rule = "a user-defined Function: see its backward()"    # the derivative in one line, for explain
    # Positions of arguments that must be floating point: an integer or bool Tensor there becomes
    # float32 first (torch's default dtype), so log(int) or softmax(int) is float32, never float64.
    floating_inputs: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.op_name = cls.__name__                          # label for graphs: 'MatMul'
        if "op" not in cls.__dict__:
            cls.op = _snake(cls.__name__)                   # name in errors: 'masked_fill'; a class may set its own

    def save_for_backward(self, *arrays):
        """Keep arrays for backward; a no-op when no gradient will be needed."""
        if self.recording:
            self.saved_tensors = arrays

    @classmethod
    def apply(cls, *args, **kwargs):
        if cls.floating_inputs:
            args = _as_floating(args, cls.floating_inputs)
        ctx = cls()
        arrays, device, requires = [], None, False
        for a in args:
            if isinstance(a, Tensor):
                d = a.device
                if device is None:
                    device = d
                elif d != device:
                    raise RuntimeError(f"{cls.op}: tensors are on different devices ({device} and {d}); "
                                       f"move them with .to('{device}') first")
                requires = requires or a.requires_grad
                arrays.append(a.data)
            else:
                arrays.append(a)
        ctx.recording = requires = requires and _grad_enabled
        if requires:
            ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        forward = cls.forward
        if cls.forward_cuda is not None and kernels.accepts(arrays):
            # The one place where the device chooses the kernel: fused CUDA code for CuPy arrays that
            # the kernels take, with the matching fused backward for this node.
            forward, ctx.backward = cls.forward_cuda, cls.backward_cuda
        try:
            out = forward(ctx, *arrays, **kwargs)
        except (ValueError, IndexError, TypeError) as e:
            shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, Tensor))
            raise type(e)(f"{cls.op}: {e} (input shapes: {shapes})") from None
        raw_out, out = out, backend.as_array(out)
        if not requires:
            return Tensor._make(out, False, None)
        if ctx.saved_tensors:
            ctx.saved_roles = tuple(_role(s, args, arrays, raw_out, out) for s in ctx.saved_tensors)
        ctx.parents = tuple((a._ctx or a) if isinstance(a, Tensor) else None for a in args)
        ctx.out_shape, ctx.out_dtype = out.shape, out.dtype
        ctx.scope = _scope[-1] if _scope else ""
        if _backward_of is not None:
            ctx.derivative_of = _backward_of
        result = Tensor._make(out, True, ctx)
        ctx.out_ref = weakref.ref(result)
        return result

    @staticmethod
    def forward(ctx, *args):
        raise NotImplementedError("a Function subclass must define forward(ctx, *args)")

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("a Function subclass must define backward(ctx, grad)")

    def __repr__(self):
        return f"<{self.op_name} {self.out_shape} {self.out_dtype}>" if self.recording else f"<{self.op_name}>"


# ---------------------------------------------------------------------------- the backward walk
def topological_order(*roots: Function) -> list[Function]:
    """Every node reachable from the roots, each after all of its parents (iterative DFS, no recursion)."""
    order, seen = [], set()
    stack = [(root, False) for root in reversed(roots)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        for p in node.parents:
            if isinstance(p, Function) and p not in seen:
                stack.append((p, False))
    return order


def _accumulate_leaf(leaf: Tensor, g, fresh: bool):
    """leaf.grad += g. A gradient array that may be shared with another input is copied first."""
    if leaf.grad is None:
        leaf.grad = Tensor._make(g if fresh else g.copy(), False, None)
    else:
        leaf.grad = Tensor._make(leaf.grad.data + g, False, None)


def _accumulate_leaf_graph(leaf: Tensor, g: Tensor):
    """leaf.grad += g, recorded: with create_graph=True the gradient keeps its graph (as torch's)."""
    leaf.grad = g if leaf.grad is None else leaf.grad + g


def _graph_saved(node: Function) -> tuple:
    """The node's saved arrays as create_graph backward sees them: inputs and output become Tensors
    wired into the graph (a new handle on the same node for the output), the rest stay arrays."""
    out = []
    for s, role in zip(node.saved_tensors, node.saved_roles or (None,) * len(node.saved_tensors)):
        if role is None or s is None:
            out.append(s)
        elif role == OUTPUT:
            out.append(Tensor._make(backend.as_array(s), True, node))
        else:
            parent = node.parents[role]
            out.append(parent if isinstance(parent, Tensor) else Tensor._make(s, True, parent))
    return tuple(out)


def _start_gradient(root: Tensor, grad, create_graph: bool, who: str):
    """The gradient the walk starts from: ones for a scalar, else `grad` checked against the shape."""
    xp = backend.array_module(root.data)
    if grad is None:
        if root.data.size != 1:
            raise RuntimeError(f"{who}: grad can be implied only for a scalar output, but the output "
                               f"has shape {root.shape}; pass grad= of that shape or reduce it first")
        grad = xp.ones(root.shape, dtype=root.dtype)
    elif isinstance(grad, Tensor):
        if not create_graph:
            grad = grad.data
    else:
        grad = xp.asarray(grad, dtype=root.dtype)
    if grad.shape != root.shape:
        raise RuntimeError(f"{who}: grad has shape {grad.shape} but the output has shape {root.shape}")
    if create_graph and not isinstance(grad, Tensor):
        grad = Tensor._make(grad, False, None)
    return grad


def run_backward(roots, grads, retain_graph: bool = False, create_graph: bool = False, targets=None,
                 who: str = "backward"):
    """The one backward walk, behind `Tensor.backward` and `grad`.

    Visits the nodes in reverse topological order: a node runs only after every op that used its
    output, so the gradient it passes on is complete. Each node's gradient is popped when it runs
    and, unless `retain_graph`, its saved arrays are dropped.

    Args:
        roots, grads: the outputs and the gradients to start from (None: ones for a scalar).
        create_graph: run every backward on Tensors, recording it (see `Function`), so the gradients
            returned are differentiable again. Off, backward computes on raw arrays.
        targets: None to accumulate into every leaf's `.grad` (Tensor.backward); else a list of
            tensors (leaves or intermediates) whose gradients are returned, in a dict keyed by
            `id(tensor)`, touching no `.grad`. Nodes that lead to no target are skipped.
    """
    global _grad_enabled, _backward_of
    starts = []
    for root, grad in zip(roots, grads):
        starts.append((root, _start_gradient(root, grad, create_graph, who)))
    found: dict = {}
    target_leaves, target_nodes = {}, {}
    if targets is not None:
        for t in targets:
            if t._ctx is None:
                target_leaves[id(t)] = t
            else:
                target_nodes.setdefault(t._ctx, []).append(t)

    grads_of: dict = {}
    summed = set()      # ids of array sums this walk made and alone holds: safe to add into in place

    def send(key, g):
        prev = grads_of.get(key)
        if prev is None:
            grads_of[key] = g
        elif id(prev) in summed and prev.dtype == backend.array_module(prev).result_type(prev, g):
            prev += g       # a third or later contribution (a node read by q, k and v): no new array
        else:
            grads_of[key] = total = prev + g
            if not create_graph:
                summed.add(id(total))

    for root, g in starts:
        if root._ctx is not None:
            send(root._ctx, g)
        elif targets is not None and id(root) in target_leaves:
            found[id(root)] = g if id(root) not in found else found[id(root)] + g
        else:
            raise RuntimeError(f"{who}: this tensor does not require grad and has no graph "
                               "(create the inputs with requires_grad=True, outside no_grad())")

    order = topological_order(*[root._ctx for root, _ in starts if root._ctx is not None])
    leads = None                     # node -> whether a target lies upstream (only with targets)
    if targets is not None:
        leads = set()
        for node in order:           # parents come first, so their answer is known
            for p in node.parents:
                if (isinstance(p, Function) and (p in leads or p in target_nodes)) or \
                        (isinstance(p, Tensor) and id(p) in target_leaves):
                    leads.add(node)
                    break

    handed_out = set()               # ids of arrays already given to a leaf in this pass
    prev_enabled = _grad_enabled
    _grad_enabled = create_graph     # a create_graph backward records; a plain one records nothing
    try:
        for node in reversed(order):
            g = grads_of.pop(node, None)
            if g is None:
                continue
            summed.discard(id(g))    # from here on g may be handed out (Add returns it to both inputs)
            if targets is not None:
                for t in target_nodes.get(node, ()):
                    found[id(t)] = g
                if node not in leads:
                    continue
            if node.released:
                raise RuntimeError(
                    f"{who}: trying to backward through the graph a second time ({node.op_name} node): "
                    "its saved arrays were freed by the first backward(). Pass retain_graph=True to the "
                    "first call if you need to call backward twice.")
            retained = getattr(node, "retained", None)
            if targets is None and retained is not None and retained() is not None:
                if create_graph:
                    _accumulate_leaf_graph(retained(), g)
                else:
                    _accumulate_leaf(retained(), g, False)
            if create_graph:
                arrays, outer = node.saved_tensors, _backward_of
                node.saved_tensors, _backward_of = _graph_saved(node), node.op_name
                try:
                    input_grads = type(node).backward(node, g)     # never the fused kernel: it takes arrays
                finally:
                    node.saved_tensors, _backward_of = arrays, outer
            else:
                input_grads = node.backward(node, g)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            if len(input_grads) != len(node.parents):
                raise RuntimeError(f"{node.op}: backward returned {len(input_grads)} gradients for "
                                   f"{len(node.parents)} forward arguments")
            if _backward_hooks:
                for hook in tuple(_backward_hooks.values()):
                    hook(node, g, input_grads)
            if not retain_graph:
                node.saved_tensors = ()
                node.released = True
            for parent, needs, gi in zip(node.parents, node.needs_input_grad, input_grads):
                if not needs or gi is None:
                    continue
                expected = parent.out_shape if isinstance(parent, Function) else parent.shape
                if gi.shape != expected:
                    raise RuntimeError(f"{node.op}: backward gave a gradient of shape {gi.shape} for an "
                                       f"input of shape {expected}")
                if create_graph and not isinstance(gi, Tensor):
                    gi = Tensor._make(gi, False, None)
                if isinstance(parent, Function):
                    if leads is None or parent in leads or parent in target_nodes:
                        send(parent, gi)
                elif targets is not None:
                    if id(parent) in target_leaves:
                        prev = found.get(id(parent))
                        found[id(parent)] = gi if prev is None else prev + gi
                elif create_graph:
                    _accumulate_leaf_graph(parent, gi)
                else:
                    fresh = gi.base is None and gi is not g and id(gi) not in handed_out
                    handed_out.add(id(gi))
                    _accumulate_leaf(parent, gi, fresh)
    finally:
        _grad_enabled = prev_enabled
    return found


def backward(root: Tensor, grad=None, retain_graph: bool | None = None, create_graph: bool = False) -> None:
    """Send d(root)/d(leaf) into every leaf's `.grad`, walking the graph from root to leaves.

    With create_graph=True the gradients are recorded as a graph (each `.grad` can be differentiated
    again); retain_graph defaults to create_graph, as in torch.
    """
    if retain_graph is None:
        retain_graph = create_graph
    run_backward([root], [grad], retain_graph, create_graph)


def grad(outputs, inputs, grad_outputs=None, retain_graph: bool | None = None, create_graph: bool = False,
         allow_unused: bool = False) -> tuple:
    """The gradients of `outputs` with respect to `inputs`, returned, as `torch.autograd.grad`.

    Args:
        outputs: a Tensor or a sequence of Tensors to differentiate (their gradients are summed).
        inputs: a Tensor or a sequence of Tensors (leaves or intermediates) to differentiate by.
        grad_outputs: the gradient of each output (None: ones, for a scalar output); a Tensor that
            requires grad keeps its graph with create_graph=True (the double-vjp trick uses this).
        retain_graph: keep the saved arrays for another backward; defaults to create_graph.
        create_graph: record the backward pass, so the returned gradients can be differentiated again.
        allow_unused: return None for an input that the outputs do not depend on, instead of raising.
    Returns:
        a tuple with one gradient Tensor (or None) per input. No `.grad` is touched.
    """
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    single = isinstance(inputs, Tensor)
    inputs = [inputs] if single else list(inputs)
    if grad_outputs is None or isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs] * len(outputs) if grad_outputs is None else [grad_outputs]
    else:
        grad_outputs = list(grad_outputs)
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"grad: got {len(grad_outputs)} grad_outputs for {len(outputs)} outputs")
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"grad: input {i} is a {type(t).__name__}, not a Tensor")
        if not t.requires_grad:
            raise RuntimeError(f"grad: input {i} (shape {t.shape}) does not require grad")
    for i, o in enumerate(outputs):
        if not o.requires_grad:
            raise RuntimeError(f"grad: output {i} (shape {o.shape}) does not require grad and has no graph")
    if retain_graph is None:
        retain_graph = create_graph
    found = run_backward(outputs, grad_outputs, retain_graph, create_graph, targets=inputs, who="grad")
    result, handed_out = [], set()
    for i, t in enumerate(inputs):
        g = found.get(id(t))
        if g is None:
            if not allow_unused:
                raise RuntimeError(f"grad: input {i} (shape {t.shape}) was not used to compute the outputs; "
                                   "pass allow_unused=True to get None for it")
            result.append(None)
        elif isinstance(g, Tensor):
            result.append(g)
        else:                        # a fresh array: never a view, nor one shared with another input
            shared = g.base is not None or id(g) in handed_out
            handed_out.add(id(g))
            result.append(Tensor._make(g.copy() if shared else g, False, None))
    return tuple(result)


tensor.register_autograd(sys.modules[__name__])     # Tensor.backward calls backward() above
