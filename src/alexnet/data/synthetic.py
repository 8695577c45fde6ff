"""Deterministic random images and labels of any size, channel count and class count.

Each class has a smooth random prototype (a 4x4 random pattern, bilinearly enlarged);
an image is half its class's prototype and half uniform noise, so the task is learnable
(a smoke test can watch the loss fall) yet nothing about it is real. The same
``synthetic_seed`` gives the same tensors on every machine; labels are uniform.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .color import pixel_moments
from .in_memory import SmallDataset


def make_synthetic(
    *, train: int, val: int, num_classes: int, size: int, channels: int = 3, seed: int = 0
) -> SmallDataset:
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, channels, 4, 4, generator=g)
    prototypes = F.interpolate(prototypes, size=(size, size), mode="bilinear", align_corners=False)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, num_classes, (n,), generator=g)
        noise = torch.rand(n, channels, size, size, generator=g)
        images = (0.5 * prototypes[labels] + 0.5 * noise).mul_(255).round_().to(torch.uint8)
        return images, labels

    train_x, train_y = split(train)
    val_x, val_y = split(val)
    mean, cov = pixel_moments(train_x)
    std = cov.diagonal().sqrt()
    return SmallDataset(
        "synthetic",
        train_x,
        train_y,
        val_x,
        val_y,
        [f"class_{i}" for i in range(num_classes)],
        tuple(round(v, 4) for v in mean.tolist()),
        tuple(round(max(v, 1e-3), 4) for v in std.tolist()),
        f"synthetic (seed {seed})",
    )
