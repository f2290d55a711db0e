"""The exercises' checks (examples/exercises/check.py): they pass on the solutions, report every stub as
not written, and fail on typical wrong answers, so a student can trust what they say."""
import types
from pathlib import Path

import numpy as np
import pytest

import tinygrad_tx as tx

HERE = Path(__file__).resolve().parent.parent / "examples" / "exercises"


def _load(path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"exercises_{path.stem}_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load(HERE / "check.py")
solutions = check.load_answers(str(HERE / "solutions" / "exercises.py"))
stubs = check.load_answers(str(HERE / "exercises.py"))


@pytest.mark.parametrize("name", list(check.CHECKS))
def test_the_solutions_pass(name):
    check.CHECKS[name](solutions)


@pytest.mark.parametrize("name", list(check.CHECKS))
def test_the_stubs_are_not_written_yet(name):
    with pytest.raises(NotImplementedError, match="exercise"):
        check.CHECKS[name](stubs)


def _with(**answers):
    """The solutions with some answers replaced by wrong ones."""
    module = types.ModuleType("wrong_answers")
    module.__dict__.update(vars(solutions))
    module.__dict__.update(answers)
    return module


class NaiveSoftplus(tx.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.log(1 + np.exp(x))                   # overflows at x = 1000

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / (1 + np.exp(-x))


def recursive_order(root, seen=None):
    seen = set() if seen is None else seen
    order = []
    for parent in root.parents:
        if isinstance(parent, tx.Function) and parent not in seen:
            order += recursive_order(parent, seen)
    seen.add(root)
    return order + [root]


def unscaled_head(x, w_q, w_k, w_v, mask=None):
    scores = (x @ w_q) @ (x @ w_k).transpose(0, 1)     # forgot 1/sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, -1e9)
    weights = scores.softmax(axis=-1)
    return weights @ (x @ w_v), weights


def unsmoothed_grad(logits, targets, smoothing):
    return solutions.cross_entropy_grad(logits, targets, 0.0)


def one_sided(f, x, h=1e-6):
    x = np.array(x, dtype=np.float64)
    base, grad = f(x), np.zeros_like(x)
    for j in range(x.size):
        x.reshape(-1)[j] += h
        grad.reshape(-1)[j] = (f(x) - base) / h
        x.reshape(-1)[j] -= h
    return grad


@pytest.mark.parametrize("name, wrong", [
    ("softplus", {"Softplus": NaiveSoftplus}),
    ("logsumexp", {"logsumexp": lambda x, axis=-1: x.exp().sum(axis=axis).log()}),
    ("fixed_mul", {"FixedMul": solutions.BrokenMul}),
    ("topological_order", {"topological_order": recursive_order}),
    ("attention_head", {"attention_head": unscaled_head}),
    ("cross_entropy_grad", {"cross_entropy_grad": unsmoothed_grad}),
    ("central_difference", {"central_difference_gradient": one_sided}),
])
def test_wrong_answers_fail(name, wrong):
    with np.errstate(all="ignore"), pytest.raises(AssertionError):
        check.CHECKS[name](_with(**wrong))


def test_the_command_reports_each_exercise(capsys):
    assert check.run(str(HERE / "solutions" / "exercises.py")) == 0
    assert capsys.readouterr().out.count("PASS") == len(check.CHECKS)
    assert check.run(str(HERE / "exercises.py"), ["softplus"]) == 1
    assert "TODO  1. softplus" in capsys.readouterr().out
    assert 5 <= len(check.CHECKS) <= 8
