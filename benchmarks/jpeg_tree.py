"""Write an ImageNet-like tree of JPEG files made from the real Fashion-MNIST.

    .venv/bin/python benchmarks/jpeg_tree.py --out /tmp/jpeg-tree --train-per-class 300 --val-per-class 50

To a JPEG decoder the files look like ImageNet's: about 400x350 px (each image's size varies
by up to 10%), RGB, quality 90, 4:2:0, with the per-pixel detail of a photo, so that file
sizes and decode costs are those of natural photos rather than of flat synthetic images.
Each image is a Fashion-MNIST garment (train images for train/, test images for val/),
upscaled, coloured, laid on a smooth coloured background and given texture at every scale.

    root/train/<wnid>/<wnid>_<i>.JPEG
    root/val/<wnid>/ILSVRC2012_val_<j>.JPEG       (or, with --flat-val, the ILSVRC layout:
    root/val/ILSVRC2012_val_<j>.JPEG + root/val/val_labels.txt, lines "<file> <wnid>")

Class folders are named like wnids: n00000000, n00000001, ... train/ also holds one CMYK
JPEG (ImageNet's train set has some) and one truncated JPEG (a real file cut to half its
bytes), in place of the last image of the first and of the second class; their paths are
printed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

TEXTURE_CELLS = (48, 16, 6, 2)  # px per random value of each octave of luma texture, coarse to fine
TEXTURE_STD = 10.0  # of each octave and of the per-pixel grain, on average: sets the file size


@dataclass
class JpegTree:
    root: Path
    train_files: int
    val_files: int
    mean_bytes: float  # of the normal files (not the truncated one)
    cmyk: Path
    truncated: Path


def wnid(c: int) -> str:
    return f"n{c:08d}"


def smooth_field(rng: np.random.Generator, w: int, h: int, cell: int, channels: int = 3) -> np.ndarray:
    """Random values every ``cell`` px, interpolated: float32 (h, w, channels), 0 to 255."""
    grid = rng.integers(0, 256, (max(2, h // cell + 2), max(2, w // cell + 2), channels), dtype=np.uint8)
    field = np.asarray(Image.fromarray(grid if channels > 1 else grid[..., 0]).resize((w, h), Image.BICUBIC), np.float32)
    return field.reshape(h, w, channels)


def render(garment: np.ndarray, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A 28x28 uint8 garment as a w x h RGB photo-like image."""
    shape = np.asarray(Image.fromarray(garment).resize((w, h), Image.BICUBIC), np.float32)[..., None] / 255
    alpha = np.clip(shape * 4, 0, 1)  # the garment's silhouette, its inside shading kept in `shape`
    fg = rng.uniform(40, 235, 3).astype(np.float32) * (0.45 + 0.55 * shape)
    bg = 0.5 * smooth_field(rng, w, h, max(w, h) // 2) + 0.5 * rng.uniform(0, 255, 3).astype(np.float32)
    img = bg * (1 - alpha) + fg * alpha + 0.15 * (smooth_field(rng, w, h, 24) - 127.5)  # chroma detail
    # Natural images have about equal variance in every octave of spatial frequency; most of it in luma.
    luma = sum(smooth_field(rng, w, h, cell, channels=1) for cell in TEXTURE_CELLS) - 127.5 * len(TEXTURE_CELLS)
    std = TEXTURE_STD * rng.uniform(0.4, 1.6)  # some photos are smoother than others
    luma *= std / 74  # uniform 0..255 has std ~74
    luma += rng.standard_normal((h, w, 1), dtype=np.float32) * std  # per-pixel grain
    return Image.fromarray(np.clip(img + luma, 0, 255).astype(np.uint8))


def write_one(task: tuple) -> tuple[str, int]:
    """Render, encode and write one file; returns (path, bytes written)."""
    path, garment, seed, width, height, quality, kind = task
    rng = np.random.default_rng(seed)
    w = int(rng.integers(width * 9 // 10, width * 11 // 10 + 1))
    h = int(rng.integers(height * 9 // 10, height * 11 // 10 + 1))
    img = render(garment, w, h, rng)
    buf = BytesIO()
    (img.convert("CMYK") if kind == "cmyk" else img).save(buf, "JPEG", quality=quality)
    data = buf.getvalue()
    if kind == "truncated":
        data = data[: len(data) // 2]
    Path(path).write_bytes(data)
    return path, len(data)


def pick(labels: np.ndarray, label: int, n: int, offset: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices of images with ``label``, in a seeded order, starting at ``offset`` (wrapping)."""
    idx = rng.permutation(np.flatnonzero(labels == label))
    return idx[(offset + np.arange(n)) % len(idx)]


def write_jpeg_tree(
    root: str | Path,
    *,
    classes: int = 10,
    train_per_class: int = 300,
    val_per_class: int = 50,
    width: int = 400,
    height: int = 350,
    quality: int = 90,
    seed: int = 0,
    flat_val: bool = False,
    processes: int | None = None,
) -> JpegTree:
    """Write the tree under ``root`` (see the module docstring) with one process per core."""
    from alexnet.data import load_fashion_mnist

    if classes < 2 or train_per_class < 1 or val_per_class < 0:
        raise ValueError("need at least 2 classes and 1 training image per class")
    root = Path(root)
    data = load_fashion_mnist(None)
    rng = np.random.default_rng(seed)
    train_x, train_y = data.train_images[:, 0].numpy(), data.train_labels.numpy()
    val_x, val_y = data.val_images[:, 0].numpy(), data.val_labels.numpy()
    n_labels = len(data.class_names)

    tasks, odd = [], {(0, train_per_class - 1): "cmyk", (1, train_per_class - 1): "truncated"}
    for c in range(classes):  # classes beyond the 10 reuse a label with other images
        label, offset = c % n_labels, (c // n_labels) * train_per_class
        (root / "train" / wnid(c)).mkdir(parents=True, exist_ok=True)
        for i, k in enumerate(pick(train_y, label, train_per_class, offset, rng)):
            tasks.append((str(root / "train" / wnid(c) / f"{wnid(c)}_{i}.JPEG"), train_x[k], odd.get((c, i), "")))
    val = [(c, k) for c in range(classes)
           for k in pick(val_y, c % n_labels, val_per_class, (c // n_labels) * val_per_class, rng)]  # fmt: skip
    val = [val[i] for i in rng.permutation(len(val))]  # ILSVRC numbers its validation images in no class order
    (root / "val").mkdir(parents=True, exist_ok=True)
    labels = []
    for j, (c, k) in enumerate(val, start=1):
        name = f"ILSVRC2012_val_{j:08d}.JPEG"
        folder = root / "val" if flat_val else root / "val" / wnid(c)
        folder.mkdir(exist_ok=True)
        tasks.append((str(folder / name), val_x[k], ""))
        labels.append(f"{name} {wnid(c)}\n")
    if flat_val:
        (root / "val" / "val_labels.txt").write_text("".join(labels))

    jobs = [(path, garment, (seed, n), width, height, quality, kind) for n, (path, garment, kind) in enumerate(tasks)]
    with multiprocessing.Pool(processes or os.cpu_count()) as pool:
        written = dict(pool.imap_unordered(write_one, jobs, chunksize=16))
    special = {kind: Path(path) for path, _, kind in tasks if kind}
    normal = [n for path, n in written.items() if Path(path) != special["truncated"]]
    return JpegTree(root, classes * train_per_class, len(val), statistics.fmean(normal), special["cmyk"], special["truncated"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/jpeg-tree")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--width", type=int, default=400)
    p.add_argument("--height", type=int, default=350)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flat-val", action="store_true", help="val/ as the ILSVRC files + val_labels.txt")
    p.add_argument("--processes", type=int, default=None, help="default: one per core")
    args = p.parse_args(argv)
    start = time.perf_counter()
    tree = write_jpeg_tree(args.out, classes=args.classes, train_per_class=args.train_per_class,
                           val_per_class=args.val_per_class, width=args.width, height=args.height,
                           quality=args.quality, seed=args.seed, flat_val=args.flat_val,
                           processes=args.processes)  # fmt: skip
    print(f"wrote {tree.root}: {tree.train_files:,} train files ({args.classes} classes x {args.train_per_class}), "
          f"{tree.val_files:,} val files ({'flat, val_labels.txt' if args.flat_val else 'in class folders'}), "
          f"~{args.width}x{args.height} px, quality {args.quality}, mean {tree.mean_bytes / 1000:.1f} KB, "
          f"in {time.perf_counter() - start:.1f} s")  # fmt: skip
    print(f"CMYK:      {tree.cmyk}")
    print(f"truncated: {tree.truncated} ({tree.truncated.stat().st_size:,} bytes, half of the file)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
