# ---
# jupyter:
#   jupytext:
#     formats: notebooks//ipynb,src//py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # How tinygrad_tx differentiates: a lesson on reverse-mode autodiff, with the engine's source
#
# This lesson walks through the parts of the engine that make reverse-mode autodiff work, then
# checks gradients the way the tests do, and sets reverse mode beside forward mode. Every number on
# the page was computed by the cells when the page was built; the page is generated from
# [src/autodiff.py](src/autodiff.py), which is also the notebook
# [notebooks/autodiff.ipynb](notebooks/autodiff.ipynb) (it runs in seconds). After reading, try
# [the exercises](../examples/exercises/): write these pieces yourself, with checks that tell you
# whether they are right.
#
# Open the files next to the lesson and read them in the order they depend on each other; no file
# imports one that comes after it ([tests/test_layering.py](../tests/test_layering.py) checks this):
# [backend.py](../tinygrad_tx/backend.py) (NumPy or CuPy), [tensor.py](../tinygrad_tx/tensor.py)
# (the `Tensor`), [autograd.py](../tinygrad_tx/autograd.py) (the graph node and the backward walk),
# then [primitives.py](../tinygrad_tx/primitives.py) (every primitive with its derivative). The
# `Tensor`'s methods call the backward walk and the primitives, which are both built on `Tensor`, so
# tensor.py does not import them: autograd.py and primitives.py hand themselves to it as they load
# (`register_autograd`, `register_primitives`, the last line of each). Their size, counted from the files:

# %%
import inspect
import pathlib

import numpy as np

import tinygrad_tx as tx
from tinygrad_tx import autograd, primitives
from tinygrad_tx.app.figures import picture

engine = pathlib.Path(tx.__file__).parent
files = ["backend.py", "tensor.py", "autograd.py", "primitives.py"]
lines = {f: len((engine / f).read_text(encoding="utf-8").splitlines()) for f in files}
print(", ".join(f"{f} {n}" for f, n in lines.items()), f"-> {sum(lines.values())} lines in all")

# %% [markdown]
# The [illustrated guide](illustrated.md) shows the same machinery at work on a trained Transformer.
# A running example, the one in the README:

# %%
x = tx.Tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
w = tx.Tensor([0.5, -1.0, 2.0], requires_grad=True)
x.name, w.name = "x", "w"
y = ((x * w).relu().sum(axis=1) ** 2).mean()   # w broadcasts over the rows of x
with tx.viz.record_gradients():                # remember gradient norms, for the drawing
    y.backward()
print(y.item(), x.grad.numpy().tolist(), w.grad.numpy().tolist())
assert y.item() == 119.125 and w.grad.numpy().tolist() == [62.5, 0.0, 103.5]     # as the README says

# %% [markdown]
# `tx.viz.draw_graph(y)` draws the forward computation, and `draw_graph(y, backward=True)` the
# gradient flow, with the sum that undoes broadcasting as its own dashed step (section 3). In a
# notebook, a drawing at the end of a cell shows inline; `picture` here also names the file the
# page uses (the README shows these two).

# %%
display(picture(tx.viz.draw_graph(y), "img/tiny_expression.png", "The forward graph"))  # noqa: F821 (Jupyter)
picture(tx.viz.draw_graph(y, backward=True), "img/tiny_expression_backward.png", "The backward graph")

# %% [markdown]
# ## 1. A graph node is a Function that remembers what its backward needs
#
# `x * w` calls [`Tensor.__mul__`](../tinygrad_tx/tensor.py), which calls `Mul.apply(x, w)`. Every
# op in the engine goes through [`Function.apply`](../tinygrad_tx/autograd.py), which does four
# things:
#
# 1. It unwraps the tensors into backend arrays, and refuses tensors that sit on different devices.
# 2. It decides whether to record: only if some input requires a gradient and no
#    [`no_grad`](../tinygrad_tx/autograd.py) block is active.
# 3. It runs the primitive's `forward(ctx, *arrays)`. The `ctx` is a fresh instance of the op's
#    class, and it *is* the graph node.
# 4. When recording, it fills in the node's record: `parents` (for each argument, the node that
#    produced it, or the leaf tensor itself), `needs_input_grad`, `out_shape`, `out_dtype`, and
#    `scope` (the module that was running, which the drawings use). The output tensor points at the
#    node through `_ctx`.
#
# A node keeps a pointer to its parents' *nodes*, never to the intermediate tensors. Once you drop
# an intermediate tensor, it is freed, and the graph still knows how to differentiate through it.

# %%
z = x * w
node = z._ctx
print(type(node).__name__, "| parents:", [type(p).__name__ for p in node.parents],
      "| out_shape:", node.out_shape, "| saved:", [a.shape for a in node.saved_tensors])

# %% [markdown]
# Inside `forward`, a primitive keeps only what its derivative needs, through
# [`Function.save_for_backward`](../tinygrad_tx/autograd.py). This call does nothing when no
# gradient will be needed, so inference keeps nothing. Compare what each op in
# [primitives.py](../tinygrad_tx/primitives.py) keeps:
#
# | primitive | derivative | what forward keeps |
# |---|---|---|
# | [`Add`](../tinygrad_tx/primitives.py) | dA = G, dB = G | only the two input *shapes* (for unbroadcasting, section 3) |
# | [`Mul`](../tinygrad_tx/primitives.py) | dA = G * B, dB = G * A | both inputs |
# | [`Exp`](../tinygrad_tx/primitives.py) | dX = G * exp(X) = G * Y | its **output** Y: recomputing exp would cost more |
# | [`Softmax`](../tinygrad_tx/primitives.py) | dX = Y * (G - sum(G * Y)) | its output Y |
# | [`MaskedFill`](../tinygrad_tx/primitives.py) | dX = G where the mask is False, else 0 | the mask |
# | [`Sum`](../tinygrad_tx/primitives.py) | dX = G copied back along the summed axes | the input shape and axes |
#
# Each class holds `forward` and `backward` side by side, with the derivative written as a comment
# above them, so a reader checks the maths where the code is. `Exp`, printed from the source:

# %%
print(inspect.getsource(primitives.Exp))

# %% [markdown]
# Your own op is written the same way (`class Cube(tx.Function)` in the README), and
# [`gradcheck`](../tinygrad_tx/gradcheck.py) compares its backward with finite differences
# (section 5).
#
# ## 2. The walk: a topological order, run backwards
#
# [`backward`](../tinygrad_tx/autograd.py) in autograd.py starts from the root (the loss) with the
# gradient dL/dL = 1, and must visit every node *after* every op that used its output. Only then has
# the node received its complete gradient, the sum over all of its uses, and can pass it on.
#
# Take `y = 3x` and `z = y·y + y`. The intermediate y is used three times (twice by the product,
# once by the sum), so dz/dy = 2y + 1 and dz/dx = 3(2y + 1) = 3(6x + 1). (A leaf like x would not
# show the problem: a leaf's `.grad` just accumulates every contribution, in any order. An
# intermediate node passes its gradient on *once*.) Here is the walk written out in a dozen lines, run
# once in the engine's order and once in a deliberately wrong one, which visits y before the product
# that also uses it:

# %%
def walk(root, order):
    """Backpropagate through `order` (a list of nodes) as autograd.backward does; return {leaf: grad}."""
    grads, leaf_grads = {root._ctx: np.ones(root.shape)}, {}
    for node in order:
        g = grads.pop(node, None)                   # the gradient received so far, now passed on
        if g is None:
            continue
        input_grads = node.backward(node, g)
        input_grads = input_grads if isinstance(input_grads, tuple) else (input_grads,)
        for parent, gi in zip(node.parents, input_grads):
            if isinstance(parent, tx.Function):
                grads[parent] = grads.get(parent, 0) + gi
            elif isinstance(parent, tx.Tensor) and parent.requires_grad:
                leaf_grads[parent.name] = leaf_grads.get(parent.name, 0) + gi
    return leaf_grads


x = tx.Tensor([2.0], dtype=tx.float64, requires_grad=True)
x.name = "x"
y = x * 3.0
z = y * y + y
right = list(reversed(autograd.topological_order(z._ctx)))
product = z._ctx.parents[0]                         # the node of y * y
wrong = [z._ctx, y._ctx, product]                   # y's node before the product that uses y
label = {z._ctx: "z = (y*y) + y", product: "y*y", y._ctx: "y = x*3"}
print("engine order:", [label[n] for n in right], "-> dz/dx =", walk(z, right)["x"])
print("wrong order: ", [label[n] for n in wrong], "-> dz/dx =", walk(z, wrong)["x"])
print("by hand: 3 (6x + 1) =", 3 * (6 * 2.0 + 1))
assert walk(z, right)["x"][0] == 39.0 and walk(z, wrong)["x"][0] == 3.0

# %% [markdown]
# In the wrong order, y's node runs when only the sum's contribution (1) has arrived: it passes
# 3 · 1 = 3 to x, and the product's contribution 2y = 12, arriving later, is never passed on. The
# right answer is 39.
#
# [`topological_order`](../tinygrad_tx/autograd.py) lists the nodes so that each comes after its
# parents. It is a depth-first search with an explicit stack of `(node, expanded)` pairs instead of
# recursion: a node is pushed once to expand its parents, then again to be emitted after them. The
# walk never hits Python's recursion limit, and a chain of 10,000 ops works
# (`test_chain_10000_deep_is_iterative` in [test_engine.py](../tests/test_engine.py)).
#
# `backward` then walks that list in reverse. It keeps a dictionary `grads` from node to the
# gradient it has received so far:
#
# - `g = grads.pop(node)` takes the node's complete gradient;
# - `node.backward(node, g)` applies the local rule and returns one gradient per forward argument;
# - each gradient is checked against its input's shape, and the error names the op if they differ;
# - for a parent node, the gradient is *added* to `grads[parent]` (`prev + gi`), never overwritten:
#   that sum is where the contributions of a diamond meet (`test_diamond_accumulates`);
# - for a leaf, [`_accumulate_leaf`](../tinygrad_tx/autograd.py) adds it into `leaf.grad`, so
#   gradients also add up across several `backward()` calls until you zero them.
#
# [`tx.viz.explain(z)`](../tinygrad_tx/viz/explain.py) runs `z.backward()` and prints this walk step
# by step: the op, the incoming gradient's shape and norm, the local rule, and where each result
# goes. Call it *instead of* `z.backward()`: a backward pass frees the graph it walked (section 4),
# so there is nothing left to narrate after it. For our z, y's node says that its gradient is the sum
# of three contributions:

# %%
x = tx.Tensor([2.0], dtype=tx.float64, requires_grad=True)
x.name = "x"
y = x * 3.0
z = y * y + y
narration = tx.viz.explain(z)
assert "the sum of 3 contributions" in narration and x.grad.item() == 39.0

# %% [markdown]
# ## 3. Undoing broadcasting
#
# In `x * w`, `x` has shape (2, 3) and `w` has shape (3,). NumPy broadcasting copies `w` along a new
# first axis, so that each row of `x` meets its own copy of `w`. The chain rule says that a value
# used in several places gets the *sum* of the gradients of its copies. So `Mul.backward` computes
# `G * x`, of shape (2, 3), and must sum it over the copied axis to get back to shape (3,).
#
# A single helper, [`unbroadcast`](../tinygrad_tx/primitives.py), does this for every op that
# broadcasts (`Add Sub Mul Div Pow Where MaskedFill`, and `MatMul` over its batch axes):

# %%
print(inspect.getsource(primitives.unbroadcast))

# %% [markdown]
# It sums over the axes that broadcasting added in front, and over the axes where the input had
# size 1 but the output did not. The engine then checks that every gradient has its input's shape
# (section 2), so a forgotten unbroadcast fails loudly. It never silently corrupts a gradient. In
# backward drawings (`tx.viz.draw_graph(loss, backward=True)`), each such sum appears as a dashed
# "undo broadcasting" box. [`broadcast_axes`](../tinygrad_tx/viz/record.py) recomputes the same axes
# for the picture.
#
# `MatMul` has one special case worth reading: `x @ W` with `x` of shape (B, T, d) and a 2-D weight.
# The weight's gradient folds the batch axes into rows and runs one matrix product instead of summing
# B of them ([`MatMul.backward`](../tinygrad_tx/primitives.py)).
#
# ## 4. Freeing the graph
#
# Memory is the other half of autodiff. A training step keeps every saved activation of the forward
# pass until backward has used it. The engine lets go of everything as early as it can:
#
# - **During the walk**, `grads.pop(node)` drops each gradient as soon as it has been used. After a
#   node's backward has run, its saved arrays are released and the node is marked. A second
#   `backward()` through the same graph then raises an error that names `retain_graph=True`, instead
#   of computing with missing data (`test_second_backward_raises_unless_retained`,
#   `test_saved_arrays_released_after_backward`).
# - **Intermediate tensors** are not kept by the graph. Nodes point at nodes, and the only link back
#   to an output tensor is `out_ref`, a weak reference the drawings use
#   (`test_intermediate_freed_when_dropped` checks this with `gc` and `weakref`). An intermediate
#   keeps its own `.grad` only if you ask with [`Tensor.retain_grad`](../tinygrad_tx/tensor.py).
# - **The whole graph** is garbage as soon as the loss tensor is dropped: nothing global holds a node
#   (`test_graph_freed_with_loss`). The gradient norms that
#   [`record_gradients`](../tinygrad_tx/viz/record.py) collects for drawings live in a
#   `WeakKeyDictionary`, so they vanish with the graph too.
# - **Inference** under [`no_grad`](../tinygrad_tx/autograd.py) records no node and saves nothing
#   (`test_no_grad_records_and_saves_nothing`). Decoding in [models/decoding.py](../models/decoding.py)
#   runs this way.

# %%
try:
    z.backward()                                    # z's graph was walked (and freed) by explain above
except RuntimeError as e:
    print("RuntimeError:", e)

# %% [markdown]
# ## 5. Checking gradients
#
# A backward rule is easy to get subtly wrong, and a wrong gradient still trains, just worse. The
# check is the definition of the derivative. The *central difference*
#
#     f'(x) ≈ (f(x + h) - f(x - h)) / 2h
#
# has error h²/6 · f'''(x) + O(h⁴): the even terms of the two Taylor series cancel, so making h ten
# times smaller makes the error a hundred times smaller (the one-sided `(f(x + h) - f(x)) / h` only
# gains a factor ten). That holds until rounding takes over: f(x ± h) are each known only to about
# ε·|f| (ε is the machine epsilon), so the quotient carries an error of about ε|f|/h, which *grows* as
# h shrinks. The best h balances the two, near ε^(1/3): about 5e-3 in float32 (ε ≈ 1.2e-7), where
# the error is still about 1e-5, and about 6e-6 in float64 (ε ≈ 2.2e-16), where it is 1e-11 or less.
# So float32 cannot tell a right gradient from one that is off by 1e-4, and gradient checks run in
# float64. Measured on f = tanh at x = 0.5:

# %%
def central(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


exact = 1 - np.tanh(0.5) ** 2
print("      h   | error, float64 | error, float32")
errors64 = {}
for h in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8):
    errors64[h] = abs(central(np.tanh, np.float64(0.5), np.float64(h)) - exact)
    e32 = abs(float(central(np.tanh, np.float32(0.5), np.float32(h))) - exact)
    print(f"  {h:7.0e} | {errors64[h]:14.2e} | {e32:14.2e}")
assert 50 < errors64[1e-2] / errors64[1e-3] < 200, "O(h^2): ten times smaller h, a hundred times smaller error"
assert errors64[1e-8] > errors64[1e-4], "too small an h: rounding wins"

# %% [markdown]
# A function of n inputs needs 2n evaluations for its full gradient, one pair per input. A
# function with m outputs would need that m times over, once per row of the Jacobian, and one
# backward pass per output to compare with. [`tx.gradcheck`](../tinygrad_tx/gradcheck.py) avoids the
# second factor with a *random projection*: it draws a fixed random v of the output's shape and
# checks the scalar `sum(f(x) * v)`, whose gradient is `v^T J`, a random mix of all the rows of the
# Jacobian. One backward pass gives it; a wrong entry anywhere in J shows up in it with probability
# one. Checking a *direction* on the input side too, `(f(x + h u) - f(x - h u)) / 2h` against
# `∇f · u` for a random u, brings the cost down to one pair of evaluations per direction: the trick
# HIPS autograd's `check_grads` uses, and the cheapest check that still catches almost every bug.

# %%
def f(a, b):
    return (a @ b).tanh() * a.sum()                 # (3, 4) @ (4, 2) -> (3, 2)


rng = np.random.default_rng(0)
a = tx.Tensor(rng.standard_normal((3, 4)), requires_grad=True)
b = tx.Tensor(rng.standard_normal((4, 2)), requires_grad=True)
print("tx.gradcheck:", tx.gradcheck(f, [a, b]))

# One random direction on each side: v^T J u, from one backward and two forward passes.
v, u_a, u_b = rng.standard_normal((3, 2)), rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
a64, b64 = tx.Tensor(a.numpy(), requires_grad=True), tx.Tensor(b.numpy(), requires_grad=True)
(f(a64, b64) * tx.Tensor(v)).sum().backward()
analytic = (a64.grad.numpy() * u_a).sum() + (b64.grad.numpy() * u_b).sum()
h = 1e-6
plus = (f(tx.Tensor(a.numpy() + h * u_a), tx.Tensor(b.numpy() + h * u_b)).numpy() * v).sum()
minus = (f(tx.Tensor(a.numpy() - h * u_a), tx.Tensor(b.numpy() - h * u_b)).numpy() * v).sum()
print(f"v^T J u: backward {analytic:.10f}, central difference {(plus - minus) / (2 * h):.10f}")
assert abs(analytic - (plus - minus) / (2 * h)) < 1e-7

# %% [markdown]
# ## 6. Forward mode and reverse mode
#
# The chain rule multiplies Jacobians: for `f = f3 ∘ f2 ∘ f1`, `J = J3 J2 J1`. The product can be
# taken in two orders.
#
# - **Reverse mode** (what `backward` does) starts from the output: a row vector `v^T` goes through
#   `v^T J3`, then `(v^T J3) J2`, then `... J1`. Each step is a *vector-Jacobian product* (VJP), the
#   `backward` of one primitive. One pass gives `v^T J`: one row of J per pass, so the whole gradient
#   of a scalar loss, however many parameters, costs one pass. The price: the forward values must be
#   kept until the backward pass reaches them (section 4).
# - **Forward mode** starts from the input: a tangent u goes through `J1 u`, then `J2 (J1 u)`, then
#   `J3 (...)`. Each step is a *Jacobian-vector product* (JVP), computed alongside the forward pass,
#   with no graph kept. One pass gives `J u`: one column of J per pass.
#
# For f: Rⁿ → Rᵐ the whole Jacobian costs m reverse passes or n forward passes. A loss (m = 1) over
# a million weights is why deep learning runs in reverse mode; a function of few inputs and many
# outputs (a trajectory as a function of one parameter) is cheaper forward.
#
# Forward mode is the easier one to write: carry each value together with its tangent (a *dual
# number*) and apply each primitive's derivative as you go: one forward pass of twice the work, and
# nothing kept. The engine's [`tx.jvp`](../tinygrad_tx/transforms.py) gets the same products another
# way, from two reverse passes (section 7), so that no primitive needs a second, tangent rule. Here
# forward mode is written out the direct way, for the three operations of an example, beside the
# engine's reverse mode:

# %%
class Dual:
    """A value and its tangent (the derivative along one input direction), pushed forward together."""

    def __init__(self, value, tangent):
        self.value, self.tangent = np.asarray(value, dtype=float), np.asarray(tangent, dtype=float)

    def __matmul__(self, W):                        # W a constant matrix: d(W x) = W dx
        return Dual(W @ self.value, W @ self.tangent)

    def tanh(self):                                 # d tanh(x) = (1 - tanh(x)^2) dx
        t = np.tanh(self.value)
        return Dual(t, (1 - t ** 2) * self.tangent)

    def __mul__(self, other):                       # d(x y) = dx y + x dy
        return Dual(self.value * other.value, self.tangent * other.value + self.value * other.tangent)


n, m = 4, 3
W = rng.standard_normal((m, n))
x0 = rng.standard_normal(n)


def g_forward(xd):                                  # g(x) = tanh(W x) * (W x), R^4 -> R^3
    wx = xd.__matmul__(W)
    return wx.tanh() * wx


# Forward mode: one pass per input direction e_j gives column j of the Jacobian.
J_forward = np.stack([g_forward(Dual(x0, np.eye(n)[j])).tangent for j in range(n)], axis=1)   # (m, n)
# Reverse mode: one backward per output direction e_i gives row i.
rows = []
for i in range(m):
    xt = tx.Tensor(x0, requires_grad=True)
    wx = tx.Tensor(W) @ xt
    (wx.tanh() * wx * tx.Tensor(np.eye(m)[i])).sum().backward()
    rows.append(xt.grad.numpy())
J_reverse = np.stack(rows)                          # (m, n)
print(f"Jacobian {J_forward.shape}: {n} forward passes (columns) or {m} backward passes (rows); "
      f"max difference {np.abs(J_forward - J_reverse).max():.1e}")
assert np.allclose(J_forward, J_reverse, atol=1e-12)

# %% [markdown]
# ## 7. Higher-order derivatives
#
# A gradient of a gradient (a Hessian-vector product, the gradient penalty of a WGAN, MAML's inner
# step) needs the backward pass itself to be differentiable. In an ordinary `backward()` each
# primitive's backward computes on raw backend arrays (`g * y` on NumPy or CuPy arrays, section 1):
# fast, but the gradient that lands in `x.grad` has no graph behind it. With `create_graph=True`
# the same backward code receives Tensors instead ([`Function`](../tinygrad_tx/autograd.py) explains
# the two modes), so its arithmetic is recorded like any forward pass, and the gradient can be
# differentiated again: DeZero's trick, and PyTorch's `create_graph`.
# [`tx.grad`](../tinygrad_tx/autograd.py) returns gradients instead of adding them into `.grad`, as
# `torch.autograd.grad` does:

# %%
x = tx.Tensor([0.5], dtype=tx.float64, requires_grad=True)
(d1,) = tx.grad(x.tanh().sum(), x, create_graph=True)      # 1 - tanh(x)^2, itself a graph
(d2,) = tx.grad(d1.sum(), x)                               # its derivative: -2 tanh(x) (1 - tanh(x)^2)
t = np.tanh(0.5)
print(f"first derivative {d1.item():.12f} (exact {1 - t ** 2:.12f}), has a graph: {d1.requires_grad}")
print(f"second derivative {d2.item():.12f} (exact {-2 * t * (1 - t ** 2):.12f})")
assert abs(d2.item() - (-2 * t * (1 - t ** 2))) < 1e-12

# %% [markdown]
# The same check as section 5, one level up: a central difference of the first derivative agrees
# with the second derivative, which is what [`tx.gradgradcheck`](../tinygrad_tx/gradcheck.py) does
# for every input along random directions.
#
# **Hessian-vector products.** For f: Rⁿ → R the Hessian H has n² entries, but `H v` costs only two
# backward passes: differentiate `∇f(x) · v` once more. The same tool gives forward mode without
# dual numbers: the VJP `v^T J` is linear in v, so differentiating `(v^T J) · u` with respect to v
# gives `J u`, a JVP from two reverse passes (the *double-VJP trick*). Both, checked against finite
# differences and against the dual numbers of section 6:

# %%
def f_scalar(x):
    wx = tx.Tensor(W) @ x
    return (wx.tanh() * wx).sum()                            # R^4 -> R


xv = tx.Tensor(x0, requires_grad=True)
vec = rng.standard_normal(n)
(gx,) = tx.grad(f_scalar(xv), xv, create_graph=True)        # the gradient, as a graph
(hv,) = tx.grad((gx * tx.Tensor(vec)).sum(), xv)            # H v in one more backward
h = 1e-5


def gradient(x_np):
    xt = tx.Tensor(x_np, requires_grad=True)
    return tx.grad(f_scalar(xt), xt)[0].numpy()


hv_numeric = (gradient(x0 + h * vec) - gradient(x0 - h * vec)) / (2 * h)
print(f"H v: two backward passes vs central differences of the gradient: max difference "
      f"{np.abs(hv.numpy() - hv_numeric).max():.1e}")
assert np.allclose(hv.numpy(), hv_numeric, atol=1e-8)

# Forward mode from two reverse passes: J u = d/dv [(v^T J) . u], for g of section 6.
u = rng.standard_normal(n)
xu = tx.Tensor(x0, requires_grad=True)
wx = tx.Tensor(W) @ xu
g_out = wx.tanh() * wx                                       # (m,)
v_dummy = tx.Tensor(np.zeros(m), requires_grad=True)         # any value: v^T J is linear in v
(vjp,) = tx.grad(g_out, xu, grad_outputs=v_dummy, create_graph=True)       # v^T J, a graph in v
(jvp,) = tx.grad((vjp * tx.Tensor(u)).sum(), v_dummy)                    # J u
print(f"J u by the double-VJP trick vs the dual numbers of section 6: max difference "
      f"{np.abs(jvp.numpy() - J_forward @ u).max():.1e}")
assert np.allclose(jvp.numpy(), J_forward @ u, atol=1e-12)

# %% [markdown]
# The engine packages both as function transforms with torch.func's signatures,
# [`tx.jvp`, `tx.vjp` and `tx.hvp`](../tinygrad_tx/transforms.py) (`tx.jvp` is the double-VJP trick
# above); they never touch the caller's graph or `.grad`:

# %%
def g_tensor(xt):
    wx = tx.Tensor(W) @ xt
    return wx.tanh() * wx


_, ju = tx.jvp(g_tensor, (tx.Tensor(x0),), (tx.Tensor(u),))
_, hv2 = tx.hvp(f_scalar, tx.Tensor(x0), tx.Tensor(vec))
_, vjp_fn = tx.vjp(g_tensor, tx.Tensor(x0))
(vj,) = vjp_fn(tx.Tensor(np.eye(m)[0]))                     # row 0 of the Jacobian
print(f"tx.jvp vs dual numbers {np.abs(ju.numpy() - J_forward @ u).max():.1e}; tx.hvp vs above "
      f"{np.abs(hv2.numpy() - hv.numpy()).max():.1e}; tx.vjp row 0 vs reverse {np.abs(vj.numpy() - J_reverse[0]).max():.1e}")
assert np.allclose(ju.numpy(), J_forward @ u, atol=1e-12) and np.allclose(hv2.numpy(), hv.numpy(), atol=1e-12)
assert np.allclose(vj.numpy(), J_reverse[0], atol=1e-12)

# %% [markdown]
# ## Where to go next
#
# - [primitives.py](../tinygrad_tx/primitives.py): all the primitives. Softmax, LayerNorm and
#   CrossEntropy have closed-form backward passes that are worth deriving on paper; the
#   [illustrated guide](illustrated.md) derives the cross-entropy's (p - q) and the softmax Jacobian
#   and checks them against the engine.
# - [tests/test_engine.py](../tests/test_engine.py) and [tests/test_primitives.py](../tests/test_primitives.py):
#   each claim on this page, as a test that can fail.
# - [The exercises](../examples/exercises/): Softplus, a log-sum-exp, a broken backward to fix, the
#   topological order, one attention head from primitives, the cross-entropy gradient by hand, and a
#   gradient checker, each with a check that says whether your answer is right.
