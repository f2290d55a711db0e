"""Function transforms, with torch.func's signatures: vjp, jvp, and torch.autograd.functional's hvp.

Each takes a function of Tensors and the point to differentiate at. The primals are detached into
fresh leaves, so a transform never writes into the caller's graph or `.grad`, and its results are
plain Tensors (pass create_graph=True to hvp to keep them differentiable).

Forward mode (jvp) is built here by the double-vjp trick, not by tangent rules:

    vjp:  u -> J^T u   is linear in the cotangent u, and recorded with create_graph=True;
    jvp:  J t = (J^T)^T t = the gradient of <J^T u, t> with respect to u.

So one reverse pass with a dummy cotangent u (its value does not matter: J^T u is linear in u),
recorded, then a second reverse pass through that recording, from u's side. Why this way: every
primitive's backward is already written to be differentiated again (and checked by gradgradcheck),
so forward mode costs no second rule per primitive, and it cannot drift out of step with the
reverse rules. The price is speed and memory: about three passes and a recorded backward, where
real tangent rules (jvp rules pushed through the forward, as JAX's) take one forward pass of twice
the work and keep nothing. docs/autodiff.md explains both.
"""
from __future__ import annotations

from .autograd import grad
from .tensor import Tensor


def _as_tuple(x, who, what):
    if isinstance(x, Tensor):
        return (x,), True
    if isinstance(x, (tuple, list)) and all(isinstance(t, Tensor) for t in x):
        return tuple(x), False
    raise TypeError(f"{who}: {what} must be a Tensor or a tuple of Tensors, not {type(x).__name__}")


def _fresh_leaves(primals):
    """Detached copies that require grad: the transform's own graph starts at them."""
    return tuple(Tensor._make(p.data, True, None) for p in primals)


def _zeros_for_none(grads, like):
    return tuple(Tensor._make(p.xp.zeros(p.shape, dtype=p.dtype), False, None) if g is None else g
                 for g, p in zip(grads, like))


def _check_pairs(who, primals, others, what):
    if len(others) != len(primals):
        raise ValueError(f"{who}: got {len(others)} {what} for {len(primals)} primals")
    for i, (p, o) in enumerate(zip(primals, others)):
        if o.shape != p.shape:
            raise ValueError(f"{who}: {what[:-1]} {i} has shape {o.shape} but its primal has shape {p.shape}")


def _detach_all(out):
    return out.detach() if isinstance(out, Tensor) else tuple(o.detach() for o in out)


def vjp(func, *primals):
    """(func(*primals), vjp_fn), where vjp_fn(cotangents) = the vector-Jacobian products, one per primal.

    As torch.func.vjp: `cotangents` has func's output structure (a Tensor or a tuple of Tensors);
    vjp_fn returns a tuple with one Tensor per primal (zeros where the output does not depend on it)
    and may be called any number of times.
    """
    leaves = _fresh_leaves(_as_tuple(primals, "vjp", "primals")[0])
    out = func(*leaves)
    outs, _ = _as_tuple(out, "vjp", "the output of func")

    def vjp_fn(cotangents):
        cts, _ = _as_tuple(cotangents, "vjp_fn", "cotangents")
        _check_pairs("vjp_fn", outs, cts, "cotangents")
        live = [(o, c) for o, c in zip(outs, cts) if o.requires_grad]
        if not live:
            return _zeros_for_none([None] * len(leaves), leaves)
        grads = grad([o for o, _ in live], list(leaves), [c for _, c in live], retain_graph=True,
                     allow_unused=True)
        return tuple(g.detach() if g is not None else None for g in _zeros_for_none(grads, leaves))

    return _detach_all(out), vjp_fn


def jvp(func, primals, tangents):
    """(func(*primals), the Jacobian-vector product J @ tangents), as torch.func.jvp.

    Args:
        func: a function of Tensors returning a Tensor or a tuple of Tensors.
        primals: a tuple of Tensors, the point.
        tangents: a tuple of Tensors, one direction per primal, of the same shapes.
    Returns:
        (output, jvp_out), jvp_out with the output's structure. Built by the double-vjp trick
        (this module's docstring).
    """
    primals, _ = _as_tuple(primals, "jvp", "primals")
    tangents, _ = _as_tuple(tangents, "jvp", "tangents")
    _check_pairs("jvp", primals, tangents, "tangents")
    leaves = _fresh_leaves(primals)
    out = func(*leaves)
    outs, single = _as_tuple(out, "jvp", "the output of func")
    # 1. A dummy cotangent per output; J^T u recorded (create_graph), so it is a function of u.
    dummies = tuple(Tensor._make(o.xp.zeros(o.shape, dtype=o.dtype), True, None) for o in outs)
    live = [k for k, o in enumerate(outs) if o.requires_grad]
    results = [None] * len(outs)
    if live:
        pulled = grad([outs[k] for k in live], list(leaves), [dummies[k] for k in live], create_graph=True,
                      allow_unused=True)
        pairs = [(g, t) for g, t in zip(pulled, tangents) if g is not None and g.requires_grad]
        if pairs:
            # 2. d<J^T u, t>/du = J t, one pass back through the recorded backward.
            dots = [(g * t).sum() for g, t in pairs]
            total = dots[0]
            for d in dots[1:]:
                total = total + d
            pushed = grad(total, [dummies[k] for k in live], allow_unused=True)
            for k, jt in zip(live, pushed):
                results[k] = jt
    jvps = tuple((Tensor._make(o.xp.zeros(o.shape, dtype=o.dtype), False, None) if r is None else r.detach())
                 for r, o in zip(results, outs))
    return _detach_all(out), (jvps[0] if single else jvps)


def hvp(func, inputs, v, create_graph=False):
    """(func(inputs), H @ v): the Hessian of a scalar func times v, as torch.autograd.functional.hvp.

    Reverse over reverse: g = grad(func, create_graph=True), then the gradient of <g, v>.

    Args:
        func: a function of Tensors returning a one-element Tensor.
        inputs: a Tensor or a tuple of Tensors.
        v: the same structure and shapes as inputs.
        create_graph: keep the results differentiable (a third derivative, and so on).
    Returns:
        (output, hvp), hvp with the structure of inputs.
    """
    primals, single = _as_tuple(inputs, "hvp", "inputs")
    vs, _ = _as_tuple(v, "hvp", "v")
    _check_pairs("hvp", primals, vs, "v's")
    leaves = _fresh_leaves(primals)
    out = func(*leaves)
    if not isinstance(out, Tensor) or out.size != 1:
        raise ValueError(f"hvp: func must return a one-element Tensor, got "
                         f"{out.shape if isinstance(out, Tensor) else type(out).__name__}")
    products = [None] * len(leaves)
    if out.requires_grad:
        grads = grad(out, list(leaves), create_graph=True, allow_unused=True)
        terms = [(g * w).sum() for g, w in zip(grads, vs) if g is not None and g.requires_grad]
        if terms:
            total = terms[0]
            for term in terms[1:]:
                total = total + term
            products = list(grad(total, list(leaves), create_graph=create_graph, allow_unused=True))
    products = _zeros_for_none(products, leaves)
    if not create_graph:
        products = tuple(p.detach() for p in products)
    out = out if create_graph else out.detach()
    return out, (products[0] if single else products)
