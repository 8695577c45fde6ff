"""Whole-batch image transforms that run on the training device (CPU or CUDA).

Every random parameter is drawn per sample from a CPU ``torch.Generator`` and then moved
to the batch's device, so a seed gives the same augmentation on any device. Only tensor
ops are used (indexing, pad, flip, affine_grid/grid_sample, interpolate); no PIL, no loops
over samples, and nothing that makes the host wait for a GPU: the parameters travel from
pinned memory without blocking (``to_device``), and no value is read back.

Order, for an in-memory train batch at the dataset's native size (28 or 32 px):
random crop from the zero-padded image and horizontal flip (on uint8), to float in
[0, 1], channel conversion, rotation/translation, PCA colour noise, normalisation, and
last the bilinear resize to the model's size (227 px for the paper's setup). Everything
before the resize is per-pixel affine in value or a geometric op at native size, so doing
the resize last writes the large (B, C, 227, 227) tensor once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .color import convert_channels, drop_alpha


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A small CPU tensor on ``device`` without a host sync.

    CUDA copies from pageable memory wait for everything queued on the stream before them, so
    each batch's random draws would stall the host until the GPU caught up; from pinned memory
    with ``non_blocking`` the copy is queued like a kernel (the caching host allocator keeps the
    pinned block until the copy is done).
    """
    if dtype is not None:
        t = t.to(dtype)
    if t.device == device:
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (..., C, H, W) -> float32 in [0, 1], alpha dropped."""
    return drop_alpha(x).to(torch.float32).div_(255.0)


def resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a float (B, C, H, W) batch; antialiased when shrinking."""
    h, w = (size, size) if isinstance(size, int) else size
    if x.shape[-2:] == (h, w):
        return x
    shrink = h < x.shape[-2] or w < x.shape[-1]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)


def center_crop_box(h: int, w: int, size: int) -> tuple[int, int]:
    """Top-left corner of the centred size x size crop (the one rule every path uses)."""
    return (h - size) // 2, (w - size) // 2


def random_pad_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and cut a random crop of the original size from each sample."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = to_device(torch.randint(0, 2 * padding + 1, (2, b), generator=gen), dev)
    rows = offsets[0, :, None] + torch.arange(h, device=dev)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=dev)  # (B, W)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def random_flip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each sample left-right with probability ``p``."""
    flip = to_device(torch.rand(x.shape[0], generator=gen) < p, x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_affine(x: torch.Tensor, degrees: float, translate: float, gen: torch.Generator) -> torch.Tensor:
    """Rotate by U(-degrees, degrees) and shift by U(-translate, translate) of the size, per sample.

    Bilinear sampling; what comes in from outside the image is black (zero), as with the crop.
    """
    if degrees <= 0 and translate <= 0:
        return x
    b = x.shape[0]
    u = torch.rand(3, b, generator=gen, dtype=torch.float64) * 2 - 1
    angle = u[0] * math.radians(degrees)
    shift = u[1:] * translate * 2  # normalised coordinates span 2 across the image
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift[0]], 1), torch.stack([sin, cos, shift[1]], 1)], 1)
    theta = to_device(theta, x.device, x.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def pca_noise(
    x: torch.Tensor, eigval: torch.Tensor, eigvec: torch.Tensor, sigma: float, gen: torch.Generator
) -> torch.Tensor:
    """Add sum_k alpha_k lambda_k p_k to every pixel of each image, alpha_k ~ N(0, sigma) per image.

    ``eigvec`` holds the eigenvectors p_k as columns; both tensors live on x's device.
    """
    if sigma <= 0:
        return x
    alpha = to_device(torch.randn(x.shape[0], eigval.shape[0], generator=gen) * sigma, x.device, x.dtype)
    offset = (alpha * eigval) @ eigvec.T  # (B, C)
    return x + offset[:, :, None, None]


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean[:, None, None]) / std[:, None, None]


def ten_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, 10, C, H, W): the four corners and the centre of the zero-padded
    image, each the original size, then the same five mirrored (the paper's test-time crops,
    taken over the shifts that training's padded random crop draws from)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding)) if padding > 0 else x
    far = 2 * max(padding, 0)
    corners = [(0, 0), (0, far), (far, 0), (far, far), (far // 2, far // 2)]
    crops = torch.stack([padded[:, :, t : t + h, l : l + w] for t, l in corners], 1)  # (B, 5, C, H, W)
    return torch.cat([crops, crops.flip(-1)], 1)  # (B, 10, C, H, W)


class _DeviceConstants:
    """Small per-device copies of mean, std and the PCA eigenpairs."""

    def __init__(self, **tensors: torch.Tensor | None):
        self._host = tensors
        self._cache: dict[torch.device, dict[str, torch.Tensor | None]] = {}

    def on(self, device: torch.device) -> dict[str, torch.Tensor | None]:
        if device not in self._cache:
            self._cache[device] = {
                k: None if v is None else to_device(v, device, torch.float32) for k, v in self._host.items()
            }
        return self._cache[device]


def _as_tensor(values) -> torch.Tensor | None:
    return None if values is None else torch.as_tensor(values, dtype=torch.float64)


class BatchTrainTransform:
    """uint8 (B, C, H, W) -> float32 (B, in_channels, S, S): augmented, normalised, resized.

    ``mean``/``std`` None skips normalisation; ``eigval``/``eigvec`` (model channel space)
    are needed when ``pca_color`` > 0. ``padding`` and ``flip`` act at the input's size
    (imagefolder does its crop and flip per sample in the workers and passes 0 / False).
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        mean=None,
        std=None,
        padding: int = 0,
        flip: bool = False,
        rotate: float = 0.0,
        translate: float = 0.0,
        pca_color: float = 0.0,
        eigval=None,
        eigvec=None,
    ):
        if pca_color > 0 and (eigval is None or eigvec is None):
            raise ValueError("PCA colour noise needs the eigenvalues and eigenvectors")
        self.image_size, self.in_channels = image_size, in_channels
        self.padding, self.flip, self.rotate, self.translate = padding, flip, rotate, translate
        self.pca_color = pca_color
        self._consts = _DeviceConstants(
            mean=_as_tensor(mean), std=_as_tensor(std), eigval=_as_tensor(eigval), eigvec=_as_tensor(eigvec)
        )

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        k = self._consts.on(x.device)
        x = random_pad_crop(x, self.padding, gen)
        if self.flip:
            x = random_flip(x, gen)
        x = convert_channels(to_unit_float(x), self.in_channels)
        x = random_affine(x, self.rotate, self.translate, gen)
        x = pca_noise(x, k["eigval"], k["eigvec"], self.pca_color, gen)
        if k["mean"] is not None:
            x = normalize(x, k["mean"], k["std"])
        return resize(x, self.image_size).contiguous()


class BatchEvalTransform:
    """uint8 (B, C, H, W) -> float32 (B, in_channels, S, S), no randomness.

    Square images are resized to ``resize_to`` (default S) and centre-cropped to S. With
    ``ten_crop_padding`` set, the output is (B, 10, in_channels, S, S) (see ``ten_crop``).
    A 5-D uint8 input (B, K, C, H, W), crops made elsewhere, is processed crop by crop.
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        mean=None,
        std=None,
        resize_to: int | None = None,
        ten_crop_padding: int | None = None,
    ):
        self.image_size, self.in_channels = image_size, in_channels
        self.resize_to = resize_to or image_size
        self.ten_crop_padding = ten_crop_padding
        self._consts = _DeviceConstants(mean=_as_tensor(mean), std=_as_tensor(std))

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim == 4 and self.ten_crop_padding is not None:
            x = ten_crop(x, self.ten_crop_padding)
        if x.ndim == 5:
            b, n = x.shape[:2]
            out = self._single(x.flatten(0, 1), self.image_size)
            return out.view(b, n, *out.shape[1:])
        return self._single(x, self.resize_to)

    def _single(self, x: torch.Tensor, resize_to: int) -> torch.Tensor:
        k = self._consts.on(x.device)
        x = convert_channels(to_unit_float(x), self.in_channels)
        if k["mean"] is not None:
            x = normalize(x, k["mean"], k["std"])
        x = resize(x, resize_to)
        if resize_to != self.image_size:
            top, left = center_crop_box(resize_to, resize_to, self.image_size)
            x = x[:, :, top : top + self.image_size, left : left + self.image_size]
        return x.contiguous()
