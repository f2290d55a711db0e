"""Optimizers, the Transformer paper's learning-rate schedule, and gradient clipping.

Each update follows torch.optim's formulas line by line, so the two agree step for step. Updates
work on the raw arrays (`p.data`, `p.grad`) in place, with no graph: the optimizer owns its buffers
(moments, momentum, scratch arrays per parameter) and reuses them every step.

Usage:
    opt = tx.optim.Adam(model.parameters(), lr=1e-3)
    loss.backward(); opt.step(); opt.zero_grad()
"""
from __future__ import annotations

import math
from bisect import bisect_left

from . import backend, kernels, threads
from .tensor import Tensor


class Optimizer:
    """Holds the parameters, the learning rate `lr` (read at every step, so a scheduler may change
    it) and per-parameter state. Subclasses name their hyperparameters and state, and define
    `_update(i, p, grad)`.
    """
    hyperparameters: tuple = ("lr",)       # attributes saved by state_dict() as plain numbers
    state_names: tuple = ()                # per-parameter state: an array the parameter's shape,
    scalar_state_names: tuple = ()         # ... or a number (such as Adam's step count)

    def __init__(self, params, lr):
        if isinstance(params, Tensor):
            params = [params]
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        seen = set()
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: parameter {i} is a {type(p).__name__}, not a Tensor")
            if not p.is_leaf:
                raise ValueError(f"{type(self).__name__}: parameter {i} (shape {p.shape}) is not a leaf "
                                 f"tensor; optimize the tensors that the graph starts from")
            if id(p) in seen:
                raise ValueError(f"{type(self).__name__}: parameter {i} (shape {p.shape}) appears twice")
            seen.add(id(p))
        if lr < 0:
            raise ValueError(f"{type(self).__name__}: invalid learning rate {lr}")
        self.lr = lr
        self.state = [{} for _ in self.params]      # state[i]: name -> array or number, for params[i]
        self._scratch = [{} for _ in self.params]   # work arrays per parameter (never saved)

    def zero_grad(self):
        """Drop every gradient (torch's set_to_none=True): the next backward starts fresh."""
        for p in self.params:
            p.grad = None

    def step(self):
        """Update every parameter that has a gradient; parameters whose grad is None are skipped."""
        for i, grad in enumerate(self._gradients()):
            if grad is not None:
                self._update(i, self.params[i], grad)

    def _gradients(self):
        """Each parameter's gradient array (None where it has none), checked against its shape."""
        grads = []
        for i, p in enumerate(self.params):
            grad = None if p.grad is None else _grad_array(p)
            if grad is not None and grad.shape != p.shape:
                raise ValueError(f"{type(self).__name__}.step: parameter {i} has shape {p.shape} "
                                 f"but its grad has shape {grad.shape}")
            grads.append(grad)
        return grads

    def _update(self, i, p, grad):
        raise NotImplementedError(f"{type(self).__name__} must define _update(i, p, grad): the update rule")

    def _buffer(self, i, p, name):
        """The state array `name` of parameter i, created as zeros on first use."""
        st = self.state[i]
        if name not in st:
            st[name] = p.xp.zeros_like(p.data)
        return st[name]

    def _work(self, i, p, slot=0):
        """A scratch array of parameter i: intermediate results go here instead of new allocations."""
        arrays = self._scratch[i]
        if slot not in arrays or arrays[slot].dtype != p.dtype or arrays[slot].shape != p.shape:
            arrays[slot] = p.xp.empty_like(p.data)
        return arrays[slot]

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self):
        """A flat dict: hyperparameters as plain numbers, and 'state.<i>.<name>' for the state of
        parameter i (host NumPy copies of arrays, plain numbers for counters). It saves with
        tx.save as it is, or split into arrays (.npz) and numbers (JSON).
        """
        out = {name: getattr(self, name) for name in self.hyperparameters}
        for i, st in enumerate(self.state):
            for name, value in st.items():
                key = f"state.{i}.{name}"
                out[key] = value if name in self.scalar_state_names else backend.to_numpy(value).copy()
        return out

    def load_state_dict(self, state):
        """Restore hyperparameters and per-parameter state, so that training resumes exactly.

        Arrays are cast to each parameter's dtype and device. Everything is checked first; errors
        name the key (KeyError for a missing or unexpected key, ValueError for a wrong shape).
        """
        own = type(self).__name__
        for name in self.hyperparameters:
            if name not in state:
                raise KeyError(f"{own}.load_state_dict: missing key {name!r}")
        new_state = [{} for _ in self.params]
        for key, value in state.items():
            if key in self.hyperparameters:
                continue
            parts = key.split(".")
            names = self.state_names + self.scalar_state_names
            if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or parts[2] not in names:
                raise KeyError(f"{own}.load_state_dict: unexpected key {key!r}")
            i, name = int(parts[1]), parts[2]
            if i >= len(self.params):
                raise KeyError(f"{own}.load_state_dict: unexpected key {key!r}: the optimizer has "
                               f"only {len(self.params)} parameters")
            p = self.params[i]
            if name in self.scalar_state_names:
                new_state[i][name] = _number(value)
                continue
            value = backend.to_numpy(value.data if isinstance(value, Tensor) else value)
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"{own}.load_state_dict: shape mismatch for key {key!r}: the state has "
                                 f"{tuple(value.shape)}, parameter {i} has {tuple(p.shape)}")
            new_state[i][name] = backend.to_device(value.astype(p.dtype), p.device)   # astype copies
        for i, st in enumerate(new_state):
            if st and set(st) != set(self.state_names + self.scalar_state_names):
                absent = sorted(set(self.state_names + self.scalar_state_names) - set(st))
                raise KeyError(f"{own}.load_state_dict: missing key 'state.{i}.{absent[0]}'")
        for name in self.hyperparameters:
            setattr(self, name, _number(state[name]))
        self._load_state(new_state)
        return self

    def _load_state(self, new_state):
        """Take the checked per-parameter state (arrays already on each parameter's device and dtype)."""
        self.state = new_state


def _grad_array(p):
    """The gradient of p as a backend array: backward() stores a Tensor, users may assign an array."""
    return p.grad.data if isinstance(p.grad, Tensor) else p.grad


def _number(value):
    """A plain Python int/float from a number or a 0-d array (as tx.load returns scalars)."""
    if isinstance(value, Tensor):
        value = value.data
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return value


# ---------------------------------------------------------------------------- SGD
class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay (torch.optim.SGD,
    dampening 0, no Nesterov):
        d = grad + weight_decay * p
        buf = d on the first step, then buf = momentum * buf + d;   d = buf   (when momentum > 0)
        p = p - lr * d
    """
    hyperparameters = ("lr", "momentum", "weight_decay")
    state_names = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: momentum ({momentum}) and weight_decay ({weight_decay}) must be >= 0")
        self.momentum, self.weight_decay = momentum, weight_decay

    def _update(self, i, p, grad):
        xp, work = p.xp, self._work(i, p)
        d = grad
        if self.weight_decay != 0:
            xp.multiply(p.data, self.weight_decay, out=work)
            work += grad                                       # d = grad + weight_decay * p
            d = work
        if self.momentum != 0:
            if "momentum_buffer" not in self.state[i]:
                self.state[i]["momentum_buffer"] = d.copy()    # torch starts the buffer at d
            else:
                buf = self.state[i]["momentum_buffer"]
                buf *= self.momentum
                buf += d
            d = self.state[i]["momentum_buffer"]
        xp.multiply(d, -self.lr, out=work)
        p.data += work                                         # p = p - lr * d


# ---------------------------------------------------------------------------- chunks on threads
# Adam's update on the CPU is about a dozen NumPy passes (multiply, add, sqrt, divide, ...). Over
# whole arrays of the `paper` model (56M float32 parameters, 225 MB per array) every pass streams
# its arrays from memory; on chunks of 256 KB per array, the five arrays of a chunk (p, m, v, grad,
# scratch) stay in a core's 2 MB L2 cache for all the passes, and only the first and last touch
# memory. The chunks are shared among threads.num_threads() threads (NumPy releases the GIL inside
# each ufunc, so they run on different cores at once).
_CHUNK_BYTES = 256 * 1024
# Below this many elements the update stays on the calling thread: each chunk's dozen ufunc calls
# hold the GIL for their Python overhead, which for many small parameters outweighs the work. On the
# 2-core machine (benchmarks/optim.md): `small` (1.0M elements in 88 parameters) took 4.1 ms on one
# thread and 5.2 ms on two, `base` (6.3M in 130) 22.5 and 21.5 ms, `paper` (56M) 233 and 168 ms.
_MIN_ELEMENTS_FOR_THREADS = 2 << 20


def run_in_chunks(update, sizes, chunk, nbytes):
    """Run an elementwise update over pieces of `sizes` elements, cut into chunks, on threads.

    Each piece j (a parameter) is cut into chunks (j, lo, hi) of at most `chunk` elements, and
    update(tasks) runs on lists of them. From _MIN_ELEMENTS_FOR_THREADS elements on,
    threads.for_each_chunk splits the elements of all pieces into one contiguous range per thread
    (when `nbytes`, the memory the update reads and writes, is large enough for it too), and each
    thread takes the chunks that begin in its range: every chunk exactly once, and about equal work
    per thread however the pieces' sizes vary. Every element goes through the same operations
    whichever chunk or thread it falls in, so the result is identical, bit for bit, with any number
    of threads.
    """
    tasks = [(j, lo, min(lo + chunk, n)) for j, n in enumerate(sizes) for lo in range(0, n, chunk)]
    if sum(sizes) < _MIN_ELEMENTS_FOR_THREADS:
        update(tasks)
        return
    begins = [0]                                    # begins[t]: the element where task t begins
    for _, lo, hi in tasks:
        begins.append(begins[-1] + hi - lo)
    del begins[-1]

    def run(start, stop):                           # the tasks that begin in elements start:stop
        update(tasks[bisect_left(begins, start):bisect_left(begins, stop)])
    threads.for_each_chunk(run, sum(sizes), nbytes)


# ---------------------------------------------------------------------------- Adam and AdamW
class _Flat:
    """The parameters of one device and dtype side by side in one flat buffer (each parameter's
    .data becomes a view into it), with Adam's two moments in flat buffers of the same layout. On
    the GPU a step gathers the gradients into a temporary fourth, and one kernel updates the whole buffer."""

    def __init__(self, indices, params):
        first = params[indices[0]]
        xp, dtype = first.xp, first.dtype
        self.indices = indices                        # positions in the optimizer's parameter list
        self.shapes = [params[i].shape for i in indices]
        self.bounds, start = [], 0
        for i in indices:
            self.bounds.append((start, start + params[i].size))
            start += params[i].size
        self.param = xp.empty(start, dtype=dtype)
        for k, i in enumerate(indices):
            self.view(self.param, k)[...] = params[i].data
            params[i].data = self.view(self.param, k)
        self.views = [params[i].data for i in indices]
        self.exp_avg, self.exp_avg_sq = xp.zeros(start, dtype=dtype), xp.zeros(start, dtype=dtype)

    def view(self, flat, k):
        """Parameter k's part of a flat buffer, in its shape."""
        start, stop = self.bounds[k]
        return flat[start:stop].reshape(self.shapes[k])

    def intact(self, params) -> bool:
        """Whether every parameter still holds its view (Module.to or load_state_dict may replace .data)."""
        return all(params[i].data is view for i, view in zip(self.indices, self.views))


class Adam(Optimizer):
    """Adam (Kingma & Ba), as torch.optim.Adam computes it. With t the parameter's step count:
        g = grad + weight_decay * p                      (L2 penalty; AdamW decays p instead)
        m = m + (1 - beta1) (g - m)                      (torch's lerp towards g)
        v = beta2 v + (1 - beta2) g^2
        step_size = lr / (1 - beta1^t)
        denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        p = p - step_size * m / denom

    The parameters of each device and dtype live in one flat buffer (their .data are views into
    it), beside flat buffers for m and v. On CuPy, when every parameter of a buffer has a gradient
    and the same step count (the usual case), a step gathers the gradients (one copy) and updates
    the whole buffer with one fused kernel (kernels.adam_step) instead of about ten kernels per
    parameter. On the CPU each parameter is updated in place on its own part of the buffers, in
    cache-sized chunks shared among the threads of tx.set_num_threads (default $TX_NUM_THREADS, else
    the machine's cores; see run_in_chunks). state_dict() and load_state_dict() see one entry per
    parameter.
    """
    hyperparameters = ("lr", "beta1", "beta2", "eps", "weight_decay")
    state_names = ("exp_avg", "exp_avg_sq")
    scalar_state_names = ("step",)
    decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        beta1, beta2 = betas
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: eps ({eps}) and weight_decay ({weight_decay}) must be >= 0")
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay
        self._flats = []
        self._pack()

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    # ------------------------------------------------------------------ the flat buffers
    def _pack(self):
        """(Re)build the flat buffers from the parameters' current arrays, keeping the moments."""
        moments = [(st.get("exp_avg"), st.get("exp_avg_sq")) for st in self.state]
        groups = {}
        for i, p in enumerate(self.params):
            groups.setdefault((p.device, p.dtype), []).append(i)
        self._flats = [_Flat(indices, self.params) for indices in groups.values()]
        for flat in self._flats:
            for k, i in enumerate(flat.indices):
                if moments[i][0] is not None:
                    self._start(flat, k)
                    device = self.params[i].device
                    self.state[i]["exp_avg"][...] = backend.to_device(moments[i][0], device)
                    self.state[i]["exp_avg_sq"][...] = backend.to_device(moments[i][1], device)

    def _start(self, flat, k):
        """Parameter k's state: views into the flat moments (made on its first step, as torch does)."""
        st = self.state[flat.indices[k]]
        st["exp_avg"], st["exp_avg_sq"] = flat.view(flat.exp_avg, k), flat.view(flat.exp_avg_sq, k)
        st.setdefault("step", 0)
        return st

    def _load_state(self, new_state):
        """Copy the loaded moments into the flat buffers (the parameters keep their views)."""
        self.state = [{} for _ in self.params]
        for flat in self._flats:
            for k, i in enumerate(flat.indices):
                if new_state[i]:
                    st = self._start(flat, k)
                    st["exp_avg"][...] = new_state[i]["exp_avg"]
                    st["exp_avg_sq"][...] = new_state[i]["exp_avg_sq"]
                    st["step"] = new_state[i]["step"]

    # ------------------------------------------------------------------ the step
    def step(self):
        grads = self._gradients()
        if not all(flat.intact(self.params) for flat in self._flats):
            self._pack()
        for flat in self._flats:
            have = [k for k, i in enumerate(flat.indices) if grads[i] is not None]
            steps = {self.state[flat.indices[k]].get("step", 0) for k in have}
            for k in have:
                st = self.state[flat.indices[k]]
                if "step" not in st:                  # its first step: the moments become views
                    st = self._start(flat, k)
                st["step"] += 1
            if len(have) == len(flat.indices) and len(steps) == 1 and kernels.accepts([flat.param]):
                # on the GPU, the whole buffer at once: gather the gradients (one copy), one kernel.
                # The gathered copy lives for this step only: kept, it would hold one more model-sized
                # array through every backward (800 MB of the `large` benchmark's 8.3 GB peak).
                xp = backend.array_module(flat.param)
                grad = xp.concatenate([grads[i].reshape(-1) for i in flat.indices])
                self._fused_update(flat.param, flat.exp_avg, flat.exp_avg_sq, grad, steps.pop() + 1)
            elif have:
                self._update_parameters(flat, have, [grads[flat.indices[k]] for k in have])

    def _update_parameters(self, flat, have, grads):
        """Update parameters `have` (positions in `flat`), each in place on its part of the buffers.

        On the CPU each parameter is cut into chunks of 256 KB per array, which stay in cache across
        the dozen passes of the update, and the chunks are shared among the worker threads. On the
        project's 2-core machine `paper`'s step (56M parameters) took 299 ms with every pass over
        whole parameters, 233 ms in chunks and 168 ms in chunks on two threads; torch.optim.Adam
        took 189 ms (benchmarks/optim.md).
        """
        xp = backend.array_module(flat.param)
        on_cpu = backend.device_of(flat.param) == "cpu"
        grads = [grad.reshape(-1) for grad in grads]
        steps = [self.state[flat.indices[k]]["step"] for k in have]
        sizes = [grad.size for grad in grads]
        chunk = _CHUNK_BYTES // flat.param.itemsize if on_cpu else max(sizes)   # CuPy: whole parameters

        fused = kernels.accepts([flat.param])

        def update(tasks):
            if not fused:
                work, g = xp.empty(chunk, dtype=flat.param.dtype), xp.empty(chunk, dtype=flat.param.dtype)
            for j, lo, hi in tasks:
                start = flat.bounds[have[j]][0]
                part = slice(start + lo, start + hi)
                arrays = (flat.param[part], flat.exp_avg[part], flat.exp_avg_sq[part], grads[j][lo:hi])
                if fused:
                    self._fused_update(*arrays, steps[j])
                else:
                    self._elementwise_update(*arrays, steps[j], work[:hi - lo], g[:hi - lo])

        if on_cpu:       # the update reads p, m, v and grad and writes p, m and v
            run_in_chunks(update, sizes, chunk, nbytes=7 * flat.param.itemsize * sum(sizes))
        else:
            update([(j, 0, n) for j, n in enumerate(sizes)])

    def _scalars(self, t):
        """The step's constants: step_size = lr / (1 - beta1^t) and sqrt(1 - beta2^t)."""
        return self.lr / (1 - self.beta1 ** t), math.sqrt(1 - self.beta2 ** t)

    def _fused_update(self, p, m, v, grad, t):
        """One Adam step on contiguous CuPy arrays, in place: one kernel."""
        step_size, bias_correction2_sqrt = self._scalars(t)
        decoupled = self.weight_decay != 0 and self.decoupled_weight_decay
        l2 = self.weight_decay != 0 and not self.decoupled_weight_decay
        kernels.adam_step(p, m, v, grad, decay=1 - self.lr * self.weight_decay if decoupled else 1.0, l2=l2,
                          weight_decay=self.weight_decay, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                          step_size=step_size, bias_correction2_sqrt=bias_correction2_sqrt)

    def _elementwise_update(self, p, m, v, grad, t, work, g):
        """One Adam step, in place, on 1-D arrays p, m, v and grad, with two work arrays of their size."""
        xp = backend.array_module(p)
        step_size, bias_correction2_sqrt = self._scalars(t)

        # 1. weight decay: AdamW shrinks the weights; Adam adds an L2 term to the gradient
        if self.weight_decay != 0 and self.decoupled_weight_decay:
            p *= 1 - self.lr * self.weight_decay
        elif self.weight_decay != 0:
            xp.multiply(p, self.weight_decay, out=g)           # the moments read g twice: keep it apart
            g += grad                                          # g = grad + weight_decay * p
            grad = g

        # 2. moments: v = beta2 v + (1 - beta2) g^2,  m = m + (1 - beta1)(g - m)
        xp.multiply(grad, 1 - self.beta2, out=work)
        work *= grad
        v *= self.beta2
        v += work
        xp.subtract(grad, m, out=work)
        work *= 1 - self.beta1
        m += work

        # 3. bias-corrected step: p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
        xp.sqrt(v, out=work)
        work /= bias_correction2_sqrt
        work += self.eps                                       # work = denom
        xp.divide(m, work, out=work)
        work *= -step_size
        p += work


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW: each step
    first shrinks p by (1 - lr * weight_decay), then takes Adam's step without the L2 term."""
    decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


# ---------------------------------------------------------------------------- schedule
class NoamScheduler:
    """The learning rate of "Attention Is All You Need" (section 5.3): linear warm-up, then decay
    with the inverse square root of the step:
        lr = factor * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)

    Call `scheduler.step()` before each `optimizer.step()`: the first update then uses step 1.
    """

    def __init__(self, optimizer, d_model, warmup_steps, factor=1.0):
        if d_model <= 0 or warmup_steps <= 0:
            raise ValueError(f"NoamScheduler: d_model ({d_model}) and warmup_steps ({warmup_steps}) must be > 0")
        self.optimizer = optimizer
        self.d_model, self.warmup_steps, self.factor = d_model, warmup_steps, factor
        self.step_num = 0

    def rate(self, step):
        """The learning rate at `step` (>= 1)."""
        if step < 1:
            raise ValueError(f"NoamScheduler.rate: step must be >= 1, got {step}")
        return self.factor * self.d_model ** -0.5 * min(step ** -0.5, step * self.warmup_steps ** -1.5)

    def step(self):
        """Advance one step and set optimizer.lr; returns the new learning rate."""
        self.step_num += 1
        self.optimizer.lr = self.rate(self.step_num)
        return self.optimizer.lr

    def state_dict(self):
        return {"step": self.step_num, "d_model": self.d_model, "warmup_steps": self.warmup_steps,
                "factor": self.factor}

    def load_state_dict(self, state):
        for key in ("step", "d_model", "warmup_steps", "factor"):
            if key not in state:
                raise KeyError(f"NoamScheduler.load_state_dict: missing key {key!r}")
        unexpected = [k for k in state if k not in ("step", "d_model", "warmup_steps", "factor")]
        if unexpected:
            raise KeyError(f"NoamScheduler.load_state_dict: unexpected key {unexpected[0]!r}")
        self.step_num = _number(state["step"])
        self.d_model, self.warmup_steps = _number(state["d_model"]), _number(state["warmup_steps"])
        self.factor = _number(state["factor"])
        if self.step_num >= 1:
            self.optimizer.lr = self.rate(self.step_num)
        return self


# ---------------------------------------------------------------------------- clipping
def clip_grad_norm(params, max_norm):
    """Scale all gradients together so that their joint L2 norm is at most `max_norm`, as
    torch.nn.utils.clip_grad_norm_ does: the factor is max_norm / (norm + 1e-6), applied in place
    when it is below 1. Parameters without a gradient are ignored.

    On the GPU nothing here waits for the GPU: the norm and the factor stay on the device and every
    gradient is multiplied by min(factor, 1) (by exactly 1 when no clipping is needed, which leaves
    it unchanged), so the training step runs on without a host synchronisation.

    Returns:
        the total norm before clipping, as a 0-d Tensor on the gradients' device (as torch's);
        `.item()` reads it.
    """
    if isinstance(params, Tensor):
        params = [params]
    grads = [_grad_array(p) for p in params if p.grad is not None]
    if not grads:
        return Tensor(0.0, device=params[0].device if params else None)
    xp = backend.array_module(grads[0])
    total_norm = backend.as_array(xp.sqrt(sum(xp.vdot(g, g) for g in grads)))    # vdot flattens; 0-d
    clip_coef = max_norm / (total_norm + 1e-6)
    if backend.device_of(total_norm) == "cpu":
        if clip_coef < 1.0:                                            # NumPy answers at once
            for g in grads:
                g *= clip_coef
    else:
        clip_coef = xp.minimum(clip_coef, 1.0)
        for g in grads:
            g *= clip_coef.astype(g.dtype, copy=False)
    return Tensor(total_norm)
