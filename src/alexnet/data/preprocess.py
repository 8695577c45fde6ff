"""The evaluation transform as a plain spec, stored in checkpoints, and the function it builds.

``DatasetInfo.preprocess`` is a JSON-able dict; ``build_preprocess(spec)`` turns it into a
callable taking a PIL image (any mode, any size) or a uint8 tensor (C, H, W) / (H, W) and
returning the float tensor (in_channels, S, S) that the val loader would have produced
for the same image. Two resize paths, matching the two kinds of loader:

- ``resize_dtype == "float32"`` (in-memory datasets): to float, channel conversion,
  normalisation, then bilinear resize of the shorter side to ``resize`` and centre crop
  ``image_size`` (for the square 28/32 px images, one resize to S x S);
- ``resize_dtype == "uint8"`` (imagefolder): as the workers do, RGB uint8, shorter side to
  ``resize`` (antialiased bilinear on uint8) and centre crop, then float, channel
  conversion and normalisation.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import AlexNetError
from .batch_transforms import center_crop_box, normalize, resize, to_unit_float
from .color import convert_channels, drop_alpha
from .imagefolder import eval_geometry

SPEC_VERSION = 1
RESIZE_DTYPES = ("float32", "uint8")
_GREY_PIL_MODES = {"1", "L", "LA", "La", "I", "I;16", "F"}


def make_spec(
    *,
    dataset: str,
    image_size: int,
    in_channels: int,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    crop_ratio: float,
    resize_dtype: str,
) -> dict:
    """The spec for a dataset's evaluation transform; mean/std None means no normalisation."""
    resize_to = image_size if crop_ratio >= 1.0 else round(image_size / crop_ratio)
    return {
        "version": SPEC_VERSION,
        "dataset": dataset,
        "image_size": int(image_size),
        "resize": int(resize_to),
        "in_channels": int(in_channels),
        "mean": [float(m) for m in mean] if mean is not None else [0.0] * in_channels,
        "std": [float(s) for s in std] if std is not None else [1.0] * in_channels,
        "interpolation": "bilinear",
        "resize_dtype": resize_dtype,
        "channel_conversion": "1->3 repeat, 3->1 ITU-R 601 luma",
    }


class Preprocess:
    """Callable built from a preprocess spec (see module doc)."""

    def __init__(self, spec: dict):
        missing = [k for k in ("image_size", "resize", "in_channels", "mean", "std", "resize_dtype") if k not in spec]
        if missing:
            raise AlexNetError(f"preprocess spec lacks {', '.join(missing)}")
        if spec["resize_dtype"] not in RESIZE_DTYPES:
            raise AlexNetError(f"preprocess spec has unknown resize_dtype {spec['resize_dtype']!r}")
        if spec.get("version", SPEC_VERSION) > SPEC_VERSION:
            raise AlexNetError(f"preprocess spec version {spec['version']} is newer than this alexnet understands")
        self.spec = dict(spec)
        self.size, self.resize_to = int(spec["image_size"]), int(spec["resize"])
        self.in_channels = int(spec["in_channels"])
        if len(spec["mean"]) != self.in_channels or len(spec["std"]) != self.in_channels:
            raise AlexNetError("preprocess spec: mean and std need one value per input channel")
        self.mean = torch.tensor(spec["mean"], dtype=torch.float32)
        self.std = torch.tensor(spec["std"], dtype=torch.float32)

    def __repr__(self) -> str:
        return f"Preprocess({self.spec})"

    def __call__(self, image) -> torch.Tensor:
        x = as_uint8_chw(image)
        if self.spec["resize_dtype"] == "uint8":
            if x.shape[0] == 1:  # the imagefolder workers decode everything as RGB
                x = x.expand(3, -1, -1)
            x = to_unit_float(eval_geometry(x, self.resize_to, self.size)).unsqueeze(0)
            x = normalize(convert_channels(x, self.in_channels), self.mean, self.std)
            return x[0].contiguous()
        x = convert_channels(to_unit_float(x).unsqueeze(0), self.in_channels)
        x = normalize(x, self.mean, self.std)
        h, w = x.shape[-2:]
        if h <= w:
            new = (self.resize_to, int(self.resize_to * w / h))
        else:
            new = (int(self.resize_to * h / w), self.resize_to)
        x = resize(x, new)
        top, left = center_crop_box(new[0], new[1], self.size)
        return x[0, :, top : top + self.size, left : left + self.size].contiguous()


def build_preprocess(spec: dict) -> Preprocess:
    """PIL.Image or uint8 tensor (C, H, W) -> float (C, S, S), normalised exactly as evaluation does."""
    return Preprocess(spec)


def as_uint8_chw(image) -> torch.Tensor:
    """A PIL image or uint8 tensor as uint8 (C, H, W) with C in {1, 3}, alpha dropped."""
    try:
        from PIL import Image
    except ImportError:  # PIL comes with torchvision; without it only tensors are accepted
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        mode = "L" if image.mode in _GREY_PIL_MODES else "RGB"
        array = np.asarray(image.convert(mode), dtype=np.uint8)
        x = torch.from_numpy(array.copy())
        return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()
    if not isinstance(image, torch.Tensor):
        raise AlexNetError(f"expected a PIL image or a uint8 tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise AlexNetError(f"expected a uint8 image tensor, got {image.dtype}")
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3 or image.shape[0] not in (1, 2, 3, 4):
        raise AlexNetError(f"expected an image tensor shaped (C, H, W) with 1-4 channels, got {tuple(image.shape)}")
    return drop_alpha(image.cpu())
