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

from . import backend, tensor
from .tensor import Tensor

_grad_enabled = True
_scope: list[str] = []          # stack of module paths; only module_scope pushes and pops it
_backward_hooks: dict = {}      # handle id -> hook; only register_backward_hook and its handles touch it
_hook_ids = itertools.count()


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
    `input_grads` the tuple of arrays (or None) it returned, one per forward argument. The hook only
    watches: what it returns is ignored. Hooks run in the order they were registered.
    """
    if not callable(hook):
        raise TypeError(f"register_backward_hook: expected a callable, got {type(hook).__name__}")
    handle = RemovableHandle(next(_hook_ids))
    _backward_hooks[handle.id] = hook
    return handle


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Function:
    """Base class of every differentiable op, built-in or user-defined (as torch.autograd.Function).

    Subclasses define two static methods:
        forward(ctx, *args)   -> backend array; tensor arguments arrive as arrays
        backward(ctx, grad)   -> one gradient array (or None) per forward argument
    """
    released = False
    saved_tensors: tuple = ()

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
        try:
            out = cls.forward(ctx, *arrays, **kwargs)
        except (ValueError, IndexError, TypeError) as e:
            shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, Tensor))
            raise type(e)(f"{cls.op}: {e} (input shapes: {shapes})") from None
        out = backend.as_array(out)
        if not requires:
            return Tensor._make(out, False, None)
        ctx.parents = tuple((a._ctx or a) if isinstance(a, Tensor) else None for a in args)
        ctx.out_shape, ctx.out_dtype = out.shape, out.dtype
        ctx.scope = _scope[-1] if _scope else ""
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
def topological_order(root: Function) -> list[Function]:
    """Every node reachable from `root`, each after all of its parents (iterative DFS, no recursion)."""
    order, seen = [], set()
    stack = [(root, False)]
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


def backward(root: Tensor, grad=None, retain_graph: bool = False) -> None:
    """Send d(root)/d(leaf) into every leaf's `.grad`, walking the graph from root to leaves."""
    if root._ctx is None:
        raise RuntimeError("backward: this tensor does not require grad and has no graph "
                           "(create the inputs with requires_grad=True, outside no_grad())")
    xp = backend.array_module(root.data)
    if grad is None:
        if root.data.size != 1:
            raise RuntimeError(f"backward: grad can be implied only for a scalar output, but the output "
                               f"has shape {root.shape}; pass grad= of that shape or reduce it first")
        grad = xp.ones(root.shape, dtype=root.dtype)
    else:
        grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=root.dtype)
        if grad.shape != root.shape:
            raise RuntimeError(f"backward: grad has shape {grad.shape} but the output has shape {root.shape}")

    grads = {root._ctx: grad}
    handed_out = set()              # ids of arrays already given to a leaf in this pass
    for node in reversed(topological_order(root._ctx)):
        g = grads.pop(node, None)
        if g is None:
            continue
        if node.released:
            raise RuntimeError(
                f"backward: trying to backward through the graph a second time ({node.op_name} node): "
                "its saved arrays were freed by the first backward(). Pass retain_graph=True to the "
                "first call if you need to call backward twice.")
        retained = getattr(node, "retained", None)
        if retained is not None and retained() is not None:
            _accumulate_leaf(retained(), g, False)
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
            if isinstance(parent, Function):
                prev = grads.get(parent)
                grads[parent] = gi if prev is None else prev + gi
            else:
                fresh = gi.base is None and gi is not g and id(gi) not in handed_out
                handed_out.add(id(gi))
                _accumulate_leaf(parent, gi, fresh)


tensor.register_autograd(sys.modules[__name__])     # Tensor.backward calls backward() above
