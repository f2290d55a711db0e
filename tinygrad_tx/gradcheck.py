"""Check analytic gradients against central finite differences in float64 (HIPS autograd's check_grads)."""
from __future__ import annotations

from . import backend, random
from .autograd import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with finite differences."""


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
    single = isinstance(inputs, Tensor)
    inputs = [inputs] if single else list(inputs)
    xs = [Tensor(x.data.astype(backend.float64), requires_grad=x.requires_grad)
          if isinstance(x, Tensor) and backend.is_floating(x.dtype) else x for x in inputs]
    checked = [i for i, x in enumerate(xs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")

    out = fn(*xs)
    xp = out.xp
    v = xp.asarray(random.generator(seed).standard_normal(out.shape))

    def objective():
        with no_grad():
            y = fn(*xs)
        return float((y.data.astype(backend.float64) * v).sum())

    (out * Tensor(v)).sum().backward()
    for i in checked:
        x = xs[i]
        analytic = backend.to_numpy(x.grad.data if x.grad is not None else xp.zeros(x.shape))
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
        err = abs(analytic - numeric)
        bad = err > atol + rtol * abs(numeric)
        if bad.any():
            worst = int(err.argmax())
            raise GradcheckError(
                f"gradcheck: input {i} (shape {tuple(x.shape)}): largest error {err.max():.3g} at flat "
                f"index {worst}: analytic {analytic.reshape(-1)[worst]:.6g} vs numeric "
                f"{numeric.reshape(-1)[worst]:.6g} ({int(bad.sum())} of {bad.size} elements off)")
    return True
