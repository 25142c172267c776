"""Training on several processes under ``torchrun``: every tie to ``torch.distributed``.

``torchrun`` starts one process per rank with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its environment.
``pomona train`` reads them (:func:`launched`); with more than one rank the run joins
the process group (:func:`process_group`: NCCL with one GPU per rank when training on
CUDA, gloo on the CPU) and the rest of ``pomona.train`` asks this module who it is
(:func:`world`) and uses its collectives (:func:`all_sum`, :func:`gather`,
:func:`barrier`) and :func:`wrap` (DistributedDataParallel). In a single process every
one of them is a no-op, so a plain run takes the same code path.

How the work is shared (docs/scale.md): ``--batch-size`` is the *global* batch. Every
rank draws the same seeded permutation each epoch, cuts it into the same global batches
and takes its part of each (:meth:`World.share`); its loss is weighted by its rows over
the global batch's rows times the number of ranks, so DDP's average of the ranks'
gradients is the global batch's mean gradient, also for a short or empty part (every
rank takes the same number of steps: nothing to join, no hang).

Nothing here imports torch until a function needs it: the command line asks
:func:`launched` before torch loads.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pomona.runtime.errors import PomonaError
from pomona.runtime.system import available_cpus

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "World",
    "all_sum",
    "barrier",
    "default_threads",
    "gather",
    "launched",
    "no_buffer_broadcasts",
    "process_group",
    "same_everywhere",
    "world",
    "wrap",
]

_Rows = TypeVar("_Rows", bound=Any)  # a torch tensor or a numpy array: anything sliced by rows


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (one rank, rank 0, when alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the rank on this machine: its GPU under NCCL
    local_size: int = 1  # ranks on this machine: they share its CPUs

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    def bounds(self, rows: int) -> tuple[int, int]:
        """Start and stop of this rank's part of ``rows`` consecutive rows: ``size`` parts
        whose lengths differ by at most one, the longer ones first (``torch.tensor_split``'s
        rule); a part is empty when there are fewer rows than ranks."""
        whole, extra = divmod(rows, self.size)
        start = self.rank * whole + min(self.rank, extra)
        return start, start + whole + (1 if self.rank < extra else 0)

    def share(self, rows: _Rows) -> _Rows:
        """This rank's part of ``rows`` (a tensor or array, split along its first axis)."""
        start, stop = self.bounds(len(rows))
        return rows[start:stop]

    def describe(self, batch_size: int) -> str:
        """How the global batch is shared: ``2 ranks x 16 rows = global batch 32``."""
        low, high = batch_size // self.size, -(-batch_size // self.size)
        each = f"{low}" if low == high else f"{low}-{high}"
        return f"{self.size} ranks x {each} rows = global batch {batch_size}"


_SINGLE = World()
_current = _SINGLE
_device: torch.device | None = None  # where collectives put their tensors (NCCL: the GPU)


def _variable(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise PomonaError(f"{name}={value!r} in the environment is not a whole number") from None


def launched() -> World:
    """Where torchrun's environment puts this process (rank 0 of 1 without torchrun)."""
    size = _variable("WORLD_SIZE", 1)
    if size <= 1:
        return _SINGLE
    rank = _variable("RANK", 0)
    local_size = _variable("LOCAL_WORLD_SIZE", size)
    local_rank = _variable("LOCAL_RANK", rank % max(local_size, 1))
    if not (0 <= rank < size and 0 <= local_rank < local_size):
        raise PomonaError(
            f"RANK={rank}, LOCAL_RANK={local_rank} do not fit WORLD_SIZE={size}, "
            f"LOCAL_WORLD_SIZE={local_size} (start the ranks with torchrun)"
        )
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise PomonaError(
            f"WORLD_SIZE={size} but {' and '.join(missing)} not set: start the ranks with torchrun"
        )
    return World(rank=rank, size=size, local_rank=local_rank, local_size=local_size)


def world() -> World:
    """The ranks of the run in progress: :func:`launched`'s inside :func:`process_group`."""
    return _current


def default_threads() -> int:
    """torch intra-op threads when ``--threads`` is not given: this rank's share of the CPUs
    this process may use (the ranks on one machine share them), at least 1. torchrun sets
    ``OMP_NUM_THREADS=1``; this replaces it."""
    return max(1, available_cpus() // launched().local_size)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Join the other ranks for the body (NCCL on CUDA, gloo on the CPU), leave at the end.

    Alone (no torchrun, or one rank) it does nothing. A rank that stops (killed, or
    failed) breaks the others' next collective: that failure becomes a
    :class:`PomonaError` (one ``Error:`` line), and torchrun exits non-zero.
    """
    global _current, _device
    here = launched()
    if here.size == 1:
        yield here
        return
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    _current, _device = here, device
    try:
        yield here
    except RuntimeError as err:
        if not _peer_lost(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PomonaError(
            f"rank {here.rank}: lost the other ranks ({first}); continue with --resume"
        ) from err
    finally:
        _current, _device = _SINGLE, None
        dist.destroy_process_group()


def _peer_lost(err: RuntimeError) -> bool:
    """Whether a collective failed because another rank went away (gloo reports it as a
    plain RuntimeError from its transport)."""
    import torch.distributed as dist

    return isinstance(err, dist.DistError) or "/gloo/transport/" in str(err)


def all_sum(values: Sequence[float]) -> list[float]:
    """Each value summed over the ranks (float64), the same on every rank."""
    if _current.size == 1:
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device)
    dist.all_reduce(total)
    return total.tolist()


def gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if _current.size == 1:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * _current.size
    dist.all_gather_object(values, value)
    return values


def same_everywhere(value: Any) -> bool:
    """Whether every rank holds an equal ``value`` (the same answer on every rank, so that
    all of them can stop together instead of some waiting for the others forever)."""
    first, *rest = gather(value)
    return all(other == first for other in rest)


def barrier() -> None:
    """Wait until every rank has come here."""
    if _current.size > 1:
        import torch.distributed as dist

        dist.barrier()


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` as DistributedDataParallel (gradients averaged over the ranks in
    backward), or itself when alone. Buffers (the standardization statistics) are the
    same on every rank: they are not sent again before each step."""
    if _current.size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(
        module, device_ids=ids, **no_buffer_broadcasts(DistributedDataParallel)
    )


def no_buffer_broadcasts(ddp: type) -> dict[str, Any]:
    """The keyword of ``ddp`` (DistributedDataParallel) that stops broadcasting buffers
    before each forward: ``forward_sync_buffers`` since torch 2.13, ``broadcast_buffers``
    (deprecated there) before. Buffers are still synced once, when the module is wrapped."""
    accepted = inspect.signature(ddp).parameters
    return {
        "forward_sync_buffers" if "forward_sync_buffers" in accepted else "broadcast_buffers": False
    }
