"""tinygrad_tx.random: one generator per device, seeded together, with a state that round-trips."""
import json

import numpy as np
import pytest
from conftest import to_host

import tinygrad_tx as tx
from tinygrad_tx import random


def draws(device):
    """What the engine draws from a device's generator: dropout's uniforms and init's normals."""
    gen = random.rng(device)
    return [to_host(gen.random((3, 5), dtype=np.float32)), to_host(gen.standard_normal((7,))),
            to_host(gen.uniform(-0.5, 0.5, size=(2, 2)))]


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_state_round_trips_through_json_on_every_device(device):
    tx.manual_seed(11)
    draws(device)                                           # move the generator on from the seed
    saved = json.loads(json.dumps(random.rng_state()))      # what trainer.json holds
    expected = draws(device)
    draws(device)
    random.set_rng_state(saved)
    assert_same(draws(device), expected)


def test_state_holds_every_device_in_use(device):
    tx.manual_seed(2)
    random.rng("cpu")
    random.rng(device)
    state = random.rng_state()
    assert state["seed"] == 2 and set(state["devices"]) == {"cpu", device}


def test_manual_seed_reaches_a_generator_made_later(device):
    tx.manual_seed(5)
    first = draws(device)
    tx.manual_seed(5)
    assert_same(draws(device), first)
    tx.manual_seed(6)
    assert not np.array_equal(draws(device)[0], first[0])


def test_draws_have_numpys_ranges_and_shapes(device):
    tx.manual_seed(0)
    u, z, w = draws(device)
    assert u.dtype == np.float32 and u.shape == (3, 5) and np.all((u >= 0) & (u < 1))
    assert z.dtype == np.float64 and z.shape == (7,)
    assert w.shape == (2, 2) and np.all(np.abs(w) <= 0.5)


def test_a_bare_numpy_state_restores_the_cpu_generator():
    """Checkpoints written before other devices were saved hold the CPU generator's state alone."""
    tx.manual_seed(4)
    random.rng("cpu").random(3)
    old_format = random.rng("cpu").bit_generator.state
    expected = random.rng("cpu").random(4)
    random.set_rng_state(old_format)
    np.testing.assert_array_equal(random.rng("cpu").random(4), expected)


def test_unknown_devices_in_a_state_are_refused():
    with pytest.raises(ValueError, match=r"unknown device 'tpu'"):
        random.set_rng_state({"seed": 0, "devices": {"tpu": {}}})


def test_a_gpu_state_restores_on_a_machine_without_one():
    """The GPU's part waits until a GPU generator is made, and is saved again meanwhile."""
    gpu = {"generator": "philox4x32-10", "seed": 3, "offset": 4096}
    tx.manual_seed(3)
    cpu = random.rng("cpu").bit_generator.state
    expected = random.rng("cpu").random(2)
    random.set_rng_state({"seed": 3, "devices": {"cpu": cpu, "cuda": gpu}})
    np.testing.assert_array_equal(random.rng("cpu").random(2), expected)
    assert random.rng_state()["devices"]["cuda"] == gpu
