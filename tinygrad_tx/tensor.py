"""The Tensor: a backend array, an optional gradient, and the graph node that produced it.

Every differentiable method below is one line that calls a primitive from primitives.py
(`fn.Mul.apply(self, other)`), or a short composition of primitives. Nothing here computes a
derivative: that lives beside each primitive's forward.
"""
from __future__ import annotations

import math
import numbers
import weakref

from . import backend

# ---------------------------------------------------------------------------- the layers above
# Tensor's methods call the backward walk (`autograd.backward`) and the primitives (`fn.Mul.apply`).
# Both of those modules are built on Tensor, so importing them here would make a cycle; the reading
# order is tensor -> autograd -> primitives, and imports only run that way. Instead each of them
# hands itself to this module as it loads (see the last line of autograd.py and of primitives.py).
# `import tinygrad_tx` loads both, so every Tensor method works once the package is imported.
autograd = None     # the module tinygrad_tx.autograd, set by register_autograd
fn = None           # the module tinygrad_tx.primitives, set by register_primitives


def register_autograd(module) -> None:
    """Called once, by autograd.py as it loads: Tensor.backward runs `module.backward`."""
    global autograd
    autograd = module


def register_primitives(module) -> None:
    """Called once, by primitives.py as it loads: Tensor's methods call `module.Mul.apply` and the rest."""
    global fn
    fn = module


def _infer_dtype(data):
    """Python floats (and lists holding any float) -> float32; ints -> int64; bools -> bool."""
    arr = backend.host_array(data)
    if arr.dtype == backend.float64:
        return arr.astype(backend.float32)
    if arr.dtype.kind in "iu":
        return arr.astype(backend.int64)
    if arr.dtype.kind not in "fb":
        raise TypeError(f"Tensor: cannot make a tensor from data of dtype {arr.dtype}")
    return arr


class Tensor:
    """An n-dimensional array that can record the operations applied to it.

    Args:
        data: a Python scalar, a (nested) list, or a NumPy/CuPy array.
        requires_grad: record operations on this tensor so that backward() reaches it.
        dtype: cast the data to this dtype.
        device: 'cpu' or 'cuda'; default: a Tensor's or CuPy array's own device, else $TX_DEVICE,
            else 'cpu'.
    """
    __slots__ = ("data", "grad", "requires_grad", "_ctx", "name", "__weakref__")
    __array_ufunc__ = None          # numpy defers `ndarray * tensor` to Tensor.__rmul__

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        if isinstance(data, Tensor):                # a tensor keeps its device unless one is asked for (as torch)
            device = data.device if device is None else device
            data = data.data
        device = backend.device_for(data, device)
        if backend.is_array(data):
            arr = backend.to_device(data, device)
        else:
            # With an explicit dtype, Python floats go straight to it: float64 data must not pass through float32.
            host = _infer_dtype(data) if dtype is None else backend.host_array(data)
            arr = backend.to_device(host, device)
        if dtype is not None and arr.dtype != backend.dtype(dtype):
            arr = arr.astype(backend.dtype(dtype))
        if requires_grad and not backend.is_floating(arr.dtype):
            raise TypeError(f"Tensor: only floating-point tensors can require grad, not {arr.dtype}")
        self.data = arr
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = None
        self.name = None

    @classmethod
    def _make(cls, data, requires_grad, ctx):
        """Fast constructor for op outputs (data is already a backend array)."""
        t = object.__new__(Tensor)
        t.data, t.grad, t.requires_grad, t._ctx, t.name = data, None, requires_grad, ctx, None
        return t

    # ------------------------------------------------------------------ attributes
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def device(self):
        return backend.device_of(self.data)

    @property
    def xp(self):
        return backend.array_module(self.data)

    @property
    def is_leaf(self):
        return self._ctx is None

    @property
    def grad_fn(self):
        """The graph node that produced this tensor (None for leaves)."""
        return self._ctx

    def numpy(self):
        """A host NumPy copy (never a view into the engine's buffers)."""
        return backend.to_numpy(self.data).copy()

    def __array__(self, dtype=None, copy=None):
        a = backend.to_numpy(self.data)
        return a.astype(dtype) if dtype is not None else a

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item: only a one-element tensor converts to a Python number, not shape {self.shape}")
        return backend.to_numpy(self.data).item()

    def tolist(self):
        return backend.to_numpy(self.data).tolist()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor._make(self.data, False, None)

    def requires_grad_(self, flag=True):
        if flag and not backend.is_floating(self.dtype):
            raise TypeError(f"requires_grad_: only floating-point tensors can require grad, not {self.dtype}")
        if self._ctx is not None and not flag:
            raise RuntimeError("requires_grad_: cannot turn off requires_grad on a non-leaf; use .detach()")
        self.requires_grad = flag
        return self

    def retain_grad(self):
        """Keep .grad on this intermediate tensor after backward (leaves always keep theirs)."""
        if self._ctx is not None:
            self._ctx.retained = weakref.ref(self)
        return self

    def to(self, device=None, dtype=None):
        """Move to a device and/or cast to a dtype; differentiable, like torch's."""
        out = self
        if dtype is not None and backend.dtype(dtype) != self.dtype:
            out = fn.Cast.apply(out, backend.dtype(dtype))
        if device is not None and backend.check_device(device) != self.device:
            out = fn.ToDevice.apply(out, backend.check_device(device))
        return out

    def float(self):
        return self.to(dtype="float32")

    def double(self):
        return self.to(dtype="float64")

    def long(self):
        return self.to(dtype="int64")

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def backward(self, grad=None, retain_graph=None, create_graph=False):
        """Accumulate d(self)/d(leaf) into each leaf's .grad (`tx.viz.explain(self)` narrates it).

        create_graph=True records the backward pass, so each `.grad` is a Tensor with a graph that
        can be differentiated again; retain_graph defaults to create_graph (as in torch).
        """
        autograd.backward(self, grad, retain_graph, create_graph)

    def zero_grad(self):
        self.grad = None

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        dev = ", device='cuda'" if self.device == "cuda" else ""
        body = backend.format_array(self.data, prefix="Tensor(")
        return f"Tensor({body}, dtype={self.dtype}{dev}{extra})"

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous")
        return bool(backend.to_numpy(self.data).item())

    __hash__ = object.__hash__      # __eq__ is elementwise; tensors stay usable as dict keys

    # ------------------------------------------------------------------ operands
    def _operand(self, other):
        """Turn a Python number into a 0-d tensor of our dtype, so float32 stays float32."""
        if isinstance(other, Tensor):
            return other
        if isinstance(other, numbers.Number):
            dt = self.dtype
            if isinstance(other, float) and not backend.is_floating(dt):
                dt = backend.float32
            return Tensor._make(backend.full_scalar(self.xp, other, dt), False, None)
        return Tensor(other, device=self.device)

    def _promote(self, other):
        """Torch's promotion for mixed operands: float beats int/bool, and never goes to float64."""
        other = self._operand(other)
        a, b = self, other
        if a.dtype != b.dtype:
            fa, fb = backend.is_floating(a.dtype), backend.is_floating(b.dtype)
            if fa and not fb:
                b = b.to(dtype=a.dtype)
            elif fb and not fa:
                a = a.to(dtype=b.dtype)
        return a, b

    # ------------------------------------------------------------------ elementwise (binary)
    def __add__(self, other):
        return fn.Add.apply(*self._promote(other))

    def __radd__(self, other):
        b, a = self._promote(other)
        return fn.Add.apply(a, b)

    def __sub__(self, other):
        return fn.Sub.apply(*self._promote(other))

    def __rsub__(self, other):
        b, a = self._promote(other)
        return fn.Sub.apply(a, b)

    def __mul__(self, other):
        return fn.Mul.apply(*self._promote(other))

    def __rmul__(self, other):
        b, a = self._promote(other)
        return fn.Mul.apply(a, b)

    def __truediv__(self, other):
        a, b = self._promote(other)
        if not backend.is_floating(a.dtype):
            a, b = a.float(), b.float()
        return fn.Div.apply(a, b)

    def __rtruediv__(self, other):
        b, a = self._promote(other)
        if not backend.is_floating(a.dtype):
            a, b = a.float(), b.float()
        return fn.Div.apply(a, b)

    def __pow__(self, other):
        return fn.Pow.apply(*self._promote(other))

    def __rpow__(self, other):
        b, a = self._promote(other)
        return fn.Pow.apply(a, b)

    def __matmul__(self, other):
        other = other if isinstance(other, Tensor) else Tensor(other, device=self.device)
        a, b = self._promote(other)                             # int @ float32 is float32, as torch
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: both operands need at least 1 dimension, "
                             f"got shapes {a.shape} and {b.shape}")
        if a.ndim == 1 and b.ndim == 1:                  # dot product -> scalar
            return (a.reshape(1, -1) @ b.reshape(-1, 1)).reshape(())
        if a.ndim == 1:                                       # (k,) @ (..., k, m) -> (..., m)
            out = fn.MatMul.apply(a.reshape(1, -1), b)
            return out.reshape(*out.shape[:-2], out.shape[-1])
        if b.ndim == 1:                                      # (..., n, k) @ (k,) -> (..., n)
            return fn.MatMul.apply(a, b.reshape(-1, 1)).reshape(*a.shape[:-1])
        return fn.MatMul.apply(a, b)

    def __rmatmul__(self, other):
        return Tensor(other, device=self.device) @ self

    def __neg__(self):
        return fn.Neg.apply(self)

    def __pos__(self):
        return self

    # ------------------------------------------------------------------ comparisons (no gradient)
    def _compare(self, other, op):
        a, b = self._promote(other)
        return Tensor._make(op(a.data, b.data), False, None)

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    def __eq__(self, other):
        return self._compare(other, lambda a, b: a == b)

    def __ne__(self, other):
        return self._compare(other, lambda a, b: a != b)

    def __invert__(self):
        if self.dtype != backend.bool_:
            raise TypeError(f"~ needs a bool tensor, not {self.dtype}")
        return Tensor._make(~self.data, False, None)

    def __and__(self, other):
        return self._compare(other, lambda a, b: a & b)

    def __or__(self, other):
        return self._compare(other, lambda a, b: a | b)

    # ------------------------------------------------------------------ elementwise (unary)
    def exp(self):
        return fn.Exp.apply(self)

    def log(self):
        return fn.Log.apply(self)

    def sqrt(self):
        return fn.Sqrt.apply(self)

    def tanh(self):
        return fn.Tanh.apply(self)

    def sigmoid(self):
        return fn.Sigmoid.apply(self)

    def relu(self):
        return fn.ReLU.apply(self)

    def abs(self):
        return fn.Abs.apply(self)

    def sin(self):
        return fn.Sin.apply(self)

    def cos(self):
        return fn.Cos.apply(self)

    def erf(self):
        return fn.Erf.apply(self)

    def maximum(self, other):
        """Elementwise max of two tensors (broadcasting); ties share the gradient equally, as torch."""
        return fn.Maximum.apply(*self._promote(other))

    def minimum(self, other):
        """Elementwise min: -maximum(-a, -b) for floats (exact, and ties share the gradient as torch);
        integers and bools, which have no gradient and where -x wraps around, take xp.minimum."""
        a, b = self._promote(other)
        if not backend.is_floating(a.dtype):
            return Tensor._make(backend.as_array(self.xp.minimum(a.data, b.data)), False, None)
        return -fn.Maximum.apply(-a, -b)

    def clip(self, min=None, max=None):
        """Limit to [min, max] (either may be None). The gradient passes where min <= x <= max, as torch."""
        out = self
        if min is not None:
            out = out.masked_fill(self < min, min)
        if max is not None:
            out = out.masked_fill(self > max, max)
        return out

    clamp = clip

    # ------------------------------------------------------------------ reductions
    def sum(self, axis=None, keepdims=False):
        return fn.Sum.apply(self, _axes(axis, self.ndim), keepdims)

    def mean(self, axis=None, keepdims=False):
        """sum / n; the mean of no elements is nan, as torch's."""
        axes = _axes(axis, self.ndim)
        n = _count(self.shape, axes)
        return self.sum(axes, keepdims) * (1.0 / n if n else math.nan)

    def var(self, axis=None, keepdims=False, correction=1):
        """sum((x - mean)^2) / (n - correction): unbiased by default (correction=1), as torch.var.
        Pass correction=0 for the biased variance (layer_norm's). With n - correction <= 0 the result
        is inf (or nan where the sum is 0), as torch's."""
        axes = _axes(axis, self.ndim)
        n = _count(self.shape, axes)
        centred = self - self.mean(axes, keepdims=True)
        divisor = max(n - correction, 0)
        return (centred * centred).sum(axes, keepdims) * (1.0 / divisor if divisor else math.inf)

    def max(self, axis=None, keepdims=False):
        return fn.Max.apply(self, _axes(axis, self.ndim), keepdims)

    def min(self, axis=None, keepdims=False):
        return fn.Min.apply(self, _axes(axis, self.ndim), keepdims)

    def argmax(self, axis=None, keepdims=False):
        out = self.xp.argmax(self.data, axis=axis, keepdims=keepdims)
        return Tensor._make(backend.as_array(out).astype(backend.int64), False, None)

    def argmin(self, axis=None, keepdims=False):
        out = self.xp.argmin(self.data, axis=axis, keepdims=keepdims)
        return Tensor._make(backend.as_array(out).astype(backend.int64), False, None)

    def cumsum(self, axis=0):
        return fn.Cumsum.apply(self, axis % max(self.ndim, 1))

    def logsumexp(self, axis=None, keepdims=False):
        """log(sum(exp(x))) over the axes, computed as m + log(sum(exp(x - m))) with m = max x (a
        constant: the result does not depend on it, so no gradient flows through it)."""
        axes = _axes(axis, self.ndim)
        m = self.max(axes, keepdims=True).detach()
        out = m + (self - m).exp().sum(axes, keepdims=True).log()
        if keepdims:
            return out
        return out.reshape(*[n for i, n in enumerate(out.shape) if axes is not None and i not in axes])

    def prod(self, axis=None, keepdims=False):
        """Product over one axis (or all): multiply the two halves until one slice is left. A tree of
        Mul primitives, so zeros need no special case and every derivative comes from Mul's rule."""
        x = self.reshape(-1) if axis is None else self
        ax = 0 if axis is None else axis % max(self.ndim, 1)
        n = x.shape[ax]
        if n == 0:
            shape = tuple(1 if i == ax else s for i, s in enumerate(x.shape))
            x = Tensor._make(self.xp.ones(shape, dtype=self.dtype), False, None)
        while n > 1:
            half = n // 2
            pairs = _take(x, ax, 0, half) * _take(x, ax, half, 2 * half)
            x = pairs if n % 2 == 0 else cat([pairs, _take(x, ax, 2 * half, n)], axis=ax)
            n = x.shape[ax]
        if axis is None:
            return x.reshape(*([1] * self.ndim)) if keepdims else x.reshape(())
        return x if keepdims else x.squeeze(ax)

    # ------------------------------------------------------------------ movement
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return fn.Reshape.apply(self, tuple(int(s) for s in shape))

    view = reshape

    def flatten(self, start=0, end=-1):
        end = end % self.ndim if self.ndim else 0
        s = self.shape
        return self.reshape(*s[:start], -1, *s[end + 1:])

    def unsqueeze(self, axis):
        axis = axis % (self.ndim + 1)
        return self.reshape(*self.shape[:axis], 1, *self.shape[axis:])

    def squeeze(self, axis=None):
        if axis is None:
            return self.reshape(*[s for s in self.shape if s != 1])
        if self.ndim == 0:                  # torch allows axis 0 or -1 on a 0-d tensor: nothing to remove
            _axes(axis, 0)
            return self
        axis = axis % self.ndim
        if self.shape[axis] != 1:
            return self
        return self.reshape(*self.shape[:axis], *self.shape[axis + 1:])

    def permute(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        if sorted(a % max(self.ndim, 1) for a in axes) != list(range(self.ndim)):
            raise ValueError(f"permute: axes {axes} are not a permutation of the {self.ndim} axes "
                             f"of shape {self.shape}")
        return fn.Permute.apply(self, tuple(a % self.ndim for a in axes))

    def transpose(self, a=-2, b=-1):
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.permute(*axes)

    @property
    def T(self):
        return self.permute(*reversed(range(self.ndim)))

    def __getitem__(self, index):
        """Indexing as torch: slices, ints, None, ..., integer arrays/lists/Tensors and bool masks.

        One rule differs from NumPy, and we follow torch: an int is a basic index (it selects, as
        x[1] does), not an advanced one. So x[1, :, [0, 1]] on shape (2, 3, 4) is x[1][:, [0, 1]],
        shape (3, 2), where NumPy, which counts the 1 among the advanced indices separated by a
        slice, moves their axis to the front: (2, 3). Such an index runs as two GetItems.
        """
        index = _index_arrays(index)
        parts = index if isinstance(index, tuple) else (index,)
        ints = [i for i in parts if _is_int_index(i)]
        if ints and any(_is_advanced_index(i) for i in parts):
            select = []
            for i in parts:
                if _is_int_index(i) or i is Ellipsis:
                    select.append(i)
                elif _is_advanced_index(i) and getattr(i, "dtype", None) == backend.bool_:
                    select.extend([slice(None)] * i.ndim)       # a mask spans as many axes as it has
                elif i is not None:
                    select.append(slice(None))
            rest = tuple(i for i in parts if not _is_int_index(i))
            return fn.GetItem.apply(self, tuple(select))[rest]
        return fn.GetItem.apply(self, index)

    def split(self, split_size_or_sections, axis=0):
        """Pieces along an axis: of size `split_size_or_sections` each (the last may be smaller), or of
        the sizes in a list, as torch.split. Each piece is a GetItem of self."""
        axis = axis % max(self.ndim, 1)
        n = self.shape[axis]
        if isinstance(split_size_or_sections, int):
            if split_size_or_sections <= 0:
                raise ValueError(f"split: the piece size must be positive, got {split_size_or_sections}")
            sizes = [min(split_size_or_sections, n - start) for start in range(0, n, split_size_or_sections)]
        else:
            sizes = list(split_size_or_sections)
            if sum(sizes) != n:
                raise ValueError(f"split: sizes {sizes} add up to {sum(sizes)}, but axis {axis} of shape "
                                 f"{self.shape} has {n}")
        pieces, start = [], 0
        for size in sizes:
            pieces.append(_take(self, axis, start, start + size))
            start += size
        return tuple(pieces)

    def chunk(self, chunks, axis=0):
        """`chunks` pieces of equal size along an axis (the last may be smaller), as torch.chunk."""
        n = self.shape[axis % max(self.ndim, 1)]
        return self.split(max(-(-n // chunks), 1), axis)

    def gather(self, axis, index):
        """out[i][j] = self[index[i][j]][j] for axis 0 (and likewise for any axis), as torch.gather.

        An advanced GetItem: `index` picks along `axis`, and every other axis is matched by position.
        """
        index = index.data if isinstance(index, Tensor) else backend.host_array(index)
        if index.ndim != self.ndim:
            raise ValueError(f"gather: index has {index.ndim} dimensions but the input (shape {self.shape}) "
                             f"has {self.ndim}")
        axis = axis % self.ndim
        xp = self.xp
        parts = []
        for d in range(self.ndim):
            if d == axis:
                parts.append(xp.asarray(index))
            else:
                shape = [1] * self.ndim
                shape[d] = index.shape[d]
                parts.append(xp.arange(index.shape[d]).reshape(shape))
        return fn.GetItem.apply(self, tuple(parts))

    def tril(self, k=0):
        """The lower triangle of the last two axes (from diagonal k), zeros above."""
        keep = self.xp.tri(self.shape[-2], self.shape[-1], k, dtype=bool)
        return fn.MaskedFill.apply(self, ~keep, 0.0)

    def triu(self, k=0):
        """The upper triangle of the last two axes (from diagonal k), zeros below."""
        below = self.xp.tri(self.shape[-2], self.shape[-1], k - 1, dtype=bool)
        return fn.MaskedFill.apply(self, below, 0.0)

    def expand(self, *shape):
        """Broadcast to `shape` (as a differentiable op: x + zeros)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return self + Tensor._make(self.xp.zeros(shape, dtype=self.dtype), False, None)

    # ------------------------------------------------------------------ softmax and masking
    def softmax(self, axis=-1):
        return fn.Softmax.apply(self, axis)

    def log_softmax(self, axis=-1):
        return fn.LogSoftmax.apply(self, axis)

    def masked_fill(self, mask, value):
        """Where mask is True, replace by `value` (mask broadcasts against self)."""
        if not isinstance(mask, Tensor):
            mask = Tensor(mask, device=self.device)
        if mask.dtype != backend.bool_:
            raise TypeError(f"masked_fill: the mask must be a bool tensor, not {mask.dtype}")
        return fn.MaskedFill.apply(self, mask, float(value))


def _axes(axis, ndim):
    """None | int | sequence -> None | sorted tuple of non-negative axes."""
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -max(ndim, 1) <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
    if ndim == 0:                           # axis 0 (or -1) of a 0-d tensor, as torch: nothing to reduce
        return ()
    return tuple(sorted(a % max(ndim, 1) for a in axes))


def _count(shape, axes) -> int:
    """How many elements a reduction over `axes` (None: all) combines."""
    n = 1
    for a in (range(len(shape)) if axes is None else axes):
        n *= shape[a]
    return n


def _is_int_index(i) -> bool:
    return isinstance(i, numbers.Integral) and not isinstance(i, bool)


def _is_advanced_index(i) -> bool:
    return backend.is_array(i) or isinstance(i, (list, bool))


def _index_arrays(index):
    """Tensors inside an index become their arrays (integer or bool indexing)."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    if isinstance(index, list):
        return backend.host_array(index)
    return index


# Module-level helpers composed from the primitives
def _take(x, axis, start, stop):
    """x[..., start:stop, ...] with the slice on `axis` (a basic GetItem)."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return x[tuple(index)]


# Constructors, as torch's: no gradient unless requires_grad=True
def _shape_of(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)


def full(shape, fill_value, dtype=None, device=None, requires_grad=False):
    """A tensor of `shape` filled with `fill_value` (float32 for a float, int64 for an int, as torch)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dt = backend.dtype(dtype) if dtype is not None else _infer_dtype(fill_value).dtype
    xp = backend.get_xp(backend.check_device(device))
    return Tensor(xp.full(shape, fill_value, dtype=dt), requires_grad=requires_grad)


def zeros(*shape, dtype="float32", device=None, requires_grad=False):
    return full(_shape_of(shape), 0, dtype=dtype, device=device, requires_grad=requires_grad)


def ones(*shape, dtype="float32", device=None, requires_grad=False):
    return full(_shape_of(shape), 1, dtype=dtype, device=device, requires_grad=requires_grad)


def full_like(t, fill_value, dtype=None, requires_grad=False):
    return full(t.shape, fill_value, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def zeros_like(t, dtype=None, requires_grad=False):
    return full_like(t, 0, dtype=dtype, requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    return full_like(t, 1, dtype=dtype, requires_grad=requires_grad)


def arange(start, stop=None, step=1, dtype=None, device=None, requires_grad=False):
    """start, start + step, ... below stop (arange(n) counts from 0); int64 for ints, else float32."""
    if stop is None:
        start, stop = 0, start
    dt = backend.dtype(dtype) if dtype is not None else _infer_dtype([start, stop, step]).dtype
    xp = backend.get_xp(backend.check_device(device))
    return Tensor(xp.arange(start, stop, step, dtype=dt), requires_grad=requires_grad)


def where(cond, a, b):
    """Elementwise `a if cond else b`, broadcasting all three. Gradients flow to a and b."""
    ref = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    if ref is None:
        raise TypeError("where: at least one of a, b must be a Tensor")
    a = a if isinstance(a, Tensor) else ref._operand(a)
    b = b if isinstance(b, Tensor) else ref._operand(b)
    cond = cond if isinstance(cond, Tensor) else Tensor(cond, device=ref.device)
    if cond.dtype != backend.bool_:
        raise TypeError(f"where: the condition must be a bool tensor, not {cond.dtype}")
    return fn.Where.apply(cond, a, b)


def cat(tensors, axis=0):
    """Join tensors along an existing axis."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: expected a non-empty list of tensors")
    return fn.Cat.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Join tensors along a new axis (cat of unsqueezed tensors)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: expected a non-empty list of tensors")
    shapes = {t.shape for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack: all tensors need the same shape, got {sorted(shapes)}")
    return cat([t.unsqueeze(axis) for t in tensors], axis=axis)

