"""CIFAR-10 from the standard python-pickle batches, unpickled with an allow-list.

The layout (as distributed, and as torchvision downloads it) is ``cifar-10-batches-py/``
with ``data_batch_1`` .. ``data_batch_5`` (train), ``test_batch`` (the val split) and
``batches.meta``. Each batch is a pickled dict: ``data`` a uint8 (n, 3072) array, rows
of 1024 red, 1024 green, 1024 blue values of a 32x32 image; ``labels`` n ints in 0-9.
``batches.meta`` holds ``label_names``. Accepted under each search root:
``<root>/cifar-10-batches-py/`` or the files directly in ``<root>``.

Pickle can run code; the unpickler here only builds numpy arrays, dtypes and plain
containers, so a tampered batch is an error rather than an exploit.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import AlexNetError
from .in_memory import SmallDataset
from .locate import locate_or_download, one_line

# Per-channel pixel mean and std of the 50,000 training images in [0, 1] units: the
# standard published figures (the std over all training pixels; the (0.2023, 0.1994,
# 0.2010) also seen in the wild is a mean of per-image stds).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

BASE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
VAL_FILES = ("test_batch",)
META_FILE = "batches.meta"
IMAGE_SIZE = 32
NUM_CLASSES = 10

HOW_TO_GET = (
    "Unpack cifar-10-python.tar.gz (www.cs.toronto.edu/~kriz/cifar.html) so that "
    f"{BASE_FOLDER}/ is in one of those directories."
)

_ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain Python containers; refuses every other global."""

    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core"):  # pickles written by numpy 1.x
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def unpickle(path: Path) -> object:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:  # a corrupt pickle can fail in many ways; all mean "bad file"
        raise AlexNetError(f"{path} is not a readable CIFAR-10 pickle ({one_line(e)})") from None


def find_files(root: Path) -> Path | None:
    for directory in (root / BASE_FOLDER, root):
        if all((directory / name).is_file() for name in (*TRAIN_FILES, *VAL_FILES, META_FILE)):
            return directory.resolve()
    return None


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file as uint8 (n, 3, 32, 32) images and int64 (n,) labels, checked."""
    entry = unpickle(path)
    if not isinstance(entry, dict) or "data" not in entry or "labels" not in entry:
        raise AlexNetError(f"{path} is not a CIFAR-10 batch (no 'data' and 'labels')")
    data, labels = entry["data"], np.asarray(entry["labels"])
    per_image = 3 * IMAGE_SIZE * IMAGE_SIZE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != per_image:
        shape = getattr(data, "shape", None)
        raise AlexNetError(f"{path}: 'data' must be a uint8 array of shape (n, {per_image}), found {shape}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise AlexNetError(f"{path} has {len(data)} images but {labels.size} integer labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise AlexNetError(f"{path} has labels outside 0-9 ({labels.min()}..{labels.max()})")
    images = torch.from_numpy(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def read_split(directory: Path, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [read_batch(directory / name) for name in names]
    images = torch.cat([p[0] for p in parts])
    if len(images) == 0:
        raise AlexNetError(f"the CIFAR-10 batches {', '.join(names)} in {directory} hold no images")
    return images, torch.cat([p[1] for p in parts])


def read_class_names(directory: Path) -> list[str]:
    meta = unpickle(directory / META_FILE)
    names = meta.get("label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != NUM_CLASSES or not all(isinstance(n, str) for n in names):
        raise AlexNetError(f"{directory / META_FILE} has no list of {NUM_CLASSES} 'label_names'")
    return names


def load_cifar10(data_dir: str | None = None, *, download: bool = True) -> SmallDataset:
    """Find (or download) and read both splits; ``test_batch`` is the ``val`` split."""
    directory, source = locate_or_download(
        "cifar10", title="CIFAR-10", data_dir=data_dir, download=download, match=find_files, how_to_get=HOW_TO_GET
    )
    train_x, train_y = read_split(directory, TRAIN_FILES)
    val_x, val_y = read_split(directory, VAL_FILES)
    return SmallDataset("cifar10", train_x, train_y, val_x, val_y, read_class_names(directory), MEAN, STD, source)
