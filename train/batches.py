"""Feeding the training loop: whole batches per DataLoader index call, on the device."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pomona.train.distributed import World

__all__ = [
    "GPU_SHARE",
    "BatchTensors",
    "ShuffledBatches",
    "batch_loader",
    "needs_pinning",
    "on_device",
    "place",
]

#: The training set moves to the GPU once when it takes at most this share of its free memory.
GPU_SHARE = 0.5


class BatchTensors(Dataset[tuple[torch.Tensor, ...]]):
    """Tensors indexed a whole batch at a time: ``dataset[index]`` slices every tensor.

    ``index`` is a tensor (or list) of row numbers. With :class:`ShuffledBatches` as the
    DataLoader's sampler and ``batch_size=None``, one index call fetches a whole batch
    instead of one call per row followed by a collate. Rows are gathered with
    ``index_select``, the same rows as ``t[index]`` at about a third of its cost on a CPU.
    """

    def __init__(self, *tensors: torch.Tensor) -> None:
        if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
            raise ValueError("BatchTensors needs tensors with the same number of rows")
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def __getitem__(self, index: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, ...]:
        rows = torch.as_tensor(index, dtype=torch.int64, device=self.tensors[0].device)
        return tuple(t.index_select(0, rows) for t in self.tensors)


class ShuffledBatches(Sampler[torch.Tensor]):
    """Batches of row numbers of a fresh random permutation each epoch, as index tensors.

    Equivalent to ``BatchSampler(RandomSampler(...), batch_size, drop_last=False)`` but it
    hands out slices of one ``torch.randperm`` instead of Python lists of ints, which keeps
    the DataLoader within a few percent of a hand-written slicing loop.

    With ``world`` (several ranks) each rank draws the same permutation and gets its part
    (:meth:`World.share`) of each batch of ``batch_size`` rows, the global batch: the same
    number of batches on every rank, a part empty where a batch has fewer rows than ranks.
    """

    def __init__(
        self, rows: int, batch_size: int, generator: torch.Generator, world: World | None = None
    ) -> None:
        self.rows = rows
        self.batch_size = batch_size
        self.generator = generator
        self.world = world or World()

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = torch.randperm(self.rows, generator=self.generator)
        if self.world.size == 1:
            yield from order.split(self.batch_size)
        else:
            yield from (self.world.share(batch) for batch in order.split(self.batch_size))


def batch_loader(
    dataset: BatchTensors,
    batch_size: int,
    generator: torch.Generator,
    *,
    pin: bool = False,
    world: World | None = None,
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """A DataLoader yielding shuffled whole batches; the order depends only on ``generator``.

    ``pin`` puts each batch in pinned memory, for non-blocking copies to a GPU. With
    ``world`` each batch is this rank's part of the global batch (:class:`ShuffledBatches`).
    """
    sampler = ShuffledBatches(len(dataset), batch_size, generator, world)
    return DataLoader(
        dataset, sampler=sampler, batch_size=None, generator=generator, pin_memory=pin
    )


def place(
    x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training tensors where batches are cut from: on a CUDA device when they fit in
    :data:`GPU_SHARE` of its free memory (moved once), else on the CPU."""
    if device.type != "cuda":
        return x.to(device), y.to(device)
    free, _ = torch.cuda.mem_get_info(device)
    need = x.element_size() * x.numel() + y.element_size() * y.numel()
    if need <= GPU_SHARE * free:
        return x.to(device), y.to(device)
    return x, y


def needs_pinning(data: torch.device, device: torch.device) -> bool:
    """Whether batches cut from tensors on ``data`` go through pinned memory to ``device``.

    Only CPU batches bound for a GPU do. Compared by type, not by device: ``cuda`` and
    ``cuda:0`` are the same GPU, and pinning a tensor already on it is an error.
    """
    return data.type == "cpu" and device.type == "cuda"


def on_device(
    batches: Iterable[tuple[torch.Tensor, ...]], device: torch.device
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Each batch on ``device``: a no-op for tensors already there, else a non-blocking copy."""
    for batch in batches:
        yield tuple(t.to(device, non_blocking=True) for t in batch)
