"""Batches from a prepared image store (image_store.py), augmented on the training device.

A batch is a copy of B pre-resized uint8 images out of the memory-mapped shards (in a
background thread, one batch ahead, into pinned memory on CUDA); everything else runs on
the whole batch on the device, as for the in-memory datasets:

- the paper's crop (Krizhevsky et al. 2012, section 4.1): a random S x S patch of the
  256 x 256 image (224 or 227 px), and a horizontal flip;
- or the random-resized crop (Szegedy et al. 2015; torchvision's RandomResizedCrop): a box
  of U(scale_min, 1) of the area and log-uniform aspect ratio in [3/4, 4/3], resampled to
  S x S bilinearly (grid_sample; at most a 1.14x shrink from a 256 image, so no antialias);
- then PCA colour noise, channel conversion and normalisation (BatchTrainTransform).

Evaluation resizes the 256 image to the preprocessing spec's resize and takes the centre
crop, or the paper's ten crops (the four corners and the centre, and their mirrors).
"""

from __future__ import annotations

import math
import queue
import threading
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AlexNetError
from .batch_transforms import BatchEvalTransform, BatchTrainTransform, resize, to_device
from .image_store import StoreSplit
from .imagefolder import RRC_RATIO
from .sampling import EpochLoader, EpochSampler, mix_seed

PREFETCH = 2  # batches gathered ahead of the one the model is on
# Each rank reads its own shards only where its pool holds at least this share of an even
# split: every rank takes as many images as the smallest pool has, so uneven pools (2 shards
# of 1024 and 276 images on 2 ranks) would leave most images out of every epoch.
EVEN_POOLS = 0.9


def gather(split: StoreSplit, index: np.ndarray, pin: bool = False) -> torch.Tensor:
    """uint8 (B, 3, S, S): the images at ``index`` (positions in the split), copied out of the shards."""
    first = split.images[0]
    out = torch.empty((len(index), *first.shape[1:]), dtype=torch.uint8, pin_memory=pin)
    view = out.numpy()
    shards = split.shard_of(index)
    for j, (s, i) in enumerate(zip(shards.tolist(), index.tolist())):
        view[j] = split.images[s][i - split.offsets[s]]
    return out


# ---------------------------------------------------------------- geometry on the device


def crop_at(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """The size x size patch at (top[i], left[i]) of each (B, C, H, W) sample, as one gather."""
    b, c = x.shape[:2]
    dev = x.device
    top, left = to_device(top, dev), to_device(left, dev)
    rows = top[:, None] + torch.arange(size, device=dev)  # (B, size)
    cols = left[:, None] + torch.arange(size, device=dev)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return x[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, size, size)


def random_resized_boxes(
    b: int, h: int, w: int, scale: tuple[float, float], gen: torch.Generator, tries: int = 10
) -> torch.Tensor:
    """(B, 4) float64 boxes (top, left, height, width) drawn as torchvision's RandomResizedCrop
    draws them: ``tries`` draws of area and log-ratio, the first that fits; else the whole
    image trimmed to the nearest allowed ratio."""
    area = h * w
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    u = torch.rand(4, b, tries, generator=gen, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    bw = torch.sqrt(target * aspect).round()
    bh = torch.sqrt(target / aspect).round()
    fits = (bw > 0) & (bw <= w) & (bh > 0) & (bh <= h)
    first = torch.argmax(fits.to(torch.int8), dim=1)  # the first try that fits (0 if none did)
    pick = lambda t: t.gather(1, first[:, None])[:, 0]  # noqa: E731
    ok = fits.any(1)
    ratio = w / h
    fw = float(w) if ratio <= RRC_RATIO[1] else round(h * RRC_RATIO[1])
    fh = float(h) if ratio >= RRC_RATIO[0] else round(w / RRC_RATIO[0])
    bw = torch.where(ok, pick(bw), torch.tensor(float(fw), dtype=torch.float64))
    bh = torch.where(ok, pick(bh), torch.tensor(float(fh), dtype=torch.float64))
    top = torch.where(ok, torch.floor(pick(u[2]) * (h - bh + 1)), torch.floor((h - bh) / 2))
    left = torch.where(ok, torch.floor(pick(u[3]) * (w - bw + 1)), torch.floor((w - bw) / 2))
    return torch.stack([top, left, bh, bw], 1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each float (B, C, H, W) sample's box (top, left, height, width; pixel edges) resampled
    to size x size, bilinear."""
    b, _, h, w = x.shape
    top, left, bh, bw = boxes.unbind(1)
    # grid_sample's normalised coordinates (align_corners=False): -1 and 1 are the image's outer edges.
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = bw / w
    theta[:, 0, 2] = (2 * left + bw) / w - 1
    theta[:, 1, 1] = bh / h
    theta[:, 1, 2] = (2 * top + bh) / h - 1
    grid = F.affine_grid(to_device(theta, x.device, x.dtype), [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def square_ten_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, R, R) -> (B, 10, C, size, size): the four corner patches and the centre one, and
    their mirrors (the paper's test, section 4.1)."""
    r = x.shape[-1]
    far = r - size
    top, left = (x.shape[-2] - size) // 2, (r - size) // 2
    boxes = [(0, 0), (0, far), (far, 0), (far, far), (top, left)]
    crops = torch.stack([x[:, :, t : t + size, l : l + size] for t, l in boxes], 1)
    return torch.cat([crops, crops.flip(-1)], 1)


class StoreTrainTransform:
    """uint8 (B, 3, S0, S0) store images -> float32 (B, in_channels, S, S), augmented.

    The random draws come from the CPU generator in one order on every device (flips, crop
    boxes, then colour noise), so a seed gives the same crops, flips and noise on any device.
    On the CPU the crops are cut and resized per sample on uint8 (memory copies and PyTorch's
    vectorised, antialiased uint8 resize); on a GPU as one batched gather or grid_sample (float,
    not antialiased), so random-resized pixels differ slightly between the two (a fraction of a
    level on average, more at sharp edges); the paper's crop is the same pixels on both.
    """

    def __init__(self, *, crop: str | None, image_size: int, scale_min: float, flip: bool, eval_resize: int,
                 in_channels: int, mean=None, std=None, rotate: float = 0.0, translate: float = 0.0,
                 pca_color: float = 0.0, eigval=None, eigvec=None):  # fmt: skip
        self.crop, self.size, self.scale = crop, image_size, (scale_min, 1.0)
        self.flip, self.eval_resize, self.pca_color = flip, eval_resize, pca_color
        # Three channels and no affine: the colour steps fold into one multiply-add per pixel.
        self.fused = in_channels == 3 and rotate <= 0 and translate <= 0
        self.rest = BatchTrainTransform(image_size=image_size, in_channels=in_channels, mean=mean, std=std,
                                        rotate=rotate, translate=translate, pca_color=0.0 if self.fused else pca_color,
                                        eigval=eigval, eigvec=eigvec)  # fmt: skip
        f64 = lambda v: None if v is None else torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
        self.mean, self.std = f64(mean), f64(std)
        self.eigval, self.eigvec = f64(eigval), f64(eigvec)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        flips = torch.rand(b, generator=gen) < 0.5 if self.flip else torch.zeros(b, dtype=torch.bool)
        if self.crop == "paper":
            boxes = torch.stack([torch.randint(0, h - self.size + 1, (b,), generator=gen),
                                 torch.randint(0, w - self.size + 1, (b,), generator=gen)], 1)  # fmt: skip
            boxes = torch.cat([boxes, torch.full((b, 2), self.size)], 1).to(torch.float64)
        elif self.crop == "random-resized":
            boxes = random_resized_boxes(b, h, w, self.scale, gen)
        else:  # no crop: the centre crop evaluation sees, from the eval resize
            if self.eval_resize != w:
                x = resize(x.to(torch.float32), self.eval_resize).round_().clamp_(0, 255).to(torch.uint8)
            top = (self.eval_resize - self.size) // 2
            boxes = torch.tensor([[top, top, self.size, self.size]] * b, dtype=torch.float64)
        x = self._crop(x, boxes, flips)
        if not self.fused:
            return self.rest(x, gen)
        return self._colour(x, gen)

    def _crop(self, x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        s = self.size
        if x.device.type == "cpu":
            out = torch.empty((x.shape[0], x.shape[1], s, s), dtype=x.dtype)
            for i, ((top, left, bh, bw), flip) in enumerate(zip(boxes.int().tolist(), flips.tolist())):
                patch = x[i : i + 1, :, top : top + bh, left : left + bw]
                if (bh, bw) != (s, s):
                    patch = F.interpolate(patch, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
                out[i] = patch[0].flip(-1) if flip else patch[0]
            return out
        if self.crop != "random-resized":  # every box already the output's size: a gather
            x = crop_at(x, boxes[:, 0].long(), boxes[:, 1].long(), s)
        else:
            x = resized_crop(x.to(torch.float32), boxes, s)
        return torch.where(to_device(flips, x.device)[:, None, None, None], x.flip(-1), x)

    def _colour(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """uint8 or 0..255 float -> ((x / 255 + pca offset) - mean) / std, as one multiply-add."""
        b = x.shape[0]
        offset = torch.zeros(b, 3, dtype=torch.float64)
        if self.pca_color > 0:
            alpha = torch.randn(b, self.eigval.shape[0], generator=gen, dtype=torch.float64) * self.pca_color
            offset = (alpha * self.eigval) @ self.eigvec.T  # (B, 3)
        mean = self.mean if self.mean is not None else torch.zeros(3, dtype=torch.float64)
        std = self.std if self.std is not None else torch.ones(3, dtype=torch.float64)
        scale = to_device((1 / (255 * std)).reshape(1, 3, 1, 1), x.device, torch.float32)
        shift = to_device(((offset - mean) / std).reshape(b, 3, 1, 1), x.device, torch.float32)
        return x.to(torch.float32).mul_(scale).add_(shift)


class StoreEvalTransform:
    """uint8 (B, 3, S0, S0) -> float32 (B, C, S, S) centre crops of the ``resize`` image, or
    (B, 10, C, S, S) with ``ten_crop``."""

    def __init__(self, *, image_size: int, resize_to: int, ten_crop: bool, **colour):
        self.size, self.resize_to, self.ten_crop = image_size, resize_to, ten_crop
        self.rest = BatchEvalTransform(image_size=image_size, resize_to=resize_to, **colour)

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if not self.ten_crop:
            return self.rest(x)
        x = resize(x.to(torch.float32), self.resize_to)  # 0..255 floats; the rest divides
        return self.rest(square_ten_crop(x, self.size))


# ---------------------------------------------------------------- sampling and the loader


class ShardSampler(EpochSampler):
    """Training under DDP with at least as many shards as ranks: rank r reads only shards r,
    r + world_size, ... (each node's page cache holds its own); each epoch it shuffles its
    pool and every rank takes as many samples as the smallest pool has (StoreLoader uses it
    only where the pools are near even, ``EVEN_POOLS``)."""

    def __init__(self, shard_of: np.ndarray, batch_size: int, *, seed: int, rank: int, world_size: int):
        super().__init__(len(shard_of), batch_size, train=True, seed=seed, rank=rank, world_size=world_size)
        owner = shard_of % world_size
        self.pool = torch.from_numpy(np.flatnonzero(owner == rank))
        self.per_rank = int(np.bincount(owner, minlength=world_size).min())
        if self.per_rank == 0:
            raise AlexNetError(f"rank {rank} of {world_size} would read no images from the store's shards")
        self.drop_last = self.per_rank >= batch_size

    def indices(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, self.rank))
        return self.pool[torch.randperm(len(self.pool), generator=g)[: self.per_rank]]


class StoreLoader(EpochLoader):
    """(images, labels) on the device from ``split`` at ``positions``; the loader protocol of
    ``alexnet.data`` (``len``, ``num_samples``, ``set_epoch``, ``skipped``: always 0 here,
    unreadable files were counted by prepare)."""

    def __init__(
        self,
        split: StoreSplit,
        positions: np.ndarray,
        *,
        batch_size: int,
        train: bool,
        transform,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.split, self.positions = split, np.asarray(positions, dtype=np.int64)
        if len(self.positions) == 0:
            raise AlexNetError("no images to read from the store")
        self.labels = torch.from_numpy(split.labels[self.positions])
        self.transform, self.device = transform, torch.device(device)
        self.seed, self.rank = seed, rank
        shard_of = split.shard_of(self.positions)
        pools = np.bincount(shard_of % world_size, minlength=world_size)
        if train and world_size > 1 and pools.min() >= EVEN_POOLS * len(shard_of) / world_size:
            self.sampler = ShardSampler(shard_of, batch_size, seed=seed, rank=rank, world_size=world_size)
        else:
            self.sampler = EpochSampler(len(self.positions), batch_size, train=train, seed=seed, rank=rank,
                                        world_size=world_size)  # fmt: skip
        self.epoch = self.start_batch = 0
        self.skipped = 0

    def _batches(self, stop: threading.Event, out: queue.Queue) -> None:
        pin = self.device.type == "cuda"
        try:
            for idx in self.sampler.batches(self.epoch)[self.start_batch :]:
                images = gather(self.split, self.positions[idx.numpy()], pin=pin)
                labels = self.labels[idx].pin_memory() if pin else self.labels[idx]  # pageable: the copy would wait
                while not stop.is_set():
                    try:
                        out.put((images, labels), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            out.put(e)
            return
        out.put(None)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        stop, ready = threading.Event(), queue.Queue(maxsize=PREFETCH)
        worker = threading.Thread(target=self._batches, args=(stop, ready), daemon=True)
        worker.start()
        try:
            i = self.start_batch
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                images, labels = item
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, i))
                yield self.transform(images, gen), labels
                i += 1
        finally:
            stop.set()
            worker.join()
