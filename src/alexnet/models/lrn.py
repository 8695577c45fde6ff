"""Local response normalisation across channels (Krizhevsky et al. 2012, section 3.3).

    b[c] = a[c] / (k + alpha / size * sum_{c' in window(c)} a[c']**2) ** beta

This is PyTorch's convention (``torch.nn.LocalResponseNorm``, also Caffe's): alpha is
divided by the window size. The module keeps that boundary so the implementation
behind it can be swapped without touching the models.

``groups`` keeps the window inside each group of channels: in the paper's two-GPU
layout each GPU normalised only its own half of the kernel maps.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LocalResponseNorm(nn.Module):
    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, groups: int = 1):
        super().__init__()
        if size < 1 or groups < 1:
            raise ValueError("size and groups must be positive")
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        halves = x.chunk(self.groups, dim=1)
        return torch.cat([F.local_response_norm(h, self.size, self.alpha, self.beta, self.k) for h in halves], 1)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, groups={self.groups}"
