"""Writers for tiny datasets in every on-disk format the data module reads.

They are written here from the format descriptions, not with the package's own code,
so that a reader bug cannot be cancelled out by the same bug in a writer.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def idx_bytes(array: np.ndarray) -> bytes:
    """uint8 array -> IDX: magic 00 00 08 <ndim>, big-endian uint32 dims, the bytes."""
    assert array.dtype == np.uint8
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_fashion_mnist(
    directory: Path, *, n_train: int = 40, n_val: int = 20, gz: bool = True, seed: int = 0, size: int = 28
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Four IDX files in ``directory``; returns {split: (images (N, size, size), labels (N,))}."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("val", n_val)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        for stem, array in zip(FASHION_FILES[split], (images, labels)):
            data = idx_bytes(array)
            if gz:
                (directory / (stem + ".gz")).write_bytes(gzip.compress(data))
            else:
                (directory / stem).write_bytes(data)
        out[split] = (images, labels)
    return out


def write_bar_fashion_mnist(
    directory: Path, *, n_train: int = 160, n_val: int = 40, seed: int = 0, val_copies: dict[int, int] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A learnable 10-class toy set in the real Fashion-MNIST file format (gzipped IDX).

    Image i has label i % 10, dim noise and a bright bar at rows 2c+4..2c+6 for its class c.
    ``val_copies`` {val index: train index} makes those validation images exact copies (image
    and label) of training ones, for tests that look an image up among the training set.
    Returns {split: (images (N, 28, 28), labels (N,))}.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("val", n_val)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, size=(n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 4 : 2 * c + 7, 4:24] = 250
        images, labels = images.astype(np.uint8), labels.astype(np.uint8)
        if split == "val":
            for v, t in (val_copies or {}).items():
                images[v], labels[v] = out["train"][0][t], out["train"][1][t]
        for stem, array in zip(FASHION_FILES[split], (images, labels)):
            (directory / (stem + ".gz")).write_bytes(gzip.compress(idx_bytes(array)))
        out[split] = (images, labels)
    return out


def cifar_batch(images: np.ndarray, labels: np.ndarray, name: str) -> dict:
    """The dict of one CIFAR batch: images (n, 32, 32, 3) uint8 -> 'data' rows R..G..B.."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    labels = [int(v) for v in labels]
    return {"batch_label": name, "labels": labels, "data": np.ascontiguousarray(data), "filenames": []}


def write_cifar10(directory: Path, *, per_batch: int = 6, n_val: int = 10, seed: int = 0) -> dict:
    """``directory``/data_batch_1..5, test_batch, batches.meta; returns {split: (images HWC, labels)}."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch)
        (directory / f"data_batch_{i}").write_bytes(pickle.dumps(cifar_batch(x, y, f"batch {i}")))
        train_x.append(x)
        train_y.append(y)
    vx = rng.integers(0, 256, (n_val, 32, 32, 3), dtype=np.uint8)
    vy = rng.integers(0, 10, n_val)
    (directory / "test_batch").write_bytes(pickle.dumps(cifar_batch(vx, vy, "test")))
    meta = {"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta))
    return {"train": (np.concatenate(train_x), np.concatenate(train_y)), "val": (vx, vy)}


def save_image(path: Path, array: np.ndarray) -> Path:
    """(H, W) grey or (H, W, 3) RGB uint8 array -> JPEG or PNG by the file's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")
    image.save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else image.save(path)
    return path


def random_image(rng: np.random.Generator, grey: bool, h: int = 40, w: int = 52) -> np.ndarray:
    shape = (h, w) if grey else (h, w, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def write_image_tree(
    root: Path, classes: dict[str, int], *, seed: int = 0, corrupt: str | None = None
) -> list[Path]:
    """``root``/<class>/img_<k>.{jpg,png}: alternating JPEG and PNG, grey and RGB, odd sizes.

    ``corrupt`` names a class that gets one extra file ``broken.jpg`` that is not an image.
    Returns every file written, corrupt one last.
    """
    rng = np.random.default_rng(seed)
    written = []
    for name, count in classes.items():
        for k in range(count):
            suffix = ".jpg" if k % 2 == 0 else ".png"
            grey = k % 3 == 1
            h, w = int(rng.integers(30, 60)), int(rng.integers(30, 60))
            written.append(save_image(root / name / f"img_{k}{suffix}", random_image(rng, grey, h, w)))
    if corrupt is not None:
        bad = root / corrupt / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff this is not really a JPEG" * 3)
        written.append(bad)
    return written


def write_flat_val(val_dir: Path, labels: list[str], *, seed: int = 1) -> list[str]:
    """ILSVRC-style flat val: ILSVRC2012_val_%08d.JPEG files; returns their names, sorted."""
    rng = np.random.default_rng(seed)
    names = []
    for i, _ in enumerate(labels, start=1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        save_image(val_dir / name, random_image(rng, grey=i % 2 == 0))
        names.append(name)
    return names
