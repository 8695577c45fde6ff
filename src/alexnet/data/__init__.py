"""Data: Fashion-MNIST, CIFAR-10, ImageNet-style folders and synthetic images.

``build_loaders(cfg, device=..., batch_size=...)`` returns ``(train, val, info)``; both
loaders yield ``(images, labels)`` on the device, ready for the model. With a validation
split (``cfg.val_split``) val is carved from the training images and ``build_test_loader``
reads the held-out split. See README.md in
this folder for the defaults, the figures and the file formats.
"""

from .batch_transforms import BatchEvalTransform, BatchTrainTransform
from .cifar10 import load_cifar10
from .color import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LUMA_601,
    convert_channels,
    pixel_moments,
)
from .config import DATASET_DEFAULTS, DATASETS, DataConfig, DatasetInfo, resolve_augmentation
from .fashion_mnist import load_fashion_mnist
from .idx import read_idx
from .imagefolder import ImageFolderLoader, UnreadableImageWarning
from .images import open_image
from .in_memory import InMemoryLoader, SmallDataset
from .loaders import Loader, build_loaders, build_test_loader, load_small_dataset
from .preprocess import Preprocess, build_preprocess
from .synthetic import make_synthetic

__all__ = [
    "open_image",
    "DATASETS",
    "DATASET_DEFAULTS",
    "DataConfig",
    "DatasetInfo",
    "Loader",
    "build_loaders",
    "build_test_loader",
    "build_preprocess",
    "Preprocess",
    "resolve_augmentation",
    "InMemoryLoader",
    "ImageFolderLoader",
    "UnreadableImageWarning",
    "BatchTrainTransform",
    "BatchEvalTransform",
    "SmallDataset",
    "load_small_dataset",
    "load_fashion_mnist",
    "load_cifar10",
    "make_synthetic",
    "read_idx",
    "convert_channels",
    "pixel_moments",
    "LUMA_601",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENET_EIGVAL",
    "IMAGENET_EIGVEC",
]
