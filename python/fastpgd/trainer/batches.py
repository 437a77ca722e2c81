"""The training batches: their order (per epoch, resumable mid-epoch, sharded over ranks), where
the images live, and the augmentation drawn on the device.

Datasets are held in memory as one tensor (see :class:`~fastpgd.data.ImageDataset`). One that
fits (``DEVICE_BYTES``: every dataset fastpgd reads, CIFAR included) is copied to the device once
and each batch is one ``index_select`` there: no host work, no copy, no stall per step. A larger
one, or any run with ``num_workers > 0``, goes through a ``DataLoader`` with pinned memory and
``non_blocking`` copies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastpgd.data import ImageDataset

__all__ = [
    "CROP_PADDING",
    "DEVICE_BYTES",
    "BatchSource",
    "CropFlip",
    "EpochOrder",
    "augment_crop_flip",
]

#: Datasets whose stored images take at most this many bytes live on a CUDA device.
DEVICE_BYTES = 2 << 30
CROP_PADDING = 4


class EpochOrder(torch.utils.data.Sampler):
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

    def order(self) -> list[int]:
        """This rank's indices of the epoch, in order."""
        return list(self.sampler)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self):
        order = self.order()
        for b in range(self.start, self.batches_per_epoch):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]


class _WithIndices(torch.utils.data.Dataset):
    """``dataset[batch]`` plus the batch's indices, so that a batch can be keyed per example."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        x, y = self.dataset[index]
        return x, y, torch.as_tensor(index, dtype=torch.int64)


class BatchSource:
    """``(x, y, idx)`` batches of one epoch on ``device``: ``x`` float in [0, 1], ``y`` int64 on
    the device, ``idx`` the dataset indices as an int64 CPU tensor (for the replay memory).

    Args:
        dataset (ImageDataset): the training split.
        order (EpochOrder): which indices, in which order.
        device (torch.device): where batches are delivered.
        num_workers (int): > 0 uses a ``DataLoader`` with that many workers.
    """

    def __init__(self, dataset: ImageDataset, order: EpochOrder, device: torch.device,
                 num_workers: int = 0):  # fmt: skip
        self.dataset = dataset
        self.order = order
        self.device = device
        images = dataset.images
        # A subclass that fetches its own way (its own __getitem__) is asked for every batch.
        own_fetch = type(dataset).__getitem__ is not ImageDataset.__getitem__
        self.resident = (num_workers == 0 and not own_fetch and (
            device.type == "cpu" or images.numel() * images.element_size() <= DEVICE_BYTES
        ))  # fmt: skip
        if self.resident:
            self.images = images.to(device)
            self.labels = dataset.labels.to(device)
            self.loader = None
        else:
            self.loader = torch.utils.data.DataLoader(
                _WithIndices(dataset),
                sampler=order,
                batch_size=None,  # the sampler yields whole batches; the dataset indexes at once
                num_workers=num_workers,
                pin_memory=device.type == "cuda",
            )

    @property
    def placement(self) -> str:
        """Where the images live and how batches are made, in words (printed at start)."""
        if self.resident:
            return f"on {self.device}, batches indexed there"
        workers = f", {self.loader.num_workers} workers" if self.loader.num_workers else ""
        pinned = ", pinned, non_blocking copies" if self.device.type == "cuda" else ""
        return f"in host memory (DataLoader{workers}{pinned})"

    def epoch(self, epoch: int, start: int = 0):
        """The batches of ``epoch`` from batch ``start`` on."""
        self.order.set_epoch(epoch, start)
        if not self.resident:
            for x, y, idx in self.loader:
                yield (x.to(self.device, non_blocking=True),
                       y.to(self.device, non_blocking=True), idx)  # fmt: skip
            return
        host = torch.tensor(self.order.order(), dtype=torch.int64)
        on_device = host
        if self.device.type == "cuda":
            # One pinned, asynchronous copy of the epoch's order; batches then slice it.
            on_device = host.pin_memory().to(self.device, non_blocking=True)
        scale = self.dataset.scale
        size = self.order.batch_size
        for b in range(start, self.order.batches_per_epoch):
            rows = on_device[b * size : (b + 1) * size]
            x = self.images.index_select(0, rows).to(torch.float32)
            if scale != 1.0:
                x.div_(scale)
            yield x, self.labels.index_select(0, rows), host[b * size : (b + 1) * size]


class CropFlip:
    """The crops and flips of one batch, as index maps from the padded frame to the batch.

    Each example's image is zero-padded by ``CROP_PADDING`` on every side; example ``i`` of the
    augmented batch reads rows ``rows[i]`` and columns ``cols[i]`` of its padded image (the
    columns reversed when it is flipped). :meth:`crop` applies the map to anything laid out in
    the padded frame; :meth:`paste` writes a batch back through it. Within one example the map
    is one-to-one, so ``paste`` after ``crop`` is exact: a per-example memory kept in the
    padded frame follows each image through every crop and flip.

    Args:
        rows (Tensor[N, H]): padded-frame row of each output row.
        cols (Tensor[N, W]): padded-frame column of each output column.
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor):
        self.rows = rows
        self.cols = cols

    @staticmethod
    def draw(n: int, height: int, width: int, generator: torch.Generator) -> CropFlip:
        """Random crops and flips (probability 1/2) for ``n`` images of ``height x width``,
        drawn from ``generator`` on its device with no host work."""
        p, device = CROP_PADDING, generator.device
        # Three draws of fixed size and order: the generator's state stays a function of the step.
        dy = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=device)
        dx = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=device)
        flip = torch.rand((n, 1), generator=generator, device=device) < 0.5
        rows = dy + torch.arange(height, device=device)
        cols = dx + torch.arange(width, device=device)
        return CropFlip(rows, torch.where(flip, cols.flip(1), cols))

    @staticmethod
    def pad(x: torch.Tensor) -> torch.Tensor:
        """``x`` zero-padded into the padded frame."""
        p = CROP_PADDING
        return F.pad(x, (p, p, p, p))

    def _index(self, channels: int):
        n, h = self.rows.shape
        w = self.cols.shape[1]
        device = self.rows.device
        batch = torch.arange(n, device=device).view(n, 1, 1, 1)
        channel = torch.arange(channels, device=device).view(1, channels, 1, 1)
        return batch, channel, self.rows.view(n, 1, h, 1), self.cols.view(n, 1, 1, w)

    def crop(self, padded: torch.Tensor) -> torch.Tensor:
        """The batch view of ``padded`` (Tensor[N, C, H + 2p, W + 2p]): Tensor[N, C, H, W]."""
        return padded[self._index(padded.shape[1])]

    def paste(self, padded: torch.Tensor, values: torch.Tensor) -> None:
        """Write ``values`` (Tensor[N, C, H, W]) into ``padded`` where :meth:`crop` reads them;
        the rest of ``padded`` is left as it was."""
        padded[self._index(padded.shape[1])] = values


def augment_crop_flip(
    x: torch.Tensor, generator: torch.Generator, *, return_crop: bool = False
) -> torch.Tensor | tuple[torch.Tensor, CropFlip]:
    """Random crops of a zero-padded image and random horizontal flips, per example.

    The standard CIFAR augmentation (padding 4, crop back to the input size, flip with
    probability 1/2), as one gather on ``x``'s device with no host work.

    Args:
        x (Tensor[N, C, H, W]): the batch.
        generator (torch.Generator): on ``x``'s device; the only source of randomness.
        return_crop (bool): also return the :class:`CropFlip` drawn. Default: ``False``.

    Returns:
        Tensor[N, C, H, W]: a new tensor (and the :class:`CropFlip` with ``return_crop``).

    Examples::

        >>> x = torch.rand(2, 1, 8, 8)
        >>> out, crop = augment_crop_flip(x, torch.Generator().manual_seed(0), return_crop=True)
        >>> torch.equal(out, crop.crop(CropFlip.pad(x)))
        True
    """
    n, _, h, w = x.shape
    crop = CropFlip.draw(n, h, w, generator)
    out = crop.crop(CropFlip.pad(x))
    return (out, crop) if return_crop else out
