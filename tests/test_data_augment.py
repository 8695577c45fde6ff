"""Augmentation statistics: flip rate, crop offsets, rotation range, translation, PCA noise scale;
the colour constants and the PCA computed from data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_fixtures import write_cifar10

from alexnet.data import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    BatchEvalTransform,
    BatchTrainTransform,
    DataConfig,
    build_loaders,
    pixel_moments,
)
from alexnet.data.batch_transforms import pca_noise, random_affine, random_pad_crop
from alexnet.data.color import LUMA_601, imagenet_covariance, imagenet_pca, pca_in_model_space


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def half_white(n, size=16):
    """n images whose left half is white: a flip moves the white to the right."""
    x = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    x[..., : size // 2] = 255
    return x


@pytest.mark.parametrize("flip", [True, False])
def test_flip_rate(flip):
    t = BatchTrainTransform(image_size=16, in_channels=1, flip=flip)
    out = t(half_white(4000), gen())
    flipped = out[:, 0, 0, -1] == 1.0
    assert torch.all(flipped | (out[:, 0, 0, 0] == 1.0))  # every image is one or the other
    rate = flipped.float().mean().item()
    if flip:
        assert 0.46 < rate < 0.54  # 4000 draws: 0.5 +- 4.5 sigma
    else:
        assert rate == 0.0


def test_padded_crop_offsets_cover_the_range_uniformly():
    p, n = 3, 7000
    image = torch.arange(1, 101, dtype=torch.uint8).view(1, 1, 10, 10)  # every pixel distinct, none 0
    out = random_pad_crop(image.expand(n, -1, -1, -1), p, gen(1))
    padded = F.pad(image, (p, p, p, p))
    offsets = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
    shifts = torch.stack([padded[0, :, dy : dy + 10, dx : dx + 10] for dy, dx in offsets])
    match = (out[:, None] == shifts[None]).flatten(2).all(-1)  # (n, 49)
    assert torch.all(match.sum(1) == 1)  # each crop is exactly one of the shifts
    freq = match.float().mean(0)
    assert freq.min() > 0.6 / 49 and freq.max() < 1.4 / 49


def test_loader_flip_and_crop_wiring():
    """Train batches are the eval images, mirrored or not, when only flips are on."""
    cfg = DataConfig(dataset="synthetic", synthetic_train=256, synthetic_size=12, image_size=12, crop=False)
    train, _, info = build_loaders(cfg, device="cpu", batch_size=256, seed=2)
    plain = BatchEvalTransform(image_size=12, in_channels=3, mean=info.mean, std=info.std)
    (x, _), idx = next(iter(train)), train.sampler.batches(0)[0]
    ref = plain(train.images[idx])
    same = (x - ref).abs().flatten(1).amax(1) < 1e-5
    mirrored = (x - ref.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert torch.all(same | mirrored)
    assert 0.35 < mirrored.float().mean().item() < 0.65


def line_angle(img: torch.Tensor) -> float:
    """Orientation (degrees) of the principal axis of a single-line image."""
    h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    m = img.double() / img.double().sum()
    cx, cy = (m * xs).sum(), (m * ys).sum()
    cxx, cyy, cxy = (m * (xs - cx) ** 2).sum(), (m * (ys - cy) ** 2).sum(), (m * (xs - cx) * (ys - cy)).sum()
    return math.degrees(0.5 * math.atan2(2 * cxy, cxx - cyy))


def test_rotation_stays_within_the_limit_and_spreads():
    n, size, limit = 300, 65, 20.0
    x = torch.zeros(n, 1, size, size)
    x[:, :, 32, 12:53] = 1.0  # a horizontal bar through the centre
    out = random_affine(x, limit, 0.0, gen(3))
    angles = np.array([line_angle(out[i, 0]) for i in range(n)])
    assert np.abs(angles).max() <= limit + 1.0
    assert np.abs(angles).max() > 0.8 * limit and angles.min() < 0 < angles.max()
    assert torch.equal(random_affine(x, 0.0, 0.0, gen()), x)  # off is the identity


def test_translation_is_bounded_by_the_fraction():
    n, size, frac = 400, 40, 0.25
    x = torch.zeros(n, 1, size, size)
    x[:, :, 18:22, 18:22] = 1.0
    out = random_affine(x, 0.0, frac, gen(4))
    ys, xs = torch.meshgrid(torch.arange(size).double(), torch.arange(size).double(), indexing="ij")
    mass = out[:, 0].double()
    cx = (mass * xs).sum((1, 2)) / mass.sum((1, 2)) - 19.5
    cy = (mass * ys).sum((1, 2)) / mass.sum((1, 2)) - 19.5
    assert cx.abs().max() <= frac * size + 0.5 and cy.abs().max() <= frac * size + 0.5
    assert cx.abs().max() > 0.8 * frac * size and cx.std() > 0.4 * frac * size / math.sqrt(3)


def test_pca_noise_scale_follows_eigenvalues():
    sigma, n = 0.1, 6000
    eigval = torch.tensor(IMAGENET_EIGVAL, dtype=torch.float64)
    eigvec = torch.tensor(IMAGENET_EIGVEC, dtype=torch.float64)
    x = torch.full((n, 3, 4, 4), 0.5)
    out = pca_noise(x, eigval.float(), eigvec.float(), sigma, gen(5))
    offset = (out - 0.5).double()
    assert torch.allclose(offset, offset[:, :, :1, :1].expand_as(offset), atol=1e-6)  # one shift per image
    alpha = (offset[:, :, 0, 0] @ eigvec) / eigval  # back to the per-component draws
    std = alpha.std(0)
    assert torch.allclose(std, torch.full((3,), sigma, dtype=torch.float64), rtol=0.06)
    assert alpha.mean(0).abs().max() < 4 * sigma / math.sqrt(n)
    # the channel shifts themselves: std of component k is sigma * lambda_k
    along = offset[:, :, 0, 0] @ eigvec
    assert torch.allclose(along.std(0), sigma * eigval, rtol=0.06)


def test_pca_noise_through_the_loader(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar10(tmp_path / "c", per_batch=100, n_val=2)
    cfg = DataConfig(dataset="cifar10", data_dir=str(tmp_path / "c"), download=False, image_size=32, crop=False,
                     flip=False, normalize=False, pca_color=0.1)  # fmt: skip
    train, _, info = build_loaders(cfg, device="cpu", batch_size=500)
    x, _ = next(iter(train))
    idx = train.sampler.batches(0)[0]
    clean = train.images[idx].double() / 255
    offset = (x.double() - clean).mean((2, 3))  # (N, 3), constant over pixels
    _, cov = pixel_moments(train.images)
    eigval, eigvec = pca_in_model_space(cov, 3)
    assert info.augment["pca_eigval"] == pytest.approx(eigval.tolist(), abs=1e-6)
    along = offset @ eigvec
    assert torch.allclose(along.std(0), 0.1 * eigval, rtol=0.15)


def test_imagenet_eigenvectors_are_orthonormal_and_as_published():
    v = torch.tensor(IMAGENET_EIGVEC, dtype=torch.float64)
    assert torch.allclose(v.T @ v, torch.eye(3, dtype=torch.float64), atol=2e-4)
    assert IMAGENET_EIGVAL == (0.2175, 0.0188, 0.0045)
    assert IMAGENET_EIGVEC[0] == (-0.5675, 0.7192, 0.4009)
    val, vec = imagenet_pca(3)
    assert torch.equal(val, torch.tensor(IMAGENET_EIGVAL, dtype=torch.float64))
    grey_val, grey_vec = imagenet_pca(1)  # the intensity direction of the same covariance
    w = torch.tensor(LUMA_601, dtype=torch.float64)
    assert grey_val.item() == pytest.approx((w @ imagenet_covariance() @ w).item())
    assert grey_vec.abs().item() == pytest.approx(1.0)


def test_pixel_moments_and_pca_match_numpy():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (50, 3, 6, 5), dtype=np.uint8))
    images[:, 1] = images[:, 0] // 2 + 60  # correlated channels
    mean, cov = pixel_moments(images, chunk=7)
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double().numpy() / 255
    np.testing.assert_allclose(mean.numpy(), pixels.mean(1), atol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(pixels, bias=True), atol=1e-12)
    val, vec = pca_in_model_space(cov, 3)
    np_val = np.sort(np.linalg.eigvalsh(np.cov(pixels, bias=True)))[::-1]
    np.testing.assert_allclose(val.numpy(), np_val, atol=1e-12)
    np.testing.assert_allclose(cov.numpy() @ vec.numpy(), vec.numpy() * val.numpy(), atol=1e-12)
    grey_val, _ = pca_in_model_space(cov[:1, :1], 1)  # one channel: the variance itself
    assert grey_val.item() == pytest.approx(cov[0, 0].item())


def test_normalisation_uses_the_dataset_figures():
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.1)
    t = BatchEvalTransform(image_size=4, in_channels=3, mean=mean, std=std)
    x = torch.full((2, 3, 4, 4), 153, dtype=torch.uint8)  # 0.6
    out = t(x)
    expect = torch.tensor([(0.6 - m) / s for m, s in zip(mean, std)])
    torch.testing.assert_close(out[0, :, 0, 0], expect)
