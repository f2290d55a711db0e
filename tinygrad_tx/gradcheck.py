"""Check analytic derivatives against central finite differences in float64 (HIPS autograd's check_grads).

`gradcheck` checks first derivatives (backward); `gradgradcheck` checks second derivatives (the
backward of a `create_graph=True` backward), as torch.autograd.gradgradcheck does.
"""
from __future__ import annotations

from . import backend, random
from .autograd import grad, no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with finite differences."""


def _float64_copies(inputs, who):
    single = isinstance(inputs, Tensor)
    inputs = [inputs] if single else list(inputs)
    xs = [Tensor(x.data.astype(backend.float64), requires_grad=x.requires_grad)
          if isinstance(x, Tensor) and backend.is_floating(x.dtype) else x for x in inputs]
    checked = [i for i, x in enumerate(xs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError(f"{who}: no input requires grad")
    return xs, checked


def _compare(who, objective, xs, checked, analytic, eps, atol, rtol):
    """Finite differences of the scalar `objective()` in each checked input, against `analytic[i]`."""
    for i in checked:
        x = xs[i]
        numeric = backend.get_xp("cpu").zeros(x.shape, dtype=backend.float64)
        flat = x.data.reshape(-1)          # a view: poking it changes x
        for j in range(flat.size):
            orig = float(flat[j])
            flat[j] = orig + eps
            plus = objective()
            flat[j] = orig - eps
            minus = objective()
            flat[j] = orig
            numeric.reshape(-1)[j] = (plus - minus) / (2 * eps)
        got = analytic[i]
        err = abs(got - numeric)
        bad = err > atol + rtol * abs(numeric)
        if bad.any():
            worst = int(err.argmax())
            raise GradcheckError(
                f"{who}: input {i} (shape {tuple(x.shape)}): largest error {err.max():.3g} at flat "
                f"index {worst}: analytic {got.reshape(-1)[worst]:.6g} vs numeric "
                f"{numeric.reshape(-1)[worst]:.6g} ({int(bad.sum())} of {bad.size} elements off)")
    return True


def _grad_or_zeros(x):
    if x.grad is None:
        return backend.get_xp("cpu").zeros(x.shape, dtype=backend.float64)
    return backend.to_numpy(x.grad.data)


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Compare backward() with finite differences for every input that requires grad.

    The inputs are copied to float64 first. A non-scalar output y is reduced to sum(y * v) with a
    fixed random v, so every output element is checked along a random direction.

    Args:
        fn: a function of the tensors in `inputs` returning one Tensor.
        inputs: a Tensor or a sequence of Tensors (and other values, passed through).
    Returns:
        True when every gradient matches.
    Raises:
        GradcheckError: naming the input, its shape and the largest absolute error.
    """
    xs, checked = _float64_copies(inputs, "gradcheck")
    out = fn(*xs)
    xp = out.xp
    v = xp.asarray(random.generator(seed).standard_normal(out.shape))

    def objective():
        with no_grad():
            y = fn(*xs)
        return float((y.data.astype(backend.float64) * v).sum())

    (out * Tensor(v)).sum().backward()
    analytic = {i: _grad_or_zeros(xs[i]) for i in checked}
    return _compare("gradcheck", objective, xs, checked, analytic, eps, atol, rtol)


def gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Compare second derivatives with finite differences of first derivatives, in float64.

    With a fixed random upstream gradient v (shape of the output) and fixed random weights w_i
    (shapes of the inputs), the scalar
        S(x, v) = sum_i < d<fn(x), v>/dx_i , w_i >
    is built twice: with `grad(..., create_graph=True)`, then differentiated by backward() (the
    analytic second derivative: Hessian-vector products, and the vjp's derivative in v); and with
    plain first-order gradients, whose central differences in every element of x and of v give the
    numeric answer. Both x and v are checked, so the double-vjp (linear in v) is checked too.

    Args:
        fn: a function of the tensors in `inputs` returning one Tensor.
        inputs: a Tensor or a sequence of Tensors (and other values, passed through).
    Returns:
        True when every second derivative matches.
    Raises:
        GradcheckError: naming the input (the last one is v), its shape and the largest error.
    """
    xs, checked = _float64_copies(inputs, "gradgradcheck")
    out = fn(*xs)
    xp = out.xp
    draws = random.generator(seed)
    v = Tensor(xp.asarray(draws.standard_normal(out.shape)), requires_grad=True)
    weights = {i: xp.asarray(draws.standard_normal(xs[i].shape)) for i in checked}
    args = [*xs, v]

    def scalar(create_graph):
        y = fn(*xs)
        if not y.requires_grad:             # fn does not depend on its inputs: every derivative is 0
            return Tensor(xp.zeros(()), requires_grad=False)
        grads = grad(y, [xs[i] for i in checked], v, create_graph=create_graph, allow_unused=True)
        total = None
        for i, g in zip(checked, grads):
            if g is not None:
                term = (g * Tensor(weights[i])).sum()
                total = term if total is None else total + term
        return total if total is not None else Tensor(xp.zeros(()))

    def objective():
        return float(scalar(create_graph=False).data)

    s = scalar(create_graph=True)
    for x in args:
        if isinstance(x, Tensor):
            x.grad = None
    if s.requires_grad:
        s.backward()
    analytic = {i: _grad_or_zeros(args[i]) for i in [*checked, len(xs)]}
    return _compare("gradgradcheck", objective, args, [*checked, len(xs)], analytic, eps, atol, rtol)
