"""Random number generators: one per device, for weight initialisation and dropout.

    tx.manual_seed(0)                 # every later draw, on every device, is reproducible
    random.rng("cpu").random(shape)   # the device's generator (NumPy's or CuPy's default_rng)
    random.generator(seed)            # a host generator of its own (tests, gradcheck, example data)
"""
from __future__ import annotations

from . import backend

_seed: int | None = None        # the last manual_seed; None draws fresh entropy
_generators: dict = {}          # device -> generator, made on first use


def manual_seed(seed: int) -> None:
    """Seed every device's generator; later draws (init, dropout) are then reproducible."""
    global _seed
    _seed = int(seed)
    _generators.clear()         # each device's generator is remade from the seed on its next use


def rng(device: str = "cpu"):
    """The generator of a device, made on first use from the last manual_seed."""
    gen = _generators.get(device)
    if gen is None:
        gen = _generators[device] = backend.get_xp(device).random.default_rng(_seed)
    return gen


def generator(seed: int):
    """A new host generator of its own, leaving the devices' generators untouched."""
    return backend.get_xp("cpu").random.default_rng(seed)


def rng_state() -> dict:
    """The CPU generator's state as plain JSON-able data (for exact resume)."""
    return rng("cpu").bit_generator.state


def set_rng_state(state: dict) -> None:
    """Restore the CPU generator from `rng_state()`'s data."""
    gen = backend.get_xp("cpu").random.default_rng()
    gen.bit_generator.state = state
    _generators["cpu"] = gen
