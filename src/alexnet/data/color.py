"""Colour: channel conversion, per-channel statistics and the paper's PCA colour noise.

Channel conversion is linear, so statistics convert with it:
- 1 -> 3 repeats the grey channel (mean and std repeat exactly);
- 3 -> 1 is ITU-R BT.601 luma, Y = 0.299 R + 0.587 G + 0.114 B (what PIL's ``convert("L")``
  uses); the grey mean is the weighted mean exactly, the grey std is taken as the weighted
  std, exact when the channels are perfectly correlated and an upper bound otherwise.

PCA colour noise (Krizhevsky et al. 2012, section 4.1): to every pixel of an image add
``sum_k alpha_k * lambda_k * p_k``, with (p_k, lambda_k) the eigenvectors and eigenvalues
of the 3x3 covariance of RGB pixel values over the training set and alpha_k ~ N(0, sigma)
drawn once per image per use (sigma = 0.1 in the paper). Pixel values are in [0, 1] here.
"""

from __future__ import annotations

import torch

LUMA_601 = (0.299, 0.587, 0.114)

# Published ImageNet figures, in [0, 1] pixel units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The PCA of ImageNet RGB pixels used by fb.resnet.torch's Lighting transform (and many
# AlexNet reproductions since); the eigenvectors are the COLUMNS of IMAGENET_EIGVEC.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def channel_matrix(src: int, dst: int) -> torch.Tensor:
    """The (dst, src) float64 matrix taking a pixel with ``src`` channels to ``dst`` channels."""
    if src == dst:
        return torch.eye(src, dtype=torch.float64)
    if (src, dst) == (1, 3):
        return torch.ones(3, 1, dtype=torch.float64)
    if (src, dst) == (3, 1):
        return torch.tensor([LUMA_601], dtype=torch.float64)
    raise ValueError(f"cannot convert {src} channels to {dst}")


def drop_alpha(x: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) with grey+alpha (2) or RGBA (4) -> the colour channels alone."""
    c = x.shape[-3]
    if c == 2:
        return x[..., :1, :, :]
    if c == 4:
        return x[..., :3, :, :]
    return x


def convert_channels(x: torch.Tensor, dst: int) -> torch.Tensor:
    """A float (B, C, H, W) batch with C in {1, 3} (alpha already dropped) -> ``dst`` channels."""
    src = x.shape[1]
    if src == dst:
        return x
    if (src, dst) == (1, 3):
        return x.expand(-1, 3, -1, -1)
    if (src, dst) == (3, 1):  # weights as Python numbers: a weight tensor made per batch would be a host copy
        r, g, b = LUMA_601
        return (x[:, 0:1] * r).add_(x[:, 1:2], alpha=g).add_(x[:, 2:3], alpha=b)
    raise ValueError(f"cannot convert {src} channels to {dst}")


def convert_stats(
    mean: tuple[float, ...], std: tuple[float, ...], dst: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std after converting the images to ``dst`` channels (see module doc)."""
    m = channel_matrix(len(mean), dst)
    new_mean = m @ torch.tensor(mean, dtype=torch.float64)
    new_std = m @ torch.tensor(std, dtype=torch.float64)
    return tuple(round(v, 6) for v in new_mean.tolist()), tuple(round(v, 6) for v in new_std.tolist())


def pixel_moments(images: torch.Tensor, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C,) and covariance (C, C) of all pixels of a uint8 (N, C, H, W) tensor, in [0, 1] units."""
    n, c = images.shape[:2]
    total = torch.zeros(c, dtype=torch.float64)
    outer = torch.zeros(c, c, dtype=torch.float64)
    count = 0
    for start in range(0, n, chunk):
        block = images[start : start + chunk].to("cpu", torch.float64).div_(255.0)
        pixels = block.transpose(0, 1).reshape(c, -1)  # (C, n * H * W)
        total += pixels.sum(1)
        outer += pixels @ pixels.T
        count += pixels.shape[1]
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    return mean, cov


def pca(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (C,) in decreasing order and eigenvectors as the columns of a (C, C) matrix."""
    cov = (cov + cov.T) / 2
    eigval, eigvec = torch.linalg.eigh(cov.to(torch.float64))
    order = torch.argsort(eigval, descending=True)
    return eigval[order].clamp_min(0.0), eigvec[:, order]


def imagenet_covariance() -> torch.Tensor:
    """The covariance that the published ImageNet eigenpairs describe: V diag(lambda) V^T."""
    v = torch.tensor(IMAGENET_EIGVEC, dtype=torch.float64)
    return v @ torch.diag(torch.tensor(IMAGENET_EIGVAL, dtype=torch.float64)) @ v.T


def pca_in_model_space(cov: torch.Tensor, dst: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA of the pixel covariance after conversion to ``dst`` channels (M cov M^T).

    For one-channel models the single "principal component" is the intensity direction
    and its eigenvalue the grey-level variance.
    """
    m = channel_matrix(cov.shape[0], dst)
    return pca(m @ cov @ m.T)


def imagenet_pca(dst: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The published ImageNet eigenpairs for 3-channel models; their grey projection for 1."""
    if dst == 3:
        return torch.tensor(IMAGENET_EIGVAL, dtype=torch.float64), torch.tensor(IMAGENET_EIGVEC, dtype=torch.float64)
    return pca_in_model_space(imagenet_covariance(), dst)
