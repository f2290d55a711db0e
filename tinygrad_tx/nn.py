"""Modules and layers, as in torch.nn: parameters are registered by attribute assignment."""
from __future__ import annotations

import math
from collections import OrderedDict

from . import autograd, backend, random
from . import functional as F
from .tensor import Tensor, where


class Parameter(Tensor):
    """A leaf tensor that always requires grad; Modules collect these as their weights."""

    def __init__(self, data, dtype=None, device=None):
        super().__init__(data, requires_grad=True, dtype=dtype, device=device)   # a Tensor keeps its device

    @property
    def grad(self):
        return Tensor.grad.__get__(self)          # the slot that Tensor declares

    @grad.setter
    def grad(self, value):
        """Assign a gradient: a Tensor, an array (wrapped on this parameter's device and dtype) or None."""
        if value is not None:
            if not isinstance(value, Tensor):
                value = Tensor(value, dtype=self.dtype, device=self.device)
            if tuple(value.shape) != tuple(self.shape):
                raise ValueError(f"Parameter.grad: cannot assign a gradient of shape {tuple(value.shape)} "
                                 f"to a parameter of shape {tuple(self.shape)}")
        Tensor.grad.__set__(self, value)

    def __repr__(self):
        return "Parameter" + super().__repr__()[len("Tensor"):]


class Module:
    """Base class: subclasses set Parameters and Modules as attributes and define forward()."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_path", "")       # dotted name inside the root, for graph scopes

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning {name!r}")
        params, modules = self.__dict__["_parameters"], self.__dict__["_modules"]
        params.pop(name, None)
        modules.pop(name, None)
        if isinstance(value, Parameter):
            params[name] = value
        elif isinstance(value, Module):
            modules[name] = value
            value._set_path(f"{self._path}.{name}" if self._path else name)
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    def _set_path(self, path):
        object.__setattr__(self, "_path", path)
        for name, m in self._modules.items():
            m._set_path(f"{path}.{name}" if path else name)

    def __call__(self, *args, **kwargs):
        # Record the module path on every graph node made inside forward (for viz clusters).
        with autograd.module_scope(self._path or type(self).__name__):
            return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    # ------------------------------------------------------------------ traversal
    def named_modules(self, prefix=""):
        """(dotted name, module) for this module and every submodule, depth first; a module
        reachable by two paths (shared) is listed once, under the first."""
        seen = set()
        stack = [(prefix, self)]
        while stack:                                     # iterative: no recursion limit
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            children = [(f"{name}.{child}" if name else child, c) for child, c in m._modules.items()]
            stack.extend(reversed(children))            # reversed, so children come out in order

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) pairs, e.g. 'encoder.layers.0.self_attn.q_proj.weight'."""
        seen = set()
        for mod_name, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                if id(p) not in seen:                    # a shared parameter is listed once
                    seen.add(id(p))
                    yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def name_parameters(self):
        """Write each Parameter's dotted name into `.name` (graph labels use it)."""
        for name, p in self.named_parameters():
            p.name = name
        return self

    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def to(self, device=None, dtype=None):
        """Move/cast every parameter (and its .grad) in place, keeping the same Parameter objects,
        so optimizers built earlier still hold them. Returns self."""
        if dtype is not None and not backend.is_floating(backend.dtype(dtype)):
            raise TypeError(f"{type(self).__name__}.to: dtype must be floating point, got {dtype}")
        device = backend.check_device(device) if device is not None else None

        def convert(data):
            if dtype is not None:
                data = data.astype(backend.dtype(dtype), copy=False)
            return backend.to_device(data, device) if device is not None else data

        for p in self.parameters():
            p.data = convert(p.data)
            if p.grad is not None:
                p.grad = convert(p.grad.data)
        return self

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """Name -> host NumPy array copy of every parameter."""
        return OrderedDict((name, p.numpy()) for name, p in self.named_parameters())

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters, cast to each parameter's dtype and device.

        Everything is checked before any parameter changes, so a failed load leaves the model as
        it was. Raises KeyError naming missing/unexpected keys (when strict) and ValueError naming
        a key whose shape differs (always, as torch does).
        """
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys: {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected keys: {', '.join(unexpected)}")
            raise KeyError(f"load_state_dict for {type(self).__name__}: " + "; ".join(parts))
        arrays = {}
        for name, p in own.items():
            if name not in state:
                continue
            value = state[name]
            value = backend.to_numpy(value.data if isinstance(value, Tensor) else value)
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"load_state_dict: shape mismatch for key {name!r}: checkpoint has "
                                 f"{tuple(value.shape)}, the model has {tuple(p.shape)}")
            arrays[name] = value
        for name, value in arrays.items():
            p = own[name]
            p.data = backend.to_device(value.astype(p.dtype), p.device)   # astype copies: no aliasing
        return self

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            child = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


class ModuleList(Module):
    """A list of modules, registered as '0', '1', ..."""

    def __init__(self, modules=()):
        super().__init__()
        self.extend(modules)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.append: expected a Module, got {type(module).__name__}")
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, i):
        if isinstance(i, slice):
            return list(self._modules.values())[i]
        n = len(self._modules)
        if not -n <= i < n:
            raise IndexError(f"ModuleList index {i} out of range for {n} modules")
        return self._modules[str(i % n)]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Modules applied one after another: Sequential(Linear(4, 8), ReLU(), Linear(8, 2))."""

    def __init__(self, *modules):
        super().__init__(modules)

    def forward(self, x):
        for m in self:
            x = m(x)
        return x


# ---------------------------------------------------------------------------- initialisation
def _uniform(shape, bound, device=None):
    """U(-bound, bound) in float32 from the engine's seeded generator."""
    device = backend.check_device(device)
    return random.rng(device).uniform(-bound, bound, size=shape).astype(backend.float32)


class Linear(Module):
    """y = x @ weight.T + bias; weight (out_features, in_features), torch's default init:
    U(-1/sqrt(in), 1/sqrt(in)) for both weight and bias (kaiming_uniform with a = sqrt(5))."""

    def __init__(self, in_features, out_features, bias=True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = Parameter(_uniform((out_features, in_features), bound, device))
        self.bias = Parameter(_uniform((out_features,), bound, device)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table of num_embeddings vectors; torch's init N(0, 1), with the padding row zero."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, device=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        device = backend.check_device(device)
        w = random.rng(device).standard_normal((num_embeddings, embedding_dim)).astype(backend.float32)
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx {padding_idx} out of range for {num_embeddings} rows")
            self.padding_idx = padding_idx % num_embeddings
            w[self.padding_idx] = 0
        self.weight = Parameter(w)

    def forward(self, indices):
        out = F.embedding(indices, self.weight)
        if self.padding_idx is not None and out.requires_grad:
            # torch never updates the padding row: at padded positions take the detached lookup, so
            # the values are unchanged (even for a non-zero padding row) but no gradient flows back.
            ids = indices if isinstance(indices, Tensor) else Tensor(indices, device=out.device)
            is_pad = (ids == self.padding_idx).unsqueeze(-1)        # (..., 1), broadcasts over the dim
            out = where(is_pad, out.detach(), out)
        return out

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}" + (
            f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")


class LayerNorm(Module):
    """Normalise over the last axis with learned scale (ones) and shift (zeros)."""

    def __init__(self, normalized_shape, eps=1e-5, device=None):
        super().__init__()
        if isinstance(normalized_shape, (tuple, list)):
            if len(normalized_shape) != 1:
                raise ValueError("LayerNorm: only normalisation over the last axis is supported")
            normalized_shape = normalized_shape[0]
        self.normalized_shape, self.eps = int(normalized_shape), eps
        xp = backend.get_xp(backend.check_device(device))
        self.weight = Parameter(xp.ones(self.normalized_shape, dtype=backend.float32))
        self.bias = Parameter(xp.zeros(self.normalized_shape, dtype=backend.float32))

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class Dropout(Module):
    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class ReLU(Module):
    def forward(self, x):
        return x.relu()
