"""ImageNet-style folders: ``train/<class>/*.jpg`` and ``val/<class>/*.jpg`` (or a flat val).

Decoding and the per-sample geometry (RandomResizedCrop and flip for training; resize of
the shorter side and centre crop, or ten crops, for evaluation) run in DataLoader worker
processes on uint8 tensors; batches go to the device (pinned, non-blocking on CUDA) where
channel conversion, rotation/translation, PCA colour noise and normalisation run on the
whole batch. Every image is decoded as RGB (greyscale is repeated, palettes expanded,
alpha dropped); one-channel models get the luma of it on the device.

An image that cannot be read or decoded never stops an epoch: it is dropped from its
batch with an ``UnreadableImageWarning`` naming the file, and the loader's ``skipped``
gives the count for the last completed epoch (also reported as a warning).

Flat validation layout (ILSVRC2012 as distributed): the images directly in ``val/`` and
a labels file (``--val-labels``, or found next to the images as val_labels.txt, val.txt or
LOC_val_solution.csv). Accepted formats:
- ``<file> <label>`` per line (space- or comma-separated), label a class folder name
  (``n01440764``) or a 0-based index into the sorted class folders (Caffe's val.txt);
- Kaggle's ``LOC_val_solution.csv``: header ``ImageId,PredictionString``, the first
  word of PredictionString is the class folder name;
- one class folder name per line, in the sorted order of the image file names.
File names match with or without their extension.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import AlexNetError
from .batch_transforms import center_crop_box
from .locate import find_in_roots, search_roots
from .sampling import EpochLoader, EpochSampler, mix_seed, round_robin_head, stratified_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
LABEL_FILE_NAMES = ("val_labels.txt", "val.txt", "LOC_val_solution.csv")
RRC_RATIO = (3 / 4, 4 / 3)
_MASK64 = (1 << 64) - 1


class UnreadableImageWarning(UserWarning):
    """An image file was skipped because it could not be read or decoded."""


# ---------------------------------------------------------------- finding the files


@dataclass
class ImageList:
    paths: list[str]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.paths)

    def head(self, n: int | None) -> ImageList:
        """The first ``n`` images, taken round-robin over classes so a subset keeps every class."""
        if n is None or n >= len(self):
            return self
        return self.take(round_robin_head(self.targets, n).tolist())

    def take(self, indices) -> ImageList:
        return ImageList([self.paths[i] for i in indices], [self.targets[i] for i in indices])

    def split_off(self, n: int) -> tuple[ImageList, ImageList]:
        """(the rest, ``n`` images kept apart): stratified by class, seeded (sampling.stratified_split)."""
        keep, apart = stratified_split(torch.tensor(self.targets), n)
        return self.take(keep.tolist()), self.take(apart.tolist())


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(directory: Path) -> list[str]:
    """Image files under ``directory``, recursively, in sorted order (hidden entries skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f) and not f.startswith("."))
    return found


def class_folders(directory: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def locate_imagefolder(data_dir: str | None, train_dir: str | None, val_dir: str | None) -> tuple[Path, Path]:
    """The train and val directories: --train-dir/--val-dir, else <root>/train and <root>/val."""
    if train_dir:
        train = Path(train_dir).expanduser().absolute()
        if not train.is_dir():
            raise AlexNetError(f"train directory {train} does not exist")
        val = Path(val_dir).expanduser().absolute() if val_dir else train.parent / "val"
    else:
        roots = search_roots("imagefolder", data_dir)
        found = find_in_roots(roots, lambda r: r / "train" if (r / "train").is_dir() else None)
        if found is None:
            searched = ", ".join(r.describe() for r in roots)
            raise AlexNetError(
                f"no ImageNet-style train/ folder found; searched {searched}. Give --data-dir DIR holding "
                "DIR/train/<class>/*.jpg and DIR/val/..., or --train-dir and --val-dir."
            )
        root, train = found
        val = Path(val_dir).expanduser().absolute() if val_dir else root.path / "val"
    if not val.is_dir():
        raise AlexNetError(f"validation directory {val} does not exist (give --val-dir)")
    return train, val


def scan_train(train_dir: Path) -> tuple[list[str], ImageList]:
    classes = class_folders(train_dir)
    if not classes:
        raise AlexNetError(f"{train_dir} has no class folders (expected {train_dir}/<class>/*.jpg)")
    if len(classes) == 1:
        raise AlexNetError(f"{train_dir} has one class folder ({classes[0]}); a classifier needs at least two")
    paths, targets, empty = [], [], []
    for index, name in enumerate(classes):
        files = list_images(train_dir / name)
        if not files:
            empty.append(name)
        paths.extend(files)
        targets.extend([index] * len(files))
    if empty:
        raise AlexNetError(f"class folders in {train_dir} with no JPEG or PNG images: {_names(empty)}")
    return classes, ImageList(paths, targets)


def scan_val(val_dir: Path, classes: list[str], train_dir: Path, labels_file: str | None) -> ImageList:
    folders = class_folders(val_dir)
    if folders:
        missing = [f for f in folders if f not in classes]
        if missing:
            raise AlexNetError(f"class folders in {val_dir} that are missing from {train_dir}: {_names(missing)}")
        index = {c: i for i, c in enumerate(classes)}
        paths, targets = [], []
        for name in folders:
            files = list_images(val_dir / name)
            paths.extend(files)
            targets.extend([index[name]] * len(files))
        if not paths:
            raise AlexNetError(f"the class folders in {val_dir} hold no JPEG or PNG images")
        return ImageList(paths, targets)

    files = sorted(e.name for e in os.scandir(val_dir) if e.is_file() and is_image_file(e.name))
    if not files:
        raise AlexNetError(f"{val_dir} holds neither class folders nor JPEG/PNG images")
    labels_path = _find_labels_file(val_dir, labels_file)
    targets = read_val_labels(labels_path, files, classes)
    return ImageList([str(val_dir / f) for f in files], targets)


def _find_labels_file(val_dir: Path, labels_file: str | None) -> Path:
    if labels_file:
        path = Path(labels_file).expanduser()
        if not path.is_file():
            raise AlexNetError(f"validation labels file {path} does not exist")
        return path
    for directory in (val_dir, val_dir.parent):
        for name in LABEL_FILE_NAMES:
            if (directory / name).is_file():
                return directory / name
    raise AlexNetError(
        f"{val_dir} holds images but no class folders, and no labels file was found; give --val-labels FILE "
        f"('<file> <class>' lines, or LOC_val_solution.csv)"
    )


def read_val_labels(path: Path, files: list[str], classes: list[str]) -> list[int]:
    """Targets for ``files`` (sorted names in the flat val folder) from a labels file (module doc)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AlexNetError(f"cannot read validation labels {path}: {e}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise AlexNetError(f"validation labels file {path} is empty")
    index = {c: i for i, c in enumerate(classes)}

    if lines[0].lower().startswith("imageid,"):  # Kaggle's LOC_val_solution.csv
        mapping = {}
        for ln in lines[1:]:
            image_id, _, prediction = ln.partition(",")
            words = prediction.split()
            if not words:
                raise AlexNetError(f"{path}: no class in line {ln!r}")
            mapping[image_id.strip()] = words[0]
        by_index = False
    else:
        rows = [re.split(r"[,\s]+", ln) for ln in lines]
        widths = {len(r) for r in rows}
        if widths == {1}:
            if len(rows) != len(files):
                raise AlexNetError(
                    f"{path} has one label per line but {len(rows)} lines for {len(files)} images; "
                    "use '<file> <class>' lines to label part of a folder"
                )
            if any(r[0] not in index and r[0].isdigit() for r in rows):
                raise AlexNetError(
                    f"{path} numbers its classes; one-label-per-line files must name class folders "
                    "(the devkit's ILSVRC2012_validation_ground_truth.txt uses its own IDs, which need meta.mat); "
                    "write '<file> <class folder or 0-based index>' lines instead"
                )
            mapping = {f: r[0] for f, r in zip(files, rows)}
        elif min(widths) >= 2:
            mapping = {Path(r[0]).name: r[1] for r in rows}
        else:
            raise AlexNetError(f"{path} mixes lines with and without a file name")
        by_index = True

    stems = {Path(k).stem if Path(k).suffix.lower() in IMAGE_EXTENSIONS else k: v for k, v in mapping.items()}
    targets, unlabeled, unknown = [], [], []
    for f in files:
        label = mapping.get(f, stems.get(Path(f).stem))
        if label is None:
            unlabeled.append(f)
            continue
        target = index.get(label)
        if target is None and by_index and label.isdigit() and int(label) < len(classes):
            target = int(label)
        if target is None:
            unknown.append(label)
            continue
        targets.append(target)
    if unlabeled:
        raise AlexNetError(f"{path} has no label for {len(unlabeled)} image(s), e.g. {_names(unlabeled)}")
    if unknown:
        raise AlexNetError(f"labels in {path} that are not train class folders: {_names(sorted(set(unknown)))}")
    return targets


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ---------------------------------------------------------------- decoding, in the workers


def decode_rgb(path: str) -> torch.Tensor:
    """A JPEG or PNG file as uint8 (3, H, W); raises OSError/RuntimeError/ValueError if unreadable.

    JPEGs go to TorchCodec's decoder where it is installed (torchvision 0.29 deprecates its own
    decoders in its favour; both wrap libjpeg-turbo and decode at the same speed, as
    benchmarks/decode.py measures), else to torchvision's ``decode_image``; every other file
    (PNG) to PIL: torchvision 0.29's PNG decoder crashes the process (SIGSEGV) on any libpng
    error, such as a damaged IDAT, where PIL raises. Greyscale, palette and CMYK come out as RGB,
    alpha dropped.
    """
    data = Path(path).read_bytes()
    if not data:
        raise ValueError("empty file")
    check_header(data)
    try:
        image = _decode(data)
    except (RuntimeError, ValueError) as e:  # the C++ decoders prefix their messages with a source location
        raise ValueError(re.sub(r"^\w+, \S+:\d+, ", "", " ".join(str(e).split()))) from None
    if image.dtype in (torch.uint16, torch.int32):  # 16-bit PNG
        image = ((image.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8).contiguous()
    if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"decoded to an unexpected shape {tuple(image.shape)}")
    return image


def _decode(data: bytes) -> torch.Tensor:
    # Imported here: the decoders load only in processes that decode image folders (the loader's
    # workers, prepare's), not in every command that imports the data layer.
    if data[:2] != b"\xff\xd8":
        return _decode_pil(data)  # see decode_rgb: not torchvision's PNG decoder
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        from torchcodec.decoders import decode_jpeg
    except ImportError:
        pass
    else:
        return decode_jpeg(buffer, mode="RGB")
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        return _decode_pil(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # see the docstring of decode_rgb
        return decode_image(buffer, mode=ImageReadMode.RGB)


def _decode_pil(data: bytes) -> torch.Tensor:
    from PIL import Image

    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as image:
            warnings.simplefilter("ignore")  # e.g. a palette's transparency, dropped as alpha is
            if image.mode.startswith("I"):  # 16-bit grey: PIL's convert("RGB") would clip it at 255
                return torch.from_numpy(np.asarray(image).astype(np.int32)).clamp(0, 65535).expand(3, -1, -1)
            rgb = np.asarray(image.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - PIL names a damaged file with OSError, SyntaxError, EOFError, zlib.error...
        raise ValueError(" ".join(str(e).split()) or type(e).__name__) from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def check_header(data: bytes) -> None:
    """Refuse, before decoding, a file whose header claims more pixels than ``MAX_PIXELS``: a
    small file can claim 65535x65535, which the decoder would allocate (12 GiB) and fill."""
    from PIL import Image, UnidentifiedImageError

    from .images import MAX_PIXELS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as header:  # reads the header only
                w, h = header.size
    except UnidentifiedImageError:
        raise ValueError("not an image file (unknown format)") from None
    except Image.DecompressionBombError:
        raise ValueError(f"the header claims more than {2 * MAX_PIXELS:,} pixels") from None
    if w * h > MAX_PIXELS:
        raise ValueError(f"the header claims {w}x{h} pixels, over the {MAX_PIXELS:,} allowed")


def resize_shorter(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (..., H, W) with the shorter side brought to ``size`` (bilinear, antialiased)."""
    from torchvision.transforms.v2 import functional as TF  # as in decode_rgb: only where folders are read

    return TF.resize(image, [size], antialias=True)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    top, left = center_crop_box(image.shape[-2], image.shape[-1], size)
    return image[..., top : top + size, left : left + size]


def eval_geometry(image: torch.Tensor, resize: int, size: int) -> torch.Tensor:
    """Evaluation: shorter side to ``resize``, then the centred size x size crop."""
    return center_crop(resize_shorter(image, resize), size).contiguous()


def ten_crop_geometry(image: torch.Tensor, resize: int, size: int) -> torch.Tensor:
    """The paper's test: shorter side to ``resize``; the four corner size x size patches of the
    central resize x resize square, the centre patch (the one ``eval_geometry`` takes), and
    the mirrors of all five: uint8 (10, C, size, size)."""
    resized = resize_shorter(image, resize)
    square = center_crop(resized, resize)
    far = resize - size
    corners = [square[:, t : t + size, l : l + size] for t, l in [(0, 0), (0, far), (far, 0), (far, far)]]
    crops = torch.stack([*corners, center_crop(resized, size)])  # (5, C, size, size)
    return torch.cat([crops, crops.flip(-1)])


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = RRC_RATIO,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering U(scale) of the area with log-uniform aspect ratio;
    ten tries, then the whole image trimmed to the nearest allowed ratio (Szegedy et al. 2015)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


class SkippedImage(NamedTuple):
    path: str
    reason: str


class DecodedImages(Dataset):
    """Index -> (uint8 image, target) in a worker; keys are (index, seed, epoch) so that the
    random crop and flip of a sample depend only on those, not on which worker ran it."""

    MODES = ("train", "eval", "ten_crop")

    def __init__(
        self,
        images: ImageList,
        *,
        mode: str,
        image_size: int,
        resize: int,
        crop: str | None = "random-resized",
        scale_min: float = 0.08,
        flip: bool = False,
    ):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}")
        self.images, self.mode = images, mode
        self.size, self.resize = image_size, resize
        self.crop, self.scale = crop, (scale_min, 1.0)
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, int]):
        index, seed, epoch = key
        path = self.images.paths[index]
        try:
            image = decode_rgb(path)
        except (OSError, RuntimeError, ValueError) as e:
            return SkippedImage(path, " ".join(str(e).split())[:160] or type(e).__name__)
        rng = np.random.default_rng([seed & _MASK64, epoch & _MASK64, index])
        return self.geometry(image, rng), self.images.targets[index]

    def geometry(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF  # as in decode_rgb: only where folders are read

        if self.mode == "ten_crop":
            return ten_crop_geometry(image, self.resize, self.size)
        if self.mode == "eval" or self.crop is None:
            image = eval_geometry(image, self.resize, self.size)
        elif self.crop == "random-resized":
            top, left, h, w = random_resized_crop_box(rng, image.shape[1], image.shape[2], self.scale)
            image = TF.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
        else:  # "paper": a random size x size patch of the central resize x resize square
            square = center_crop(resize_shorter(image, self.resize), self.resize)
            top, left = (int(v) for v in rng.integers(0, self.resize - self.size + 1, size=2))
            image = square[:, top : top + self.size, left : left + self.size]
        if self.mode == "train" and self.flip and rng.random() < 0.5:
            image = image.flip(-1)
        return image.contiguous()


def collate_decoded(items: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[SkippedImage]]:
    """Stack the readable samples; pass the unreadable ones on for the loader to report."""
    kept = [it for it in items if not isinstance(it, SkippedImage)]
    skipped = [it for it in items if isinstance(it, SkippedImage)]
    if not kept:
        return None, None, skipped
    images = torch.stack([image for image, _ in kept])
    return images, torch.tensor([target for _, target in kept], dtype=torch.int64), skipped


class _KeyedBatches:
    """Batch sampler for DataLoader: this rank's batches of the current epoch, as keys."""

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler
        self.epoch = self.start_batch = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        seed = self.sampler.seed
        for batch in self.sampler.batches(self.epoch)[self.start_batch :]:
            yield [(int(i), seed, self.epoch) for i in batch]


class ImageFolderLoader(EpochLoader):
    """DataLoader over decoded images plus the on-device batch transform; the loader protocol
    of ``alexnet.data`` (``len``, ``num_samples``, ``set_epoch``, ``skipped``)."""

    def __init__(
        self,
        dataset: DecodedImages,
        *,
        split: str,
        batch_size: int,
        train: bool,
        transform,
        device: torch.device | str = "cpu",
        workers: int = 2,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.split, self.transform = split, transform
        self.device = torch.device(device)
        self.seed, self.rank = seed, rank
        self.sampler = EpochSampler(len(dataset), batch_size, train=train, seed=seed, rank=rank, world_size=world_size)
        self._batches = _KeyedBatches(self.sampler)
        self._loader = DataLoader(
            dataset,
            batch_sampler=self._batches,
            num_workers=workers,
            collate_fn=collate_decoded,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
        )
        self.epoch = self.start_batch = 0
        self.skipped = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        super().set_epoch(epoch, start_batch)
        self._batches.epoch, self._batches.start_batch = epoch, start_batch

    def _empty_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        size, channels = self.transform.image_size, self.transform.in_channels
        images = torch.zeros(0, channels, size, size, device=self.device)
        return images, torch.zeros(0, dtype=torch.int64, device=self.device)

    def __iter__(self):
        skipped = batches = 0
        for i, (images, labels, bad) in enumerate(self._loader, start=self.start_batch):
            for item in bad:
                message = f"skipped unreadable image {item.path}: {item.reason}"
                warnings.warn(message, UnreadableImageWarning, stacklevel=2)
            skipped += len(bad)
            if images is None:  # every image of the batch unreadable
                if self.sampler.train and self.sampler.world_size > 1:
                    # Under DDP every rank must take each step with the others: an empty batch
                    # (the training loop steps on it with zero gradients) instead of none.
                    yield self._empty_batch()
                continue
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            batches += 1
            gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, i))
            yield self.transform(images, gen), labels
        self.skipped = skipped
        if skipped:
            warnings.warn(
                f"epoch {self.epoch}: skipped {skipped} unreadable image(s) in the {self.split} split",
                UnreadableImageWarning,
                stacklevel=2,
            )
        if batches == 0 and len(self.sampler) > self.start_batch:
            raise AlexNetError(f"every image this rank read from the {self.split} split was unreadable")
