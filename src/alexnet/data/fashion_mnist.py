"""Fashion-MNIST from its original IDX files (gzipped or not), checked before use.

Accepted layouts under each search root (locate.py): the four files directly in the
root, in ``<root>/fashion-mnist/``, or in torchvision's ``<root>/FashionMNIST/raw/``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import AlexNetError
from .idx import read_idx
from .in_memory import SmallDataset
from .locate import locate_or_download

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# Pixel mean and std of the 60,000 training images in [0, 1] units, computed from the
# original files (the real-data test recomputes them): 0.286040, 0.353024.
MEAN = (0.2860,)
STD = (0.3530,)

IMAGE_SIZE = 28
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
LAYOUTS = (".", "fashion-mnist", "FashionMNIST/raw")

HOW_TO_GET = (
    "Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz (github.com/zalandoresearch/fashion-mnist) in one of those directories, "
    "or install Debian's dataset-fashion-mnist package."
)


def _file(directory: Path, stem: str) -> Path | None:
    """The uncompressed file when present (faster to read), else the .gz one."""
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_files(root: Path) -> Path | None:
    """The directory under ``root`` that holds all four files, in one of the known layouts."""
    for layout in LAYOUTS:
        directory = root / layout
        if all(_file(directory, stem) for pair in SPLITS.values() for stem in pair):
            return directory.resolve()
    return None


def read_split(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as uint8 (N, 1, 28, 28) images and int64 (N,) labels, with every check made."""
    image_stem, label_stem = SPLITS[split]
    image_path, label_path = _file(directory, image_stem), _file(directory, label_stem)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != "uint8" or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise AlexNetError(
            f"{image_path} does not hold 28x28 uint8 images (found {images.dtype} {' x '.join(map(str, images.shape))})"
        )
    if labels.dtype != "uint8" or labels.ndim != 1:
        raise AlexNetError(f"{label_path} does not hold uint8 labels (found {labels.dtype} with {labels.ndim} dims)")
    if len(images) != len(labels):
        raise AlexNetError(f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        raise AlexNetError(f"{label_path} has label {int(labels.max())}; Fashion-MNIST labels are 0-9")
    if len(images) == 0:
        raise AlexNetError(f"{image_path} holds no images")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).to(torch.int64)


def load_fashion_mnist(data_dir: str | None = None, *, download: bool = True) -> SmallDataset:
    """Find (or download) and read both splits; the test set is the ``val`` split."""
    directory, source = locate_or_download(
        "fashion-mnist",
        title="Fashion-MNIST",
        data_dir=data_dir,
        download=download,
        match=find_files,
        how_to_get=HOW_TO_GET,
    )
    train_x, train_y = read_split(directory, "train")
    val_x, val_y = read_split(directory, "val")
    return SmallDataset("fashion-mnist", train_x, train_y, val_x, val_y, list(CLASS_NAMES), MEAN, STD, source)
