"""What a run asks of the data (``DataConfig``) and what the data tells the run (``DatasetInfo``).

Fields left at ``None`` take the dataset's own default from ``DATASET_DEFAULTS``;
``resolve_augmentation`` turns a config into the concrete figures a loader uses,
and those figures are recorded in ``DatasetInfo.augment``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import AlexNetError

DATASETS = ("fashion-mnist", "cifar10", "imagefolder", "synthetic")

# Datasets small enough to live on the training device as one uint8 tensor.
IN_MEMORY = ("fashion-mnist", "cifar10", "synthetic")

TRAIN_CROPS = ("random-resized", "paper")


@dataclass(frozen=True)
class DatasetDefaults:
    """Per-dataset defaults for the config fields left at ``None``."""

    crop_padding: int  # zero padding before the random crop at native size (in-memory datasets)
    pca_color: float  # std of the paper's alpha
    eval_crop_ratio: float  # crop / resize at evaluation: 1.0 keeps the whole image
    # Training images kept apart as the validation split (capped at a tenth of the training
    # set); 0: the dataset's own held-out split validates, as for ImageNet's val folder.
    val_split: int = 0


DATASET_DEFAULTS = {
    # 28 px garments centred with a 2-4 px margin: 2 px of shift keeps them on the canvas.
    # One channel: the "principal component" is plain brightness, so PCA noise is off.
    # Their held-out split is the official test split: 5,000 training images validate instead.
    "fashion-mnist": DatasetDefaults(crop_padding=2, pca_color=0.0, eval_crop_ratio=1.0, val_split=5000),
    # The usual 4 px for 32 px CIFAR; the paper's colour noise on.
    "cifar10": DatasetDefaults(crop_padding=4, pca_color=0.1, eval_crop_ratio=1.0, val_split=5000),
    # The paper: RandomResizedCrop-style crops, alpha ~ N(0, 0.1), 224-from-256 (0.875) at test.
    "imagefolder": DatasetDefaults(crop_padding=0, pca_color=0.1, eval_crop_ratio=0.875),
    # Smoke tests and benchmarks: cheap, deterministic, nothing exotic.
    "synthetic": DatasetDefaults(crop_padding=4, pca_color=0.0, eval_crop_ratio=1.0),
}


@dataclass
class DataConfig:
    """Where the images come from, how big the model wants them, and how to augment them.

    Augmentation applies to the train split only. ``None`` means "the dataset's default"
    (see ``DATASET_DEFAULTS`` and src/alexnet/data/README.md).
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    train_dir: str | None = None  # imagefolder: overrides <data_dir>/train
    val_dir: str | None = None  # imagefolder: overrides <data_dir>/val
    val_labels: str | None = None  # imagefolder: labels file for the flat ILSVRC2012 val layout
    download: bool = True  # try torchvision's downloader when nothing is found locally
    subset: int | None = None  # use only the first N images of each split
    # Training images kept apart (seeded, stratified) as the validation split; the held-out
    # split is then the test split, for the caller to read once. 0: none; None: the dataset's
    # default (5,000 for Fashion-MNIST and CIFAR-10, at most a tenth of the training set).
    val_split: int | None = 0
    image_size: int = 227  # the model's input size
    in_channels: int | None = None  # None: the dataset's own (1 for Fashion-MNIST, 3 otherwise)
    workers: int = 2  # imagefolder DataLoader workers
    # synthetic
    synthetic_train: int = 512
    synthetic_val: int = 128
    synthetic_classes: int = 10
    synthetic_size: int = 32
    synthetic_seed: int = 0
    # augmentation (train split only)
    crop: bool = True
    crop_padding: int | None = None  # in-memory datasets; None: 2 Fashion-MNIST, 4 CIFAR-10/synthetic
    rrc_scale_min: float = 0.08  # imagefolder RandomResizedCrop: smallest area fraction
    train_crop: str = "random-resized"  # imagefolder: "random-resized" or "paper" (random S crop of the resize)
    flip: bool = True
    rotate: float = 0.0  # max degrees
    translate: float = 0.0  # max fraction of the image size
    pca_color: float | None = None  # std of the paper's alpha (0.1 in the paper); 0 = off; None: dataset default
    normalize: bool = True
    mean: tuple[float, ...] | None = None  # override the dataset's figures (one per dataset channel)
    std: tuple[float, ...] | None = None
    # evaluation
    eval_crop_ratio: float | None = None  # crop / shorter-side resize; None: 0.875 imagefolder, 1.0 otherwise


@dataclass
class DatasetInfo:
    """What the engine, checkpoints and plots need to know about the data that was loaded."""

    name: str
    class_names: list[str]
    num_classes: int
    in_channels: int  # the model's, after any conversion
    image_size: int
    mean: tuple[float, ...]  # per model channel, in [0, 1] pixel units
    std: tuple[float, ...]
    train_size: int  # images in the whole split (after --subset), over all ranks
    val_size: int
    preprocess: dict  # JSON-able spec for build_preprocess, stored in checkpoints
    augment: dict = field(default_factory=dict)  # the resolved train-time augmentation
    source: str = ""  # where the files were read from
    # Training images kept apart as the validation split (train_size excludes them); 0: the
    # dataset's held-out split validates.
    val_split: int = 0
    test_size: int = 0  # images in the held-out split (after --subset), whichever split validates


def check_config(cfg: DataConfig) -> None:
    """Reject values no loader can honour, with a message naming the field."""
    if cfg.dataset not in DATASETS:
        raise AlexNetError(f"unknown dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")
    if cfg.image_size < 1:
        raise AlexNetError(f"image size must be positive, got {cfg.image_size}")
    if cfg.in_channels not in (None, 1, 3):
        raise AlexNetError(f"in_channels must be 1 or 3, got {cfg.in_channels}")
    if cfg.subset is not None and cfg.subset < 1:
        raise AlexNetError(f"subset must be at least 1, got {cfg.subset}")
    if cfg.val_split is not None and cfg.val_split < 0:
        raise AlexNetError(f"--val-split must be 0 or more, got {cfg.val_split}")
    if cfg.workers < 0:
        raise AlexNetError(f"workers must be 0 or more, got {cfg.workers}")
    if cfg.crop_padding is not None and cfg.crop_padding < 0:
        raise AlexNetError(f"crop padding must be 0 or more, got {cfg.crop_padding}")
    if not 0.0 < cfg.rrc_scale_min <= 1.0:
        raise AlexNetError(f"rrc_scale_min must be in (0, 1], got {cfg.rrc_scale_min}")
    if cfg.train_crop not in TRAIN_CROPS:
        raise AlexNetError(f"train_crop must be one of {', '.join(TRAIN_CROPS)}, got {cfg.train_crop!r}")
    if not 0.0 <= cfg.rotate <= 180.0:
        raise AlexNetError(f"rotate must be between 0 and 180 degrees, got {cfg.rotate}")
    if not 0.0 <= cfg.translate < 1.0:
        raise AlexNetError(f"translate must be a fraction in [0, 1), got {cfg.translate}")
    if cfg.pca_color is not None and cfg.pca_color < 0:
        raise AlexNetError(f"pca_color must be 0 or more, got {cfg.pca_color}")
    if cfg.eval_crop_ratio is not None and not 0.0 < cfg.eval_crop_ratio <= 1.0:
        raise AlexNetError(f"eval_crop_ratio must be in (0, 1], got {cfg.eval_crop_ratio}")
    if (cfg.mean is None) != (cfg.std is None):
        raise AlexNetError("give both mean and std, or neither")
    if cfg.std is not None and any(s <= 0 for s in cfg.std):
        raise AlexNetError(f"std must be positive, got {tuple(cfg.std)}")
    if cfg.dataset == "synthetic":
        for name in ("synthetic_train", "synthetic_val", "synthetic_classes", "synthetic_size"):
            if getattr(cfg, name) < 1:
                raise AlexNetError(f"{name} must be at least 1, got {getattr(cfg, name)}")


def resolve_augmentation(cfg: DataConfig) -> dict:
    """The concrete train-time augmentation and eval crop for ``cfg.dataset``, as plain values."""
    defaults = DATASET_DEFAULTS[cfg.dataset]
    padding = defaults.crop_padding if cfg.crop_padding is None else cfg.crop_padding
    pca = defaults.pca_color if cfg.pca_color is None else cfg.pca_color
    ratio = defaults.eval_crop_ratio if cfg.eval_crop_ratio is None else cfg.eval_crop_ratio
    resolved = {
        "crop": bool(cfg.crop),
        "flip": bool(cfg.flip),
        "rotate": float(cfg.rotate),
        "translate": float(cfg.translate),
        "pca_color": float(pca),
        "normalize": bool(cfg.normalize),
        "eval_crop_ratio": float(ratio),
    }
    if cfg.dataset == "imagefolder":
        resolved["train_crop"] = cfg.train_crop
        resolved["rrc_scale_min"] = float(cfg.rrc_scale_min)
    else:
        resolved["crop_padding"] = int(padding) if cfg.crop else 0
    return resolved
