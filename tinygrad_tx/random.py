"""Random number generators: one per device, for weight initialisation and dropout.

    tx.manual_seed(0)                 # every later draw, on every device, is reproducible
    random.rng("cpu").random(shape)   # the device's generator
    random.generator(seed)            # a host generator of its own (tests, gradcheck, example data)
    state = random.rng_state()        # every device's generator, as JSON-able data (exact resume)
    random.set_rng_state(state)

The CPU's generator is NumPy's default_rng, whose state NumPy exports. The GPU's is cuRAND's Philox
(a counter-based generator, as torch uses on CUDA), driven so that its whole state is two numbers:
the seed and the offset of the next draw in its stream. CuPy's own default_rng keeps a block of
per-thread states in GPU memory instead, which no checkpoint could hold as plain data.
"""
from __future__ import annotations

from . import backend

_seed: int | None = None        # the last manual_seed; None draws fresh entropy
_generators: dict = {}          # device -> generator, made on first use
_restored: dict = {}            # device -> state from set_rng_state, applied when the generator is made


def manual_seed(seed: int) -> None:
    """Seed every device's generator, also one made later (for instance once CuPy is loaded):
    later draws (init, dropout) are then reproducible."""
    global _seed
    _seed = int(seed)
    _generators.clear()         # each device's generator is remade from the seed on its next use
    _restored.clear()


def rng(device: str = "cpu"):
    """The generator of a device, made on first use from the last manual_seed."""
    gen = _generators.get(device)
    if gen is None:
        gen = _generators[device] = _new_generator(device, _seed)
        if device in _restored:
            _set_state(gen, device, _restored.pop(device))
    return gen


def _new_generator(device: str, seed):
    if device == "cpu":
        return backend.get_xp("cpu").random.default_rng(seed)
    return CountingGenerator(backend.get_xp(device), seed)


def _set_state(gen, device, data):
    if device == "cpu":
        gen.bit_generator.state = data
    else:
        gen.state = data


def generator(seed: int):
    """A new host generator of its own, leaving the devices' generators untouched."""
    return backend.get_xp("cpu").random.default_rng(seed)


def rng_state() -> dict:
    """The state of every device's generator as plain JSON-able data (for exact resume).

    {"seed": the last manual_seed, "devices": {device: its generator's state}}; a device whose
    generator was never used is left out (it is made from the seed when first used).
    """
    devices = dict(_restored)                  # restored but not used since: kept as they came
    for device, gen in _generators.items():
        devices[device] = gen.bit_generator.state if device == "cpu" else gen.state
    return {"seed": _seed, "devices": devices}


def set_rng_state(state: dict) -> None:
    """Restore every device's generator from `rng_state()`'s data (each when it is next used, so a
    state saved on a GPU machine also restores on one without). A bare NumPy bit-generator state
    (what checkpoints held before other devices were saved) restores the CPU's generator."""
    global _seed
    if "bit_generator" in state:
        state = {"seed": _seed, "devices": {"cpu": state}}
    unknown = [d for d in state["devices"] if d not in backend.DEVICES]
    if unknown:
        raise ValueError(f"set_rng_state: unknown device {unknown[0]!r}; expected one of {backend.DEVICES}")
    _seed = state["seed"]
    _generators.clear()
    _restored.clear()
    _restored.update(state["devices"])        # applied as each generator is made: a GPU run resumes on a CPU


class CountingGenerator:
    """A GPU generator whose state is (seed, offset): cuRAND's Philox4x32-10, told the offset before
    each draw and moved past the numbers it used. Offers the draws the engine makes, with NumPy's
    Generator signatures: random, uniform, standard_normal.
    """

    def __init__(self, xp, seed=None):
        self.xp = xp
        curand = xp.cuda.curand
        if seed is None:                 # fresh entropy, as default_rng(None)
            seed = int(backend.get_xp("cpu").random.SeedSequence().generate_state(1, "uint64")[0])
        self.seed, self.offset = int(seed), 0
        self._handle = curand.createGenerator(curand.CURAND_RNG_PSEUDO_PHILOX4_32_10)
        curand.setPseudoRandomGeneratorSeed(self._handle, self.seed % 2 ** 64)

    def __del__(self):
        handle = getattr(self, "_handle", None)
        curand = getattr(getattr(self.xp, "cuda", None), "curand", None)
        if handle is not None and curand is not None:      # at interpreter shutdown CuPy may be gone
            curand.destroyGenerator(handle)

    @property
    def state(self) -> dict:
        return {"generator": "philox4x32-10", "seed": self.seed, "offset": self.offset}

    @state.setter
    def state(self, value: dict) -> None:
        if value.get("generator") != "philox4x32-10":
            raise ValueError(f"set_rng_state: not a GPU generator state: {value!r}")
        self.seed, self.offset = int(value["seed"]), int(value["offset"])
        self.xp.cuda.curand.setPseudoRandomGeneratorSeed(self._handle, self.seed % 2 ** 64)

    def _draw(self, fill, shape, dtype, *args, even=False):
        """An array of `shape` filled by the cuRAND call `fill`, from the current offset on."""
        xp, curand = self.xp, self.xp.cuda.curand
        n = 1
        for d in (shape if isinstance(shape, tuple) else (shape,)):
            n *= int(d)
        count = n + (n % 2 if even else 0)          # the normal draws come in pairs
        out = xp.empty(max(count, 1), dtype=dtype)
        curand.setStream(self._handle, xp.cuda.get_current_stream().ptr)
        curand.setGeneratorOffset(self._handle, self.offset)
        if count:
            fill(self._handle, out.data.ptr, count, *args)
        self.offset += 4 * count                    # one Philox block (four 32-bit words) per number: no overlap
        return out[:n].reshape(shape)

    def random(self, size=None, dtype=backend.float64):
        """Uniform in [0, 1) (cuRAND draws (0, 1]: take 1 - u)."""
        dtype = backend.dtype(dtype)
        curand = self.xp.cuda.curand
        fill = curand.generateUniform if dtype == backend.float32 else curand.generateUniformDouble
        u = self._draw(fill, () if size is None else size, dtype)
        return 1 - u

    def uniform(self, low=0.0, high=1.0, size=None):
        return low + (high - low) * self.random(size)

    def standard_normal(self, size=None, dtype=backend.float64):
        dtype = backend.dtype(dtype)
        curand = self.xp.cuda.curand
        fill = curand.generateNormal if dtype == backend.float32 else curand.generateNormalDouble
        return self._draw(fill, () if size is None else size, dtype, 0.0, 1.0, even=True)
