"""Data-parallel training over MPI: N processes, one model, one allreduce per step.

The idea fits in one line of calculus. A batch loss is a sum (or a weighted mean) over examples, so
its gradient is the sum of the gradients of any split of the batch into shards:

    loss = sum_r (n_r / n) * loss_r      =>      grad = sum_r (n_r / n) * grad_r

where rank r sees n_r of the batch's n target tokens and loss_r is the mean over its own shard. Each
process (a "rank") runs forward and backward on its shard, then one allreduce adds the weighted
gradients of all ranks. Every rank then holds the same gradient, takes the same optimizer step from
the same weights, and so stays identical to the others, and to one process on the whole batch.

    import tinygrad_tx as tx
    from tinygrad_tx import distributed as dist

    dist.init()                                  # mpirun -np 4 python train.py; plain python: one rank
    model = MyModel()
    dist.broadcast_parameters(model)             # every rank starts from rank 0's weights
    for batch in my_shard_of_each_batch():
        optimizer.zero_grad()
        loss(model, batch).backward()
        dist.average_gradients(model, weight=n_tokens_in_my_shard)
        optimizer.step()

The transport is MPI through mpi4py (Chainer's ChainerMN and Horovod work this way too); it is
imported on first use, so `import tinygrad_tx` works without it. A process started without an MPI
launcher (`python train.py`) is a world of one rank: every function works and does nothing. Arrays on
the GPU are staged through host memory: simple, and correct on any MPI, at the cost of two copies.
"""
from __future__ import annotations

import os
import time

from . import backend
from .tensor import Tensor

INSTALL_HINT = ("data-parallel training needs MPI and mpi4py: apt-get install openmpi-bin libopenmpi-dev "
                "(or brew install open-mpi), then pip install mpi4py")

# Environment variables that MPI launchers set in every process they start: Open MPI's mpirun, MPICH's
# and Intel MPI's mpiexec (Hydra, PMI), and Slurm's srun with PMIx.
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")

_world = None       # the _World once init() ran


class _World:
    """The communicator this process belongs to: MPI's COMM_WORLD, or None for a world of one."""

    def __init__(self, comm):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()


def launched_by_mpi() -> bool:
    """True when an MPI launcher (mpirun, mpiexec, srun) started this process."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError(f"{INSTALL_HINT} ({type(e).__name__}: {e})") from e
    return MPI


def init(mpi: bool | None = None) -> None:
    """Join the job this process was launched in. Calling it again does nothing.

    Args:
        mpi: None (the default) uses MPI when an MPI launcher started this process, and is otherwise
            a world of one rank without importing mpi4py. True insists on MPI (a singleton MPI world
            when not launched by mpirun); False forces a world of one.
    """
    global _world
    if _world is not None:
        return
    use_mpi = launched_by_mpi() if mpi is None else mpi
    _world = _World(_import_mpi().COMM_WORLD if use_mpi else None)


def is_initialized() -> bool:
    """True once init() has run (rank(), world_size() and the collectives call it themselves)."""
    return _world is not None


def _get_world() -> _World:
    init()
    return _world


def rank() -> int:
    """This process's index in the job, 0 .. world_size() - 1. Rank 0 writes files and prints."""
    return _get_world().rank


def world_size() -> int:
    """How many processes train together (1 without an MPI launcher)."""
    return _get_world().size


def is_main_process() -> bool:
    return rank() == 0


# ---------------------------------------------------------------------------- collectives
REDUCE_OPS = ("sum", "mean", "max", "min", "prod")


def _mpi_op(op: str):
    MPI = _import_mpi()
    return {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD}[op]


def all_reduce(array, op: str = "sum"):
    """Combine `array` elementwise over all ranks, in place, and return it.

    Every rank passes an array of the same shape and dtype, and every rank gets the result.

    Args:
        array: a NumPy or CuPy array, or a Tensor (its .data is reduced in place).
        op: "sum", "mean" (the sum divided by world_size()), "max", "min" or "prod".
    """
    if op not in REDUCE_OPS:
        raise ValueError(f"all_reduce: unknown op {op!r}; expected one of {', '.join(REDUCE_OPS)}")
    data = array.data if isinstance(array, Tensor) else array
    if op == "mean" and not backend.is_floating(data.dtype):
        raise ValueError(f"all_reduce: op 'mean' needs a floating-point array, got {data.dtype}")
    world = _get_world()
    if world.comm is None:
        return array
    mpi_op = _mpi_op(op)
    host = backend.to_numpy(data)
    contiguous = host.flags.c_contiguous and host.flags.writeable
    buffer = host if contiguous else host.copy()
    world.comm.Allreduce(_import_mpi().IN_PLACE, buffer, op=mpi_op)
    if op == "mean":
        buffer /= world.size
    if buffer is not data:                       # a GPU array, or a strided one: copy the result back
        data[...] = backend.to_device(buffer, backend.device_of(data))
    return array


def from_root(fn, root: int = 0):
    """Call fn() on rank root only, and give its result, or the exception it raised, to every rank.

    For work that must happen once (reading a checkpoint, checking a run directory): all ranks then
    go on together or fail together with the same error, instead of the others waiting forever.
    """
    world = _get_world()
    if world.comm is None:
        return fn()
    outcome = None
    if world.rank == root:
        try:
            outcome = ("value", fn())
        except Exception as e:  # noqa: BLE001 (any error: handed to every rank and raised there)
            outcome = ("error", e)
    _wait_for_all(world.comm)
    kind, value = world.comm.bcast(outcome, root=root)
    if kind == "error":
        value.raised_on_every_rank = True     # so that a caller can report it once, and need not abort
        raise value
    return value


def _wait_for_all(comm, poll_seconds: float = 0.002) -> None:
    """A barrier that sleeps while it waits. MPI's blocking calls spin on a core, which would take a
    core from the rank that is working alone (validating, say) when ranks share one machine."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(poll_seconds)


def broadcast_object(obj, root: int = 0):
    """Rank root's Python object (a dict of settings, a state_dict) on every rank.
    Sent pickled over MPI between the processes of one job; files are never unpickled."""
    world = _get_world()
    if world.comm is None:
        return obj
    return world.comm.bcast(obj, root=root)


def gather_object(obj, root: int = 0):
    """On rank root, the list of every rank's obj (in rank order); None on the other ranks."""
    world = _get_world()
    if world.comm is None:
        return [obj]
    return world.comm.gather(obj, root=root)


def barrier() -> None:
    world = _get_world()
    if world.comm is not None:
        world.comm.Barrier()


def abort(code: int = 1) -> None:
    """Stop every rank of the job at once (after an error on one rank, the others would wait forever)."""
    world = _get_world()
    if world.comm is not None and world.size > 1:
        world.comm.Abort(code)


# ---------------------------------------------------------------------------- module helpers
def _parameters(module):
    return list(module.parameters()) if hasattr(module, "parameters") else list(module)


def _dtype_groups(params):
    """Parameters grouped by dtype, so that each group flattens into one buffer without casting."""
    groups: dict = {}
    for p in params:
        groups.setdefault(p.dtype, []).append(p)
    return groups


def broadcast_parameters(module, root: int = 0) -> None:
    """Copy rank root's parameter values into every rank's module, in place.

    Call it once after building the model (and after loading a checkpoint), so that all ranks start
    from the same weights even when their random initialisations differ.

    Args:
        module: an nn.Module, or a list of Parameters.
    """
    world = _get_world()
    if world.comm is None:
        return
    for dtype, params in _dtype_groups(_parameters(module)).items():
        flat = backend.get_xp("cpu").zeros(sum(p.size for p in params), dtype=dtype)       # (total,)
        if world.rank == root:
            _pack(flat, [p.data for p in params])
        world.comm.Bcast(flat, root=root)
        offset = 0
        for p in params:
            piece = flat[offset:offset + p.size].reshape(p.shape)
            p.data[...] = backend.to_device(piece, p.device)
            offset += p.size


def _pack(flat, arrays):
    offset = 0
    for a in arrays:
        size = a.size
        flat[offset:offset + size] = backend.to_numpy(a).reshape(-1)
        offset += size


def average_gradients(module, weight: float = 1.0) -> float:
    """Replace every rank's gradients by their weighted mean over the ranks, in one allreduce.

        grad <- sum_r weight_r * grad_r / sum_r weight_r

    With the default weight of 1 this is the plain mean. When each rank's loss is a mean over its own
    shard and the shards differ in size (target tokens, say), pass that size as the weight: the result
    is then exactly the gradient of the mean over the whole global batch. A rank with an empty shard
    passes weight 0 and no gradients.

    All gradients (one buffer per dtype) travel in one flat host buffer, with two numbers per
    parameter appended: whether the rank has a gradient for it, and the weight. A parameter that no
    rank has a gradient for keeps grad None, so the optimizer skips it as it would in one process.

    Args:
        module: an nn.Module, or a list of Parameters (the same list, in the same order, on all ranks).
        weight: this rank's share of the global batch (a count or a fraction), >= 0.
    Returns:
        the sum of the weights over all ranks.
    """
    if weight < 0:
        raise ValueError(f"average_gradients: weight must be >= 0, got {weight}")
    world = _get_world()
    if world.comm is None:
        return float(weight)
    params = _parameters(module)
    groups = list(_dtype_groups(params).items())
    MPI = _import_mpi()
    total_weight = None
    for g, (dtype, group) in enumerate(groups):
        sizes = [p.size for p in group]
        n = sum(sizes)
        # [weighted gradients (n) | has-a-gradient flags (len(group)) | the weight (1)]
        flat = backend.get_xp("cpu").zeros(n + len(group) + 1, dtype=dtype)
        offset = 0
        for i, (p, size) in enumerate(zip(group, sizes)):
            if p.grad is not None:
                grad = p.grad.data if isinstance(p.grad, Tensor) else p.grad
                flat[offset:offset + size] = backend.to_numpy(grad).reshape(-1)
                flat[offset:offset + size] *= weight
                flat[n + i] = 1
            offset += size
        flat[-1] = weight
        world.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        total_weight = float(flat[-1])
        if total_weight == 0:
            raise ValueError("average_gradients: every rank passed weight 0, so there is nothing to average")
        flat[:n] /= flat[-1]
        offset = 0
        for i, (p, size) in enumerate(zip(group, sizes)):
            if flat[n + i] > 0:
                mean = backend.to_device(flat[offset:offset + size].reshape(p.shape), p.device)
                p.grad = Tensor(mean, dtype=p.dtype, device=p.device)
            offset += size
    return total_weight if total_weight is not None else float(weight)
