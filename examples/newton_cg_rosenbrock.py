"""Newton's method on the Rosenbrock function, with exact Hessian-vector products (tx.hvp).

Newton-CG never forms the Hessian H. Each outer step solves H p = -g by conjugate gradient, which
only needs products H v, and each product is one `tx.hvp` (reverse over reverse: the gradient of
<grad f, v>). CG stops early when it meets negative curvature (v^T H v <= 0, where Rosenbrock is
not convex), and a backtracking line search keeps every step a descent step.

    python examples/newton_cg_rosenbrock.py --dim 10 --out newton.png
"""
import argparse

import numpy as np

import tinygrad_tx as tx
from tinygrad_tx.viz.plots import figure, save_figure


def rosenbrock(x):
    """sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2, minimal (0) at x = (1, ..., 1)."""
    a, b = x[:-1], x[1:]
    return (100 * (b - a * a) ** 2 + (1 - a) ** 2).sum()


def gradient(x):
    (g,) = tx.grad(rosenbrock(x), x)
    return g


def conjugate_gradient(x, g, tol, max_iter):
    """Approximately solve H p = -g with Hessian-vector products only (truncated CG).
    Returns p and the number of products used."""
    p = tx.zeros_like(g)
    r = -g                                  # residual of H p = -g at p = 0
    d = r
    rr = float((r * r).sum().item())
    for k in range(max_iter):
        _, hd = tx.hvp(rosenbrock, x, d)    # exact H d, no Hessian in memory
        curvature = float((d * hd).sum().item())
        if curvature <= 0:                  # negative curvature: keep what we have (or go downhill)
            return (-g if k == 0 else p), k + 1
        alpha = rr / curvature
        p = p + alpha * d
        r = r - alpha * hd
        rr_next = float((r * r).sum().item())
        if rr_next ** 0.5 < tol:
            break
        d = r + (rr_next / rr) * d
        rr = rr_next
    return p, k + 1


def newton_cg(x, iters, tol=1e-10):
    """Minimise Rosenbrock from x; returns the point, the value after each outer step, and the
    number of Hessian-vector products."""
    values, products = [float(rosenbrock(x).item())], 0
    for _ in range(iters):
        g = gradient(x)
        gnorm = float((g * g).sum().item()) ** 0.5
        if gnorm < tol:
            break
        p, used = conjugate_gradient(x, g, tol=min(0.01, gnorm ** 0.5) * gnorm, max_iter=4 * x.shape[0])
        products += used
        step, f0, slope = 1.0, values[-1], float((g * p).sum().item())
        while float(rosenbrock(x + step * p).item()) > f0 + 1e-4 * step * slope and step > 1e-10:
            step *= 0.5                     # backtracking (Armijo) line search
        x = (x + step * p).detach().requires_grad_()
        values.append(float(rosenbrock(x).item()))
    return x, values, products


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=10, help="number of variables (default 10)")
    parser.add_argument("--iters", type=int, default=100, help="outer Newton steps at most (default 100)")
    parser.add_argument("--out", default="newton_cg_rosenbrock.png", help="where to write the convergence plot")
    args = parser.parse_args(argv)

    start = np.zeros(args.dim)         # (from (-1.2, 1, -1.2, ...) it ends in the local minimum near (-1, 1, ..., 1))
    x = tx.Tensor(start, dtype="float64", requires_grad=True)
    x, values, products = newton_cg(x, args.iters)
    print(f"Newton-CG on {args.dim}-d Rosenbrock: f = {values[0]:.4g} -> {values[-1]:.3e} in {len(values) - 1} "
          f"steps, {products} Hessian-vector products")
    print("x =", np.round(x.numpy(), 6).tolist())

    fig = figure(5, 3.2)
    ax = fig.add_subplot()
    ax.semilogy(range(len(values)), np.maximum(values, 1e-32), marker="o", markersize=3)
    ax.set_xlabel("Newton step")
    ax.set_ylabel("f(x)  (log scale, 0 drawn at 1e-32)")
    ax.set_title(f"Newton-CG, exact Hessian-vector products ({args.dim}-d Rosenbrock)", fontsize=9)
    print("wrote", save_figure(fig, args.out))
    return values


if __name__ == "__main__":
    main()
