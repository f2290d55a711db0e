"""The higher-order examples run with short settings and write their pictures; the gradient penalty
they train with matches torch's double backward."""
import importlib.util
import itertools
import pathlib
import shutil

import numpy as np
import pytest
import torch

import tinygrad_tx as tx

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is missing: apt-get install graphviz")


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_png(path):
    return pathlib.Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_newton_cg_reaches_the_minimum_of_rosenbrock(tmp_path, capsys):
    values = load("newton_cg_rosenbrock").main(["--dim", "6", "--out", str(tmp_path / "newton.png")])
    assert values[0] == pytest.approx(5.0)                      # f(0) = n - 1
    assert values[-1] < 1e-12 and len(values) < 40              # Newton's fast finish, not gradient descent
    assert all(b <= a for a, b in itertools.pairwise(values))     # the line search only descends
    assert is_png(tmp_path / "newton.png")
    assert "Hessian-vector products" in capsys.readouterr().out


@needs_dot
def test_tanh_derivative_graphs_grow_and_are_drawn(tmp_path):
    sizes = load("tanh_derivatives").main(["--order", "4", "--out", str(tmp_path), "--format", "svg"])
    assert sizes == sorted(sizes) and sizes[-1] > 3 * sizes[1]       # each derivative's graph is bigger
    for k in range(1, 5):
        svg = (tmp_path / f"tanh_d{k}.svg").read_text()
        assert "Tanh&#39;s backward" in svg or "Tanh's backward" in svg
    assert is_png(tmp_path / "tanh_derivatives.png")


def test_tanh_derivative_curves_without_graphviz(tmp_path):
    sizes = load("tanh_derivatives").main(["--order", "3", "--out", str(tmp_path), "--no-graphs"])
    assert len(sizes) == 3 and is_png(tmp_path / "tanh_derivatives.png")


def test_gradient_penalty_example_trains_and_plots(tmp_path):
    curves = load("gradient_penalty").main(["--steps", "3", "--out", str(tmp_path / "wgan.png")])
    assert len(curves["penalty"]) == 3 and np.all(np.isfinite(curves["penalty"]))
    assert is_png(tmp_path / "wgan.png")


def test_gradient_penalty_and_its_weight_gradients_match_torch():
    example = load("gradient_penalty")
    tx.manual_seed(0)
    critic = example.mlp([2, 16, 16, 1])
    for p in critic.parameters():
        p.data = p.data.astype(np.float64)
    rng = np.random.default_rng(0)
    real, fake, alpha = rng.standard_normal((8, 2)), rng.standard_normal((8, 2)), rng.random((8, 1))
    gp, _ = example.gradient_penalty(critic, tx.Tensor(real), tx.Tensor(fake), tx.Tensor(alpha, dtype="float64"))
    gp.backward()

    layers = [torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)]
    ref = torch.nn.Sequential(*layers).double()
    with torch.no_grad():
        for (_, p), q in zip(ref.named_parameters(), critic.parameters()):
            p.copy_(torch.tensor(q.numpy()))
    mixed = (torch.tensor(alpha) * torch.tensor(real) + (1 - torch.tensor(alpha)) * torch.tensor(fake))
    mixed.requires_grad_()
    (grad,) = torch.autograd.grad(ref(mixed).sum(), mixed, create_graph=True)
    ref_gp = ((((grad * grad).sum(dim=1) + 1e-12).sqrt() - 1) ** 2).mean()
    ref_gp.backward()
    np.testing.assert_allclose(gp.item(), ref_gp.item(), rtol=1e-12)
    for p, q in zip(critic.parameters(), ref.parameters()):
        # None = no path in the graph: dD/dx does not depend on the biases (ReLU's slope is 0 or 1)
        ours = np.zeros(p.shape) if p.grad is None else p.grad.numpy()
        theirs = np.zeros(p.shape) if q.grad is None else q.grad.numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    assert any(np.abs(p.grad.numpy()).max() > 1e-4 for p in critic.parameters()[:2])   # reaches the first layer
