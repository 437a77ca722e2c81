"""The order of the training examples: batches of indices per epoch, resumable mid-epoch, sharded
over ranks."""

from __future__ import annotations

import math

import torch


class _WithIndices(torch.utils.data.Dataset):
    """``dataset[batch]`` plus the batch's indices, so that a batch can be keyed per example."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        x, y = self.dataset[index]
        return x, y, torch.as_tensor(index, dtype=torch.int64)


class _EpochBatches(torch.utils.data.Sampler):
    """Batches of indices of one epoch, from a given batch on (to resume mid-epoch).

    The order comes from a :class:`~torch.utils.data.distributed.DistributedSampler`: a
    permutation drawn from a generator seeded with ``seed + epoch``, so ``(seed, epoch,
    position)`` is the whole state of the data order, and each rank reads its own shard.
    """

    def __init__(self, dataset, batch_size: int, rank: int, world_size: int, seed: int):
        self.sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.batch_size = batch_size
        self.start = 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.start = start

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self):
        order = list(self.sampler)
        for b in range(self.start, self.batches_per_epoch):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]
