"""A WGAN-GP on 2-D points: the critic's loss holds the norm of its own input gradient.

The gradient penalty (Gulrajani et al., 2017) asks the critic D to have a gradient of norm 1 in
its input, at random points x^ between real and generated samples:

    gp = mean over x^ of (|| dD(x^)/dx^ || - 1)^2

`dD/dx^` is itself computed by autodiff, and the penalty must be differentiated again with respect
to D's weights: `tx.grad(..., create_graph=True)` records that first backward as a graph, so the
critic's `loss.backward()` runs through it (a double backward through every Linear and ReLU).

    python examples/gradient_penalty.py --steps 1000 --out wgan_gp.png
"""
import argparse
import itertools
import math

import numpy as np

import tinygrad_tx as tx
from tinygrad_tx import nn
from tinygrad_tx.viz.plots import figure, save_figure

LR = 1e-4                # Adam, betas (0.5, 0.9): the WGAN-GP paper's settings but for beta1


def mlp(sizes):
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def real_batch(rng, n):
    """Eight Gaussians on a circle of radius 2 (the usual toy target)."""
    angles = rng.integers(0, 8, n) * (2 * math.pi / 8)
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return (centres + 0.05 * rng.standard_normal((n, 2))).astype(np.float32)


def gradient_penalty(critic, real, fake, alpha):
    """mean (||dD/dx at x^||_2 - 1)^2, x^ = alpha real + (1 - alpha) fake; differentiable in D's weights."""
    mixed = (alpha * real + (1 - alpha) * fake).detach().requires_grad_()
    scores = critic(mixed)
    (grad,) = tx.grad(scores.sum(), mixed, create_graph=True)      # (n, 2), with its graph
    norms = ((grad * grad).sum(axis=1) + 1e-12).sqrt()
    return ((norms - 1) ** 2).mean(), norms


def train(steps, seed=0, batch=64, n_critic=5, lam=10.0):
    """WGAN-GP training; returns the curves (per generator step) and the final samples."""
    tx.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen, critic = mlp([2, 64, 64, 2]), mlp([2, 64, 64, 1])
    opt_g = tx.optim.Adam(gen.parameters(), lr=LR, betas=(0.5, 0.9))
    opt_d = tx.optim.Adam(critic.parameters(), lr=LR, betas=(0.5, 0.9))
    curves = {"wasserstein": [], "penalty": [], "grad_norm": []}
    for _ in range(steps):
        for _ in range(n_critic):
            real = tx.Tensor(real_batch(rng, batch))
            with tx.no_grad():
                fake = gen(tx.Tensor(rng.standard_normal((batch, 2)).astype(np.float32)))
            alpha = tx.Tensor(rng.random((batch, 1)).astype(np.float32))
            gp, norms = gradient_penalty(critic, real, fake, alpha)
            distance = critic(real).mean() - critic(fake).mean()
            loss = -distance + lam * gp                       # the critic maximises the distance
            opt_d.zero_grad()
            loss.backward()                                   # through the recorded gradient too
            opt_d.step()
        opt_g.zero_grad()
        fake = gen(tx.Tensor(rng.standard_normal((batch, 2)).astype(np.float32)))
        (-critic(fake).mean()).backward()
        opt_g.step()
        curves["wasserstein"].append(distance.item())
        curves["penalty"].append(gp.item())
        curves["grad_norm"].append(float(norms.numpy().mean()))
    with tx.no_grad():
        samples = gen(tx.Tensor(rng.standard_normal((512, 2)).astype(np.float32))).numpy()
    return curves, samples


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="generator steps (default 1000, about 20 s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="wgan_gp.png", help="where to write the loss curves and samples")
    args = parser.parse_args(argv)
    curves, samples = train(args.steps, args.seed)
    print(f"after {args.steps} generator steps: Wasserstein estimate {curves['wasserstein'][-1]:.4f}, "
          f"penalty {curves['penalty'][-1]:.4f}, mean ||dD/dx|| {curves['grad_norm'][-1]:.4f}")

    fig = figure(9, 3.2)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.plot(curves["wasserstein"], label="critic's Wasserstein estimate")
    ax1.plot(curves["penalty"], label="gradient penalty")
    ax1.set_xlabel("generator step")
    ax1.legend(fontsize=7)
    ax2.plot(curves["grad_norm"])
    ax2.axhline(1.0, color="grey", linestyle="--")
    ax2.set_xlabel("generator step")
    ax2.set_title("mean ||dD/dx|| at x^ (target 1)", fontsize=9)
    real = real_batch(np.random.default_rng(1), 512)
    ax3.scatter(real[:, 0], real[:, 1], s=2, label="real", alpha=0.5)
    ax3.scatter(samples[:, 0], samples[:, 1], s=2, label="generated", alpha=0.5)
    ax3.set_xlim(-3, 3)
    ax3.set_ylim(-3, 3)
    ax3.set_aspect("equal")
    ax3.legend(fontsize=7, markerscale=4)
    print("wrote", save_figure(fig, args.out))
    return curves


if __name__ == "__main__":
    main()
