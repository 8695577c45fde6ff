"""The fast path for small datasets: the whole split is one uint8 tensor on the training device.

A batch is ``images.index_select(0, idx)``; augmentation and the resize to the model's
size then run on the whole batch with tensor ops on that device (batch_transforms.py).
No PIL, no worker processes, no host-to-device copy of images after the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .batch_transforms import to_device
from .sampling import EpochLoader, EpochSampler, mix_seed


@dataclass
class SmallDataset:
    """Both splits of a small dataset, as read from disk (native channels and size)."""

    name: str
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    val_images: torch.Tensor
    val_labels: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...]  # per native channel, [0, 1] units
    std: tuple[float, ...]
    source: str

    def head(self, n: int | None) -> SmallDataset:
        """The first ``n`` images of each split (all of them when n is None)."""
        if n is None:
            return self
        return SmallDataset(
            self.name,
            self.train_images[:n],
            self.train_labels[:n],
            self.val_images[:n],
            self.val_labels[:n],
            self.class_names,
            self.mean,
            self.std,
            self.source,
        )


BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class InMemoryLoader(EpochLoader):
    """Batches of (images, labels) built by indexing a device-resident uint8 tensor.

    Follows the loader protocol of ``alexnet.data``: ``len``, ``num_samples``,
    ``set_epoch``, ``skipped`` (always 0 here).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        train: bool,
        transform: BatchTransform,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.transform = transform
        self.train, self.seed, self.rank = train, seed, rank
        self.sampler = EpochSampler(
            len(images), batch_size, train=train, seed=seed, rank=rank, world_size=world_size
        )
        self.epoch = self.start_batch = 0
        self.skipped = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.sampler.batches(self.epoch)[self.start_batch :]
        if not batches:
            return
        # The epoch's indices reach the device in one copy, queued without a host sync.
        on_device = to_device(torch.cat(batches), self.device).split([len(b) for b in batches])
        for i, idx in enumerate(on_device, start=self.start_batch):
            # One generator per batch: batch i gets the same augmentation however the epoch began.
            gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, i))
            images = self.images.index_select(0, idx)  # (B, C, H, W) uint8
            yield self.transform(images, gen), self.labels.index_select(0, idx)
