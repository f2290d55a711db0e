"""tinygrad_tx.optim against torch.optim: same parameters, same gradients, same trajectory."""
import json
import threading

import numpy as np
import pytest
import torch
from conftest import to_host

import tinygrad_tx as tx
from tinygrad_tx import backend, optim, threads

SHAPES = [(3, 4), (4,), (2, 3, 2)]
N_STEPS = 6

# (our class, torch class, keyword arguments shared by both)
CASES = [
    (optim.SGD, torch.optim.SGD, {"lr": 0.1}),
    (optim.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (optim.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.1}),
    (optim.Adam, torch.optim.Adam, {"lr": 1e-2}),
    (optim.Adam, torch.optim.Adam, {"lr": 3e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    (optim.AdamW, torch.optim.AdamW, {"lr": 1e-2}),
    (optim.AdamW, torch.optim.AdamW, {"lr": 3e-2, "betas": (0.7, 0.95), "eps": 1e-7, "weight_decay": 0.2}),
]
IDS = [f"{ours.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for ours, _, kw in CASES]


def initial_values(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in SHAPES]


def gradient(values, step, i):
    """A gradient that depends on the current value (so errors compound) and on the step;
    parameter 1 has no gradient on step 2 (both libraries must skip it)."""
    if i == 1 and step == 2:
        return None
    return np.sin(3.0 * values) + 0.1 * step * np.cos(values + i)


def run_ours(cls, kwargs, values, n_steps, dtype, device, lr_changes=None, start_step=0, opt_state=None):
    params = [tx.nn.Parameter(tx.Tensor(v.copy(), dtype=dtype, device=device)) for v in values]
    opt = cls(params, **kwargs)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    for step in range(start_step, start_step + n_steps):
        if lr_changes and step in lr_changes:
            opt.lr = lr_changes[step]
        for i, p in enumerate(params):
            g = gradient(p.numpy(), step, i)
            p.grad = None if g is None else tx.Tensor(g, dtype=dtype, device=device).data
        opt.step()
    return params, opt


def run_torch(cls, kwargs, values, n_steps, dtype, lr_changes=None):
    params = [torch.tensor(v, dtype=dtype, requires_grad=True) for v in values]
    opt = cls(params, **kwargs)
    for step in range(n_steps):
        if lr_changes and step in lr_changes:
            opt.param_groups[0]["lr"] = lr_changes[step]
        for i, p in enumerate(params):
            g = gradient(p.detach().numpy(), step, i)
            p.grad = None if g is None else torch.tensor(g, dtype=dtype)
        opt.step()
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("ours, theirs, kwargs", CASES, ids=IDS)
def test_matches_torch_float64(ours, theirs, kwargs, device):
    values = initial_values()
    lr_changes = {4: kwargs["lr"] * 0.5}                  # .lr is read at every step
    params, _ = run_ours(ours, kwargs, values, N_STEPS, "float64", device, lr_changes)
    expected = run_torch(theirs, kwargs, values, N_STEPS, torch.float64, lr_changes)
    for p, e, v in zip(params, expected, values):
        assert not np.allclose(e, v)                         # the parameters did move
        np.testing.assert_allclose(p.numpy(), e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("ours, theirs, kwargs", CASES, ids=IDS)
def test_matches_torch_float32_and_stays_float32(ours, theirs, kwargs, device):
    values = [v.astype(np.float32) for v in initial_values(1)]
    params, opt = run_ours(ours, kwargs, values, N_STEPS, "float32", device)
    expected = run_torch(theirs, kwargs, values, N_STEPS, torch.float32)
    for p, e in zip(params, expected):
        assert p.dtype == np.float32
        np.testing.assert_allclose(p.numpy(), e, rtol=1e-5, atol=1e-6)
    for i, st in enumerate(opt.state):
        for name, value in st.items():
            if name != "step":
                assert value.dtype == np.float32, (i, name)


def test_step_is_in_place_and_leaves_grad_alone(device):
    p = tx.nn.Parameter(tx.Tensor(np.ones((2, 3)), device=device))
    q = tx.nn.Parameter(tx.Tensor(np.ones(3), device=device))
    opt = optim.Adam([p, q], lr=0.1, weight_decay=0.1)
    buffer = p.data
    grad = tx.Tensor(np.full((2, 3), 0.5), device=device).data
    p.grad = grad
    opt.step()
    assert p.data is buffer                                  # updated in place, not replaced
    np.testing.assert_array_equal(tx.backend.to_numpy(p.grad), np.full((2, 3), 0.5, dtype=np.float32))
    np.testing.assert_array_equal(q.numpy(), np.ones(3))    # no grad: skipped
    assert "step" not in opt.state[1]
    opt.zero_grad()
    assert p.grad is None and q.grad is None


ADAMS = [(ours, theirs, kw) for ours, theirs, kw in CASES if ours is not optim.SGD]
ADAM_IDS = [i for i, (ours, _, _) in zip(IDS, CASES) if ours is not optim.SGD]


def test_adam_keeps_each_dtypes_parameters_in_one_buffer(device):
    params = [tx.nn.Parameter(tx.Tensor(np.ones(s), dtype=d, device=device))
              for s, d in [((2, 3), "float32"), ((4,), "float64"), ((5,), "float32"), ((), "float32")]]
    before = [p.numpy() for p in params]
    optim.Adam(params)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.numpy(), b)                  # packing moves, never changes
    bases = [p.data.base for p in params]
    assert bases[0] is bases[2] is bases[3] and bases[1] is not bases[0] and bases[0] is not None


@pytest.mark.parametrize("ours, theirs, kwargs", ADAMS, ids=ADAM_IDS)
def test_adam_follows_parameters_whose_arrays_were_replaced(ours, theirs, kwargs, device):
    """Module.load_state_dict and Module.to give parameters new arrays: the next step packs them
    again, keeping the moments, and the trajectory stays torch's."""
    values = initial_values(2)
    params = [tx.nn.Parameter(tx.Tensor(v.copy(), dtype="float64", device=device)) for v in values]
    opt = ours(params, **kwargs)
    for step in range(N_STEPS):
        if step == 2:
            params[0].data = params[0].data.copy()                   # one parameter gets a new array
        if step == 4:
            holder = _Holder(params)
            holder.load_state_dict(holder.state_dict())              # every parameter gets a new array
        for i, p in enumerate(params):
            g = gradient(p.numpy(), step, i)
            p.grad = None if g is None else tx.Tensor(g, dtype="float64", device=device).data
        opt.step()
    expected = run_torch(theirs, kwargs, values, N_STEPS, torch.float64)
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.numpy(), e, rtol=1e-12, atol=1e-14)
    assert all(flat.intact(params) for flat in opt._flats)


class _Holder(tx.nn.Module):
    def __init__(self, params):
        super().__init__()
        for i, p in enumerate(params):
            setattr(self, f"p{i}", p)


# ---------------------------------------------------------------------------- chunks on threads
@pytest.fixture
def thread_count():
    """tx.set_num_threads for one test; the default comes back afterwards."""
    yield threads.set_num_threads
    threads.set_num_threads(None)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_run_in_chunks_updates_every_element_exactly_once(count, thread_count, monkeypatch):
    """Pieces of sizes that the chunk does not divide, an empty one, a single element: each
    element is visited once, whichever thread takes its chunk."""
    monkeypatch.setattr(threads, "MIN_BYTES", 0)
    monkeypatch.setattr(optim, "_MIN_ELEMENTS_FOR_THREADS", 0)
    thread_count(count)
    sizes = [23, 0, 1, 7, 50, 6]
    visits = [np.zeros(n, dtype=np.int64) for n in sizes]
    calls = []

    def update(tasks):
        calls.append(len(tasks))                # one call per thread's share
        for j, lo, hi in tasks:
            assert 0 <= lo < hi <= sizes[j] and hi - lo <= 7
            visits[j][lo:hi] += 1          # each thread writes only the chunks it took
    optim.run_in_chunks(update, sizes, chunk=7, nbytes=0)
    for j, v in enumerate(visits):
        np.testing.assert_array_equal(v, np.ones(sizes[j], dtype=np.int64), err_msg=f"piece {j}")
    assert sum(calls) == 4 + 0 + 1 + 1 + 8 + 1 and len(calls) == count


def test_run_in_chunks_raises_what_a_worker_raised(thread_count, monkeypatch):
    monkeypatch.setattr(threads, "MIN_BYTES", 0)
    monkeypatch.setattr(optim, "_MIN_ELEMENTS_FOR_THREADS", 0)
    thread_count(2)

    def update(tasks):
        for j, lo, hi in tasks:
            if j == 7:
                raise RuntimeError("chunk of piece 7")       # in the second half: a worker thread
    with pytest.raises(RuntimeError, match="piece 7"):
        optim.run_in_chunks(update, [10] * 8, chunk=2, nbytes=0)


def adam_run(cls, kwargs, values, n_steps, dtype):
    """Parameters and optimizer state after n_steps of `cls` on the CPU (gradient() as above)."""
    params, opt = run_ours(cls, kwargs, values, n_steps, dtype, "cpu")
    state = [{k: backend.to_numpy(v).copy() for k, v in st.items() if k != "step"} for st in opt.state]
    return [p.numpy() for p in params], state


def assert_same_bits(run, other):
    """Parameters and moments of two adam_run results are equal, bit for bit."""
    for a, b in zip(run[0] + [a for st in run[1] for a in st.values()],
                    other[0] + [b for st in other[1] for b in st.values()]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ours, theirs, kwargs", ADAMS, ids=ADAM_IDS)
def test_adam_in_small_chunks_on_threads_is_bit_for_bit_the_same(ours, theirs, kwargs, thread_count, monkeypatch):
    """Chunks of 5 elements (so that every parameter, of 1 to 12 elements, is cut at places the
    chunk does not divide) on 3 threads give exactly the arrays of the unchunked single-thread
    update, and torch's trajectory: a skipped or repeated chunk would move away from both."""
    values = initial_values(4) + [np.array(0.5), np.arange(7.0) / 7]        # a 0-d and a 7-element parameter
    thread_count(1)
    whole = adam_run(ours, kwargs, values, N_STEPS, "float64")
    monkeypatch.setattr(optim, "_CHUNK_BYTES", 5 * 8)
    monkeypatch.setattr(threads, "MIN_BYTES", 0)
    monkeypatch.setattr(optim, "_MIN_ELEMENTS_FOR_THREADS", 0)
    thread_count(3)
    chunked = adam_run(ours, kwargs, values, N_STEPS, "float64")
    assert_same_bits(whole, chunked)
    expected = run_torch(theirs, kwargs, values, N_STEPS, torch.float64)
    for p, e in zip(chunked[0], expected):
        np.testing.assert_allclose(p, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("ours, kwargs", [(optim.Adam, {"weight_decay": 0.1}), (optim.AdamW, {})])
def test_adam_on_threads_equals_one_thread_on_a_large_buffer(ours, kwargs, thread_count, monkeypatch):
    """At the default chunk size and thread thresholds, a buffer of 2.2M float32 elements is
    shared among two threads; the result is the same, bit for bit, as with one thread."""
    rng = np.random.default_rng(9)
    values = [rng.standard_normal(s).astype(np.float32) for s in [(1500, 1000), (3,), (700_001,), ()]]
    kwargs = {"lr": 1e-2, **kwargs}
    names = set()
    update = optim.Adam._elementwise_update
    monkeypatch.setattr(optim.Adam, "_elementwise_update",
                        lambda *args: names.add(threading.current_thread().name) or update(*args))
    thread_count(1)
    single = adam_run(ours, kwargs, values, 3, "float32")
    assert names == {threading.current_thread().name}
    thread_count(2)
    threaded = adam_run(ours, kwargs, values, 3, "float32")
    assert names - {threading.current_thread().name}        # a worker thread took part
    assert_same_bits(single, threaded)


def test_lr_zero_freezes_sgd():
    p = tx.nn.Parameter(tx.Tensor([1.0, 2.0]))
    opt = optim.SGD([p], lr=0.5)
    p.grad = np.array([1.0, 1.0], dtype=np.float32)
    opt.lr = 0.0
    opt.step()
    np.testing.assert_array_equal(p.numpy(), [1.0, 2.0])
    opt.lr = 0.5
    opt.step()
    np.testing.assert_array_equal(p.numpy(), [0.5, 1.5])


def test_constructor_errors():
    p = tx.nn.Parameter(tx.Tensor([1.0]))
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="twice"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="leaf"):
        optim.Adam([p * 2])
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(1.0, 0.9))


# ---------------------------------------------------------------------------- checkpoints
def split_for_checkpoint(state):
    """Arrays for tx.save, everything else for JSON (what a training checkpoint does)."""
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    numbers = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    return arrays, json.dumps(numbers)


@pytest.mark.parametrize("ours, theirs, kwargs", CASES, ids=IDS)
def test_state_dict_round_trip_resumes_exactly(ours, theirs, kwargs, tmp_path):
    values = initial_values(2)
    straight, _ = run_ours(ours, kwargs, values, 8, "float32", "cpu")

    first, opt = run_ours(ours, kwargs, values, 3, "float32", "cpu")
    arrays, meta = split_for_checkpoint(opt.state_dict())
    tx.save(arrays, tmp_path / "opt.npz")
    tx.save({str(i): p for i, p in enumerate(first)}, tmp_path / "params.npz")
    del first, opt

    saved = tx.load(tmp_path / "params.npz")
    state = {**tx.load(tmp_path / "opt.npz"), **json.loads(meta)}
    resumed, _ = run_ours(ours, kwargs, [saved[str(i)] for i in range(len(SHAPES))], 5, "float32", "cpu",
                          start_step=3, opt_state=state)
    for a, b in zip(resumed, straight):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_whole_state_dict_saves_in_one_npz(tmp_path, device):
    """Numbers become 0-d arrays in the .npz; load_state_dict turns them back into numbers."""
    values = initial_values(3)
    _, opt = run_ours(optim.AdamW, {"lr": 0.01}, values, 3, "float32", device)
    opt.lr = 0.004
    state = opt.state_dict()
    assert all(isinstance(v, (np.ndarray, int, float)) for v in state.values())     # host copies only
    tx.save(state, tmp_path / "opt.npz")
    params = [tx.nn.Parameter(tx.Tensor(v, dtype="float32", device=device)) for v in values]
    fresh = optim.AdamW(params, lr=1.0, weight_decay=0.5)
    fresh.load_state_dict(tx.load(tmp_path / "opt.npz"))
    assert fresh.lr == 0.004 and fresh.weight_decay == 0.01 and isinstance(fresh.state[0]["step"], int)
    assert fresh.state[0]["step"] == 3 and fresh.state[1]["step"] == 2     # param 1 skipped step 2
    for st, ref in zip(fresh.state, opt.state):
        assert tx.backend.device_of(st["exp_avg_sq"]) == device
        np.testing.assert_array_equal(to_host(st["exp_avg_sq"]), to_host(ref["exp_avg_sq"]))


def test_state_dict_is_a_copy(device):
    p = tx.nn.Parameter(tx.Tensor([1.0, 2.0], device=device))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.ones(2, dtype=np.float32)
    opt.step()
    state = opt.state_dict()
    state["state.0.momentum_buffer"][:] = 100.0
    np.testing.assert_array_equal(to_host(opt.state[0]["momentum_buffer"]), [1.0, 1.0])
    json.dumps({k: v for k, v in state.items() if not isinstance(v, np.ndarray)})   # the rest is JSON


def test_load_state_dict_errors_name_the_key():
    params = [tx.nn.Parameter(tx.Tensor(np.zeros(s))) for s in SHAPES]
    opt = optim.Adam(params)
    for p in params:
        p.grad = np.ones(p.shape, dtype=np.float32)
    opt.step()
    good = opt.state_dict()

    bad = dict(good, **{"state.1.exp_avg": np.zeros(5)})
    with pytest.raises(ValueError, match=r"'state\.1\.exp_avg'.*\(5,\).*\(4,\)"):
        opt.load_state_dict(bad)
    with pytest.raises(KeyError, match=r"'state\.0\.momentum'"):
        opt.load_state_dict(dict(good, **{"state.0.momentum": np.zeros((3, 4))}))
    with pytest.raises(KeyError, match=r"'state\.7\.exp_avg'"):
        opt.load_state_dict(dict(good, **{"state.7.exp_avg": np.zeros(4)}))
    with pytest.raises(KeyError, match="'beta2'"):
        opt.load_state_dict({k: v for k, v in good.items() if k != "beta2"})
    with pytest.raises(KeyError, match=r"'state\.2\.exp_avg_sq'"):
        opt.load_state_dict({k: v for k, v in good.items() if k != "state.2.exp_avg_sq"})
    # a failed load changed nothing
    for st in opt.state:
        assert st["step"] == 1


# ---------------------------------------------------------------------------- Noam schedule
def test_noam_matches_formula_and_torch_lambda_lr():
    d_model, warmup, factor = 64, 10, 2.0
    p = tx.nn.Parameter(tx.Tensor([0.0]))
    opt = optim.Adam([p], lr=123.0)
    sched = optim.NoamScheduler(opt, d_model, warmup, factor)

    def noam(s):
        s = max(s, 1)
        return factor * d_model ** -0.5 * min(s ** -0.5, s * warmup ** -1.5)

    t_opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1.0)
    t_sched = torch.optim.lr_scheduler.LambdaLR(t_opt, noam)
    lrs = []
    for _ in range(3 * warmup):
        lrs.append(sched.step())
        t_opt.step()
        t_sched.step()
        assert opt.lr == lrs[-1]
        assert opt.lr == pytest.approx(t_opt.param_groups[0]["lr"], rel=1e-15)
    assert lrs[1] == pytest.approx(2 * lrs[0], rel=1e-15)               # linear warm-up
    peak = int(np.argmax(lrs)) + 1
    assert peak == warmup
    assert lrs[warmup - 1] == pytest.approx(factor * (d_model * warmup) ** -0.5, rel=1e-15)
    decayed = factor * d_model ** -0.5 * (2 * warmup) ** -0.5                # 1/sqrt(step) decay
    assert lrs[2 * warmup - 1] == pytest.approx(decayed, rel=1e-15)


def test_noam_state_dict_round_trip():
    opt = optim.SGD([tx.nn.Parameter(tx.Tensor([0.0]))], lr=0.0)
    sched = optim.NoamScheduler(opt, 32, 4)
    for _ in range(7):
        sched.step()
    state = json.loads(json.dumps(sched.state_dict()))
    opt2 = optim.SGD([tx.nn.Parameter(tx.Tensor([0.0]))], lr=0.0)
    sched2 = optim.NoamScheduler(opt2, 512, 4000).load_state_dict(state)
    assert opt2.lr == opt.lr
    assert sched2.step() == sched.step()
    with pytest.raises(KeyError, match="'warmup_steps'"):
        sched2.load_state_dict({"step": 1, "d_model": 8, "factor": 1.0})


# ---------------------------------------------------------------------------- clipping
@pytest.mark.parametrize("max_norm", [0.5, 1e3, "the norm itself"])
def test_clip_grad_norm_matches_torch(max_norm, device):
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal(s) for s in SHAPES]
    if max_norm == "the norm itself":       # torch still scales, by max_norm / (norm + 1e-6)
        max_norm = float(np.sqrt(sum((g ** 2).sum() for g in grads)))
    ours = [tx.nn.Parameter(tx.Tensor(np.zeros(s), dtype="float64", device=device)) for s in SHAPES]
    theirs = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    for p, t, g in zip(ours, theirs, grads):
        p.grad = tx.Tensor(g.copy(), device=device).data
        t.grad = torch.tensor(g)
    extra = tx.nn.Parameter(tx.Tensor([1.0], device=device))         # no grad: ignored
    norm_tensor = optim.clip_grad_norm(ours + [extra], max_norm)
    t_norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert isinstance(norm_tensor, tx.Tensor) and norm_tensor.shape == () and norm_tensor.device == device
    norm = norm_tensor.item()
    assert norm == pytest.approx(float(np.sqrt(sum((g ** 2).sum() for g in grads))), rel=1e-12)
    assert norm == pytest.approx(t_norm.item(), rel=1e-12)
    for p, t, g in zip(ours, theirs, grads):
        np.testing.assert_allclose(tx.backend.to_numpy(p.grad), t.grad.numpy(), rtol=1e-12)
        if max_norm > norm + 1e-6:
            np.testing.assert_array_equal(tx.backend.to_numpy(p.grad), g)   # untouched
    clipped = np.sqrt(sum((tx.backend.to_numpy(p.grad) ** 2).sum() for p in ours))
    assert clipped == pytest.approx(min(norm, max_norm), rel=1e-5)
    assert optim.clip_grad_norm([extra], 1.0).item() == 0.0


def test_training_loop_with_backward_matches_torch():
    """The real loop: backward() fills .grad, clip, step, zero_grad, with a schedule on lr."""
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((16, 5)), rng.standard_normal((16, 3))
    theirs = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
    ours = tx.nn.Sequential(tx.nn.Linear(5, 8), tx.nn.ReLU(), tx.nn.Linear(8, 3)).to(dtype="float64")
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    opt = optim.AdamW(ours.parameters(), lr=1.0, weight_decay=0.05)
    t_opt = torch.optim.AdamW(theirs.parameters(), lr=1.0, weight_decay=0.05)
    sched = optim.NoamScheduler(opt, d_model=8, warmup_steps=3)
    for step in range(1, 7):
        sched.step()
        t_opt.param_groups[0]["lr"] = opt.lr
        loss = ((ours(tx.Tensor(x)) - tx.Tensor(y)) ** 2).mean()
        t_loss = ((theirs(torch.tensor(x)) - torch.tensor(y)) ** 2).mean()
        assert loss.item() == pytest.approx(t_loss.item(), rel=1e-12)
        loss.backward()
        t_loss.backward()
        norm = optim.clip_grad_norm(ours.parameters(), 0.5).item()
        assert norm == pytest.approx(torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5).item(), rel=1e-12)
        opt.step()
        t_opt.step()
        opt.zero_grad()
        t_opt.zero_grad()
    for (name, p), t in zip(ours.named_parameters(), theirs.parameters()):
        np.testing.assert_allclose(p.numpy(), t.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
