"""The n-th derivative of tanh, as graphs that grow with n (DeZero's best-known figure), and as curves.

Each `tx.grad(..., create_graph=True)` records the backward pass as new primitives, so the
derivative is a Tensor with a graph of its own, and can be differentiated again:

    y = x.tanh()
    for k in range(n):
        (y,) = tx.grad(y.sum(), x, create_graph=True)      # y is now d^(k+1) tanh / dx^(k+1)

Writes tanh_d1.svg ... tanh_dN.svg (Graphviz's `dot` draws them; ops recorded by a backward are
shaded) and tanh_derivatives.png (the curves), and prints how many ops each graph holds.

    python examples/tanh_derivatives.py --order 4 --out tanh_pictures
"""
import argparse
import os

import numpy as np

import tinygrad_tx as tx
from tinygrad_tx.viz.plots import figure, save_figure


def derivatives(x, order):
    """[d tanh/dx, d^2 tanh/dx^2, ...] up to `order`, each a Tensor that keeps its graph."""
    y, out = x.tanh(), []
    for _ in range(order):
        (y,) = tx.grad(y.sum(), x, create_graph=True)
        out.append(y)
    return out


def count_ops(t):
    return len(tx.autograd.topological_order(t.grad_fn)) if t.grad_fn is not None else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", type=int, default=4, help="highest derivative (default 4)")
    parser.add_argument("--out", default="tanh_pictures", help="folder for the pictures")
    parser.add_argument("--format", default="svg", choices=["svg", "png", "pdf"], help="graph format (default svg)")
    parser.add_argument("--no-graphs", action="store_true", help="only the curves (no Graphviz needed)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    # 1. The graphs: one point is enough, what grows is the recorded computation.
    x = tx.Tensor([1.0], dtype="float64", requires_grad=True)
    x.name = "x"
    sizes = []
    for k, d in enumerate(derivatives(x, args.order), start=1):
        sizes.append(count_ops(d))
        print(f"d^{k} tanh/dx^{k} at x = 1: {d.item():+.6f}   its graph: {sizes[-1]} ops")
        if not args.no_graphs:
            graph = tx.viz.draw_graph(d, show_values=False)
            path = graph.render(os.path.join(args.out, f"tanh_d{k}"), format=args.format, cleanup=True)
            print("    wrote", path)

    # 2. The curves, on a grid, from the same recorded derivatives.
    grid = tx.Tensor(np.linspace(-4, 4, 401), requires_grad=True)
    fig = figure(6, 3.6)
    ax = fig.add_subplot()
    ax.plot(grid.numpy(), np.tanh(grid.numpy()), label="tanh", color="black")
    for k, d in enumerate(derivatives(grid, args.order), start=1):
        ax.plot(grid.numpy(), d.numpy(), label=f"order {k}")
    ax.set_ylim(-5, 5)
    ax.set_xlabel("x")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("tanh and its derivatives, each by differentiating the last one's graph", fontsize=9)
    print("wrote", save_figure(fig, os.path.join(args.out, "tanh_derivatives.png")))
    return sizes


if __name__ == "__main__":
    main()
