"""Run by tests/test_distributed.py under `mpirun -np 2`: the collectives of tinygrad_tx.distributed,
checked on every rank against what one process computes. Prints "rank R ok" when every check passed."""
import numpy as np

import tinygrad_tx as tx
from tinygrad_tx import distributed as dist
from tinygrad_tx import nn


def check_all_reduce(rank, size):
    a = np.arange(6, dtype=np.float32).reshape(2, 3) * (rank + 1)
    assert dist.all_reduce(a) is a                                    # in place
    np.testing.assert_array_equal(a, np.arange(6).reshape(2, 3) * sum(range(1, size + 1)))
    b = np.full(4, float(rank + 1))
    dist.all_reduce(b, op="mean")
    np.testing.assert_allclose(b, np.full(4, (size + 1) / 2))
    c = np.array([rank, -rank], dtype=np.int64)
    dist.all_reduce(c, op="max")
    np.testing.assert_array_equal(c, [size - 1, 0])
    strided = np.ones((4, 4), dtype=np.float64)[:, 1]                  # not contiguous: copied back
    dist.all_reduce(strided)
    np.testing.assert_array_equal(strided, np.full(4, float(size)))
    t = tx.Tensor(np.ones(3, dtype=np.float32))
    dist.all_reduce(t)
    np.testing.assert_array_equal(t.numpy(), np.full(3, float(size)))


def check_broadcast_parameters(rank):
    tx.manual_seed(100 + rank)                                        # different weights on every rank
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    dist.broadcast_parameters(model)
    tx.manual_seed(100)
    expected = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))          # rank 0's weights
    for p, q in zip(model.parameters(), expected.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def check_average_gradients(rank, size):
    tx.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    params = list(model.parameters())
    grads = [np.full(p.shape, float(rank + 1), dtype=np.float32) for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    params[-1].grad = None if rank == 0 else params[-1].grad           # only some ranks have this one
    total = dist.average_gradients(model, weight=rank + 1)
    weights = list(range(1, size + 1))
    assert total == sum(weights)
    mean = sum(w * w for w in weights) / sum(weights)                  # sum_r w_r * grad_r / sum_r w_r
    for p in params[:-1]:
        np.testing.assert_allclose(p.grad.numpy(), np.full(p.shape, mean), rtol=1e-6)
    # rank 0 sent zeros for the last bias, and the others their gradient, each with its weight
    last = sum(w * w for w in weights[1:]) / sum(weights)
    np.testing.assert_allclose(params[-1].grad.numpy(), np.full(params[-1].shape, last), rtol=1e-6)
    # a parameter that no rank has a gradient for keeps none
    for p in params:
        p.grad = None
    params[0].grad = np.ones(params[0].shape, dtype=np.float32)
    dist.average_gradients(model)
    assert params[0].grad is not None and all(p.grad is None for p in params[1:])


def check_from_root(rank):
    assert dist.from_root(lambda: f"from rank {dist.rank()}") == "from rank 0"
    try:
        dist.from_root(lambda: int("not a number"))
    except ValueError as e:
        assert "not a number" in str(e) and e.raised_on_every_rank
    else:
        raise AssertionError(f"rank {rank}: from_root did not raise the root's error")
    assert dist.gather_object(rank) == (list(range(dist.world_size())) if rank == 0 else None)


def stop_on_sigusr1(train_tsv, valid_tsv, run_dir):
    """Rank 0 sends SIGUSR1 to mpirun during step 3; mpirun forwards it to every rank, and the
    ranks must stop together after one same step, with a checkpoint of it."""
    import os
    import signal

    from tinygrad_tx.app.checkpoint import load_checkpoint
    from tinygrad_tx.app.config import TrainConfig
    from tinygrad_tx.app.train import Trainer, TrainingInterrupted

    cfg = TrainConfig(task=None, data=train_tsv, valid=valid_tsv, batch_size=8, eval_every=1000,
                      model={"d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1})
    trainer = Trainer(cfg, run_dir, progress=False, log=lambda m: None)
    original = trainer.train_step

    def step(batch):
        if trainer.state.step == 2 and dist.rank() == 0:
            os.kill(os.getppid(), signal.SIGUSR1)          # as `kill -USR1 <pid of mpirun>` does
        return original(batch)

    trainer.train_step = step
    try:
        trainer.run(steps=100)                         # the assertion below wants fewer steps than this
    except TrainingInterrupted:
        pass
    else:
        raise AssertionError(f"rank {dist.rank()}: SIGUSR1 did not stop training")
    steps = dist.gather_object(trainer.state.step)
    if dist.rank() == 0:
        assert steps[0] == steps[1] and 3 <= steps[0] < 100, steps
        assert load_checkpoint(run_dir).step == steps[0]
    print(f"rank {dist.rank()} ok", flush=True)


def main():
    import sys
    if sys.argv[1:2] == ["stop"]:
        stop_on_sigusr1(*sys.argv[2:5])
        return
    dist.init()
    rank, size = dist.rank(), dist.world_size()
    assert size > 1, "run this under mpirun -np 2"
    check_all_reduce(rank, size)
    check_broadcast_parameters(rank)
    check_average_gradients(rank, size)
    check_from_root(rank)
    dist.barrier()
    print(f"rank {rank} ok", flush=True)


if __name__ == "__main__":
    main()
