"""One split of a dataset in stored order through the evaluation transform, image by image.

The loaders of ``build_loaders`` shuffle and augment the train split and lose track of
which image a sample was. Feature extraction and pictures need the opposite: every image
of a split (train included) exactly as evaluation would see it, with its index, and the
original picture to show. ``open_eval_split(cfg, split, spec)`` gives that for every
dataset; ``spec`` is a checkpoint's preprocess spec, so the images reach the model the
way they did when it was evaluated.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import AlexNetError
from .batch_transforms import BatchEvalTransform
from .config import DataConfig
from .imagefolder import ImageList, decode_rgb, eval_geometry, locate_imagefolder, scan_train, scan_val
from .loaders import load_small_dataset

SPLITS = ("train", "val")


class EvalSplit:
    """The images of one split: ``len``, ``labels``, ``batches`` for the model, ``picture`` to show."""

    name: str  # "train" or "val"
    source: str  # where the images come from, for cache keys and messages
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(indices (B,), images float (B, C, S, S)) in stored order; unreadable files are left out."""
        raise NotImplementedError

    def images(self, indices: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """The model's input for the given images: float (B, C, S, S)."""
        raise NotImplementedError

    def picture(self, index: int) -> torch.Tensor:
        """uint8 (C, H, W): the image to draw (as stored, or its evaluation crop for files)."""
        raise NotImplementedError

    def check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise AlexNetError(
                f"index {index} is out of range: the {self.name} split has {len(self)} images (0 to {len(self) - 1})"
            )


class TensorSplit(EvalSplit):
    """An in-memory split (Fashion-MNIST, CIFAR-10, synthetic): one uint8 tensor."""

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor, transform: BatchEvalTransform, source: str):
        self.name, self.source = name, source
        self.stored, self.labels = images, labels.to(torch.int64)
        self.transform = transform

    def batches(self, batch_size, device="cpu"):
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield torch.arange(start, stop), self.transform(self.stored[start:stop].to(device))

    def images(self, indices, device="cpu"):
        for i in indices:
            self.check_index(i)
        return self.transform(self.stored[torch.as_tensor(indices, dtype=torch.int64)].to(device))

    def picture(self, index):
        self.check_index(index)
        return self.stored[index]


class _Decoded(Dataset):
    """Index -> (index, uint8 evaluation crop), or (index, None) for a file that cannot be read."""

    def __init__(self, files: ImageList, resize: int, size: int):
        self.files, self.resize, self.size = files, resize, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            return index, eval_geometry(decode_rgb(self.files.paths[index]), self.resize, self.size)
        except (OSError, RuntimeError, ValueError):
            return index, None


def _collate(items):
    kept = [(i, image) for i, image in items if image is not None]
    if not kept:
        return torch.zeros(0, dtype=torch.int64), None
    return torch.tensor([i for i, _ in kept]), torch.stack([image for _, image in kept])


class FolderSplit(EvalSplit):
    """An image-folder split: files decoded as the validation workers do (RGB, shorter side to
    ``resize``, centre crop), then the same on-device transform."""

    def __init__(self, name: str, files: ImageList, spec: dict, transform: BatchEvalTransform, workers: int, source: str):
        self.name, self.source = name, source
        self.files, self.workers = files, workers
        self.labels = torch.tensor(files.targets, dtype=torch.int64)
        self.dataset = _Decoded(files, int(spec["resize"]), int(spec["image_size"]))
        self.transform = transform

    def batches(self, batch_size, device="cpu"):
        loader = DataLoader(self.dataset, batch_size=batch_size, num_workers=self.workers, collate_fn=_collate)
        for indices, images in loader:
            if images is not None:
                yield indices, self.transform(images.to(device))

    def images(self, indices, device="cpu"):
        return self.transform(torch.stack([self.picture(i) for i in indices]).to(device))

    def picture(self, index):
        self.check_index(index)
        _, image = self.dataset[index]
        if image is None:
            raise AlexNetError(f"cannot read image {index} of the {self.name} split: {self.files.paths[index]}")
        return image


def open_eval_split(cfg: DataConfig, split: str, spec: dict) -> EvalSplit:
    """``split`` ("train" or "val") of the dataset ``cfg`` names, after ``--subset``, through the
    evaluation transform that the preprocess ``spec`` describes."""
    if split not in SPLITS:
        raise AlexNetError(f"unknown split {split!r}; choose train or val")
    mean, std = spec["mean"], spec["std"]
    size, channels = int(spec["image_size"]), int(spec["in_channels"])
    if cfg.dataset == "imagefolder":
        train_dir, val_dir = locate_imagefolder(cfg.data_dir, cfg.train_dir, cfg.val_dir)
        classes, files = scan_train(train_dir)
        if split == "val":
            files = scan_val(val_dir, classes, train_dir, cfg.val_labels)
        files = files.head(cfg.subset)
        # The workers already cut the S x S crop; the transform converts and normalises.
        transform = BatchEvalTransform(image_size=size, in_channels=channels, mean=mean, std=std)
        where = train_dir if split == "train" else val_dir
        return FolderSplit(split, files, spec, transform, cfg.workers, _describe(where, cfg.subset))
    data = load_small_dataset(cfg)
    images, labels = (data.train_images, data.train_labels) if split == "train" else (data.val_images, data.val_labels)
    transform = BatchEvalTransform(image_size=size, in_channels=channels, mean=mean, std=std, resize_to=int(spec["resize"]))
    return TensorSplit(split, images, labels, transform, _describe(f"{cfg.dataset} {split} from {data.source}", cfg.subset))


def _describe(where, subset: int | None) -> str:
    return f"{where}" + (f" (first {subset})" if subset else "")
