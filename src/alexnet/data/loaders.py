"""``build_loaders``: a DataConfig in, train and val loaders plus a DatasetInfo out.

Fashion-MNIST, CIFAR-10 and synthetic data take the in-memory path (in_memory.py);
imagefolder takes the DataLoader path (imagefolder.py). Both loaders follow ``Loader``.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Protocol

import torch

from ..errors import AlexNetError
from .batch_transforms import BatchEvalTransform, BatchTrainTransform
from .store_loader import StoreEvalTransform, StoreLoader, StoreTrainTransform
from .cifar10 import load_cifar10
from .color import IMAGENET_MEAN, IMAGENET_STD, convert_stats, imagenet_pca, pca_in_model_space, pixel_moments
from .config import DATASET_DEFAULTS, DataConfig, DatasetInfo, check_config, resolve_augmentation
from .fashion_mnist import load_fashion_mnist
from .image_store import is_store, open_store
from .imagefolder import DecodedImages, ImageFolderLoader, locate_imagefolder, scan_train, scan_val
from .in_memory import InMemoryLoader, SmallDataset
from .preprocess import make_spec
from .sampling import round_robin_head, stratified_split
from .synthetic import make_synthetic

TTA_MODES = (None, "10crop")
# The paper's "random 224 crop of the 256 resize", as a ratio for any model size.
PAPER_CROP_RATIO = 0.875


class Loader(Protocol):
    """What the engine iterates: (images, labels) already on the device, float32 and int64."""

    num_samples: int  # samples this rank sees per epoch
    skipped: int  # unreadable images skipped in the last completed epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...


def build_loaders(
    cfg: DataConfig,
    *,
    device: torch.device | str,
    batch_size: int,
    eval_batch_size: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    tta: str | None = None,
) -> tuple[Loader, Loader, DatasetInfo]:
    """Train and val loaders for this rank, and what the model needs to know about the data.

    ``tta="10crop"`` makes the val loader yield (B, 10, C, S, S): the paper's four corner
    and centre crops and their mirrors, for the caller to average softmax over dim 1.

    With ``cfg.val_split`` (resolved by ``val_split_size``) the val loader reads training
    images kept apart, and the dataset's held-out split is left for ``build_test_loader``.
    """
    check_config(cfg)
    if tta not in TTA_MODES:
        raise AlexNetError(f"unknown test-time augmentation {tta!r}; choose 10crop or none")
    if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
        raise AlexNetError("batch sizes must be at least 1")
    if world_size < 1 or not 0 <= rank < world_size:
        raise AlexNetError(f"rank {rank} is outside world size {world_size}")
    common = dict(
        device=torch.device(device),
        batch_size=batch_size,
        eval_batch_size=eval_batch_size or batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        tta=tta,
    )
    if cfg.dataset == "imagefolder":
        if is_store(cfg.data_dir) and not cfg.train_dir:
            return _store_loaders(cfg, **common)
        return _imagefolder_loaders(cfg, **common)
    return _in_memory_loaders(cfg, **common)


def build_test_loader(
    cfg: DataConfig,
    *,
    device: torch.device | str,
    batch_size: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    tta: str | None = None,
) -> tuple[Loader, DatasetInfo]:
    """The dataset's held-out split (the test split) through the evaluation transform.

    Read only when asked, so that a run with a validation split reads its test split once,
    at the end.
    """
    _, test, info = build_loaders(
        dataclasses.replace(cfg, val_split=0), device=device, batch_size=batch_size, eval_batch_size=batch_size,
        seed=seed, rank=rank, world_size=world_size, tta=tta,
    )  # fmt: skip
    return test, info


def val_split_size(cfg: DataConfig, train_size: int) -> int:
    """How many training images ``cfg.val_split`` keeps apart, of ``train_size`` (after --subset).

    None takes the dataset's default, at most a tenth of the training set; a number given
    must leave training images.
    """
    if cfg.val_split is None:
        return min(DATASET_DEFAULTS[cfg.dataset].val_split, train_size // 10)
    if cfg.val_split >= train_size:
        raise AlexNetError(f"--val-split {cfg.val_split} keeps every training image apart: there are {train_size}"
                           f"{' after --subset' if cfg.subset is not None else ''}; give fewer, or 0 to validate "
                           "on the held-out split")  # fmt: skip
    return cfg.val_split


def load_small_dataset(cfg: DataConfig) -> SmallDataset:
    """Both splits of an in-memory dataset, as stored (native channels and size), after --subset."""
    if cfg.dataset == "fashion-mnist":
        data = load_fashion_mnist(cfg.data_dir, download=cfg.download)
    elif cfg.dataset == "cifar10":
        data = load_cifar10(cfg.data_dir, download=cfg.download)
    elif cfg.dataset == "synthetic":
        data = make_synthetic(
            train=cfg.synthetic_train,
            val=cfg.synthetic_val,
            num_classes=cfg.synthetic_classes,
            size=cfg.synthetic_size,
            channels=cfg.in_channels or 3,
            seed=cfg.synthetic_seed,
        )
    else:
        raise AlexNetError(f"{cfg.dataset} is not an in-memory dataset")
    return data.head(cfg.subset)


def carve_val_split(data: SmallDataset, n: int) -> SmallDataset:
    """``data`` with ``n`` training images as its val split (stratified, seeded) in place of the held-out one."""
    if n == 0:
        return data
    train_idx, val_idx = stratified_split(data.train_labels, n)
    return dataclasses.replace(
        data,
        train_images=data.train_images[train_idx],
        train_labels=data.train_labels[train_idx],
        val_images=data.train_images[val_idx],
        val_labels=data.train_labels[val_idx],
    )


def normalization(
    cfg: DataConfig, mean: tuple[float, ...], std: tuple[float, ...], in_channels: int
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """Mean and std per model channel (None, None when normalisation is off)."""
    if not cfg.normalize:
        return None, None
    if cfg.mean is not None:
        mean, std = tuple(cfg.mean), tuple(cfg.std)
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise AlexNetError(f"mean and std need 1 or 3 values each, got {len(mean)} and {len(std)}")
    return convert_stats(mean, std, in_channels)


def dataset_info(spec: dict, aug: dict, class_names: list[str], train_size: int, val_size: int, source: str):
    """The DatasetInfo of a loaded dataset; name, channels, size and statistics come from its preprocess spec."""
    return DatasetInfo(
        name=spec["dataset"],
        class_names=class_names,
        num_classes=len(class_names),
        in_channels=spec["in_channels"],
        image_size=spec["image_size"],
        mean=tuple(spec["mean"]),
        std=tuple(spec["std"]),
        train_size=train_size,
        val_size=val_size,
        preprocess=spec,
        augment=aug,
        source=source,
    )


def _in_memory_loaders(cfg, *, device, batch_size, eval_batch_size, seed, rank, world_size, tta):
    aug = resolve_augmentation(cfg)
    if tta == "10crop" and aug["crop_padding"] == 0:
        # Its crops are shifts within the padding that training's random crops draw from.
        raise AlexNetError("--tta 10crop takes its five crops within the padding of training's random crops; with "
                           "--no-crop (or --crop-padding 0) they are one image five times and only the mirror differs: "
                           "train with --crop, or drop --tta")  # fmt: skip
    data = load_small_dataset(cfg)
    n_val = val_split_size(cfg, len(data.train_images))
    test_size = len(data.val_images)
    data = carve_val_split(data, n_val)
    native = data.train_images.shape[1]
    in_channels = cfg.in_channels or native
    mean, std = normalization(cfg, data.mean, data.std, in_channels)
    eigval = eigvec = None
    if aug["pca_color"] > 0:
        _, cov = pixel_moments(data.train_images)
        eigval, eigvec = pca_in_model_space(cov, in_channels)
        aug["pca_eigval"] = [round(v, 6) for v in eigval.tolist()]
    size = cfg.image_size
    spec = make_spec(
        dataset=cfg.dataset,
        image_size=size,
        in_channels=in_channels,
        mean=mean,
        std=std,
        crop_ratio=aug["eval_crop_ratio"],
        resize_dtype="float32",
    )
    train_tf = BatchTrainTransform(
        image_size=size,
        in_channels=in_channels,
        mean=mean,
        std=std,
        padding=aug["crop_padding"],
        flip=aug["flip"],
        rotate=aug["rotate"],
        translate=aug["translate"],
        pca_color=aug["pca_color"],
        eigval=eigval,
        eigvec=eigvec,
    )
    val_tf = BatchEvalTransform(
        image_size=size,
        in_channels=in_channels,
        mean=mean,
        std=std,
        resize_to=spec["resize"],
        ten_crop_padding=aug["crop_padding"] if tta == "10crop" else None,
    )
    shard = dict(device=device, seed=seed, rank=rank, world_size=world_size)
    train = InMemoryLoader(
        data.train_images, data.train_labels, batch_size=batch_size, train=True, transform=train_tf, **shard
    )
    val = InMemoryLoader(
        data.val_images, data.val_labels, batch_size=eval_batch_size, train=False, transform=val_tf, **shard
    )
    info = dataset_info(spec, aug, list(data.class_names), len(data.train_images), len(data.val_images), data.source)
    info.val_split, info.test_size = n_val, test_size
    return train, val, info


def _imagefolder_loaders(cfg, *, device, batch_size, eval_batch_size, seed, rank, world_size, tta):
    aug = resolve_augmentation(cfg)
    train_dir, val_dir = locate_imagefolder(cfg.data_dir, cfg.train_dir, cfg.val_dir)
    classes, train_images = scan_train(train_dir)
    val_images = scan_val(val_dir, classes, train_dir, cfg.val_labels)
    train_images, val_images = train_images.head(cfg.subset), val_images.head(cfg.subset)
    n_val = val_split_size(cfg, len(train_images))
    test_size = len(val_images)
    if n_val:
        train_images, val_images = train_images.split_off(n_val)
    in_channels = cfg.in_channels or 3
    mean, std = normalization(cfg, IMAGENET_MEAN, IMAGENET_STD, in_channels)
    eigval = eigvec = None
    if aug["pca_color"] > 0:
        eigval, eigvec = imagenet_pca(in_channels)
    size = cfg.image_size
    spec = make_spec(
        dataset="imagefolder",
        image_size=size,
        in_channels=in_channels,
        mean=mean,
        std=std,
        crop_ratio=aug["eval_crop_ratio"],
        resize_dtype="uint8",
    )
    train_ds = DecodedImages(
        train_images,
        mode="train",
        image_size=size,
        resize=round(size / PAPER_CROP_RATIO),
        crop=aug["train_crop"] if aug["crop"] else None,
        scale_min=aug["rrc_scale_min"],
        flip=aug["flip"],
    )
    val_ds = DecodedImages(
        val_images, mode="ten_crop" if tta == "10crop" else "eval", image_size=size, resize=spec["resize"]
    )
    train_tf = BatchTrainTransform(
        image_size=size,
        in_channels=in_channels,
        mean=mean,
        std=std,
        rotate=aug["rotate"],
        translate=aug["translate"],
        pca_color=aug["pca_color"],
        eigval=eigval,
        eigvec=eigvec,
    )
    val_tf = BatchEvalTransform(image_size=size, in_channels=in_channels, mean=mean, std=std)
    shard = dict(device=device, workers=cfg.workers, seed=seed, rank=rank, world_size=world_size)
    train = ImageFolderLoader(train_ds, split="train", batch_size=batch_size, train=True, transform=train_tf, **shard)
    val = ImageFolderLoader(val_ds, split="val", batch_size=eval_batch_size, train=False, transform=val_tf, **shard)
    info = dataset_info(spec, aug, classes, len(train_images), len(val_images), f"{train_dir} and {val_dir}")
    info.val_split, info.test_size = n_val, test_size
    return train, val, info


def _store_loaders(cfg, *, device, batch_size, eval_batch_size, seed, rank, world_size, tta):
    """Train and val loaders over a prepared store (``alexnet prepare``): --data-dir STORE."""
    aug = resolve_augmentation(cfg)
    store = open_store(cfg.data_dir)
    size = cfg.image_size
    if store.size < size:
        raise AlexNetError(f"the store {store.root} holds {store.size} px images, smaller than --image-size {size}: "
                           f"prepare it again with --size {max(256, size)}")  # fmt: skip
    if cfg.eval_crop_ratio is None:
        # The paper's test crops come from the 256 image itself (224 or 227 of 256): the store's
        # images are that image, so evaluation takes its crops without resizing again.
        aug["eval_crop_ratio"] = size / store.size
    train_split = store.splits["train"]
    train_pos = round_robin_head(train_split.labels, cfg.subset)
    n_val = val_split_size(cfg, len(train_pos))
    if n_val:
        keep, apart = stratified_split(torch.from_numpy(train_split.labels[train_pos]), n_val)
        train_pos, val_split, val_pos = train_pos[keep.numpy()], train_split, train_pos[apart.numpy()]
    elif "val" in store.splits and len(store.splits["val"]):
        val_split = store.splits["val"]
        val_pos = round_robin_head(val_split.labels, cfg.subset)
    else:
        raise AlexNetError(f"the store {store.root} has no val split (its tree had no val/): give --val-split N "
                           "to keep training images apart, or prepare a tree with val/")  # fmt: skip
    test_size = len(store.splits["val"]) if "val" in store.splits else 0
    if cfg.subset is not None and "val" in store.splits:
        test_size = min(test_size, cfg.subset)
    in_channels = cfg.in_channels or 3
    mean, std = normalization(cfg, IMAGENET_MEAN, IMAGENET_STD, in_channels)
    eigval = eigvec = None
    if aug["pca_color"] > 0:
        eigval, eigvec = imagenet_pca(in_channels)
    spec = make_spec(dataset="imagefolder", image_size=size, in_channels=in_channels, mean=mean, std=std,
                     crop_ratio=aug["eval_crop_ratio"], resize_dtype="uint8")  # fmt: skip
    colour = dict(in_channels=in_channels, mean=mean, std=std)
    train_tf = StoreTrainTransform(
        crop=aug["train_crop"] if aug["crop"] else None,
        image_size=size,
        scale_min=aug["rrc_scale_min"],
        flip=aug["flip"],
        eval_resize=spec["resize"],
        rotate=aug["rotate"],
        translate=aug["translate"],
        pca_color=aug["pca_color"],
        eigval=eigval,
        eigvec=eigvec,
        **colour,
    )
    val_tf = StoreEvalTransform(image_size=size, resize_to=spec["resize"], ten_crop=tta == "10crop", **colour)
    shard = dict(device=device, seed=seed, rank=rank, world_size=world_size)
    train = StoreLoader(train_split, train_pos, batch_size=batch_size, train=True, transform=train_tf, **shard)
    val = StoreLoader(val_split, val_pos, batch_size=eval_batch_size, train=False, transform=val_tf, **shard)
    aug["store"] = {"path": str(store.root), "size": store.size, "skipped_when_prepared": len(store.skipped)}
    info = dataset_info(spec, aug, store.classes, len(train_pos), len(val_pos), f"image store {store.root}")
    info.val_split, info.test_size = n_val, test_size
    return train, val, info
