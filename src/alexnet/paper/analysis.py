"""The tensor work behind the paper's pictures: first-layer kernels as a grid (Figure 3),
nearest neighbors in the last hidden layer (Figure 4), and the feature maps of each
convolution. Everything here returns tensors; plots.py draws them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..data.eval_split import EvalSplit
from ..errors import AlexNetError

FEATURE_CACHE_VERSION = 1


# ------------------------------------------------------------------------------ filters


def convolutions(model: nn.Module) -> list[nn.Conv2d]:
    """The model's 2-D convolutions in the order they were registered (= applied, for AlexNet)."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def first_layer_kernels(model: nn.Module) -> tuple[torch.Tensor, int]:
    """conv1's weight (out, in, k, k) and how many groups conv2 splits conv1's outputs into:
    2 for the paper's two-GPU layout (kernels 0-47 feed one half, 48-95 the other), else 1."""
    convs = convolutions(model)
    if not convs:
        raise AlexNetError(f"{type(model).__name__} has no convolution")
    groups = convs[1].groups if len(convs) > 1 else 1
    return convs[0].weight.detach().float().cpu(), groups


def scale_each(x: torch.Tensor) -> torch.Tensor:
    """Min-max scale every item of a batch (N, ...) to [0, 1] on its own; a constant item is 0.5."""
    flat = x.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    scaled = torch.where(span > 0, (flat - lo) / span.clamp(min=1e-12), torch.full_like(flat, 0.5))
    return scaled.view_as(x)


def tile(images: torch.Tensor, ncols: int, pad: int = 1, pad_value: float = 1.0) -> torch.Tensor:
    """(N, C, h, w) -> one (C, H, W) image: rows of ``ncols`` tiles with ``pad`` pixels around each."""
    n, c, h, w = images.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    grid = images.new_full((c, nrows * (h + pad) + pad, ncols * (w + pad) + pad), pad_value)
    for i in range(n):  # at most a few hundred tiles; a copy each
        r, col = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def kernels_as_images(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, k, k) -> (out, C, k, k) in [0, 1], each kernel scaled to its own range.

    One input channel stays grey and three are drawn as RGB (the paper's Figure 3); any
    other count is shown as the mean over input channels.
    """
    w = weight.detach().float().cpu()
    if w.shape[1] not in (1, 3):
        w = w.mean(1, keepdim=True)
    return scale_each(w)


def filter_blocks(weight: torch.Tensor, groups: int = 1, ncols: int = 16, pad: int = 1) -> list[torch.Tensor]:
    """One (C, H, W) grid per group of output channels: for the grouped paper model, kernels
    0-47 and 48-95, the two halves that feed the two conv2 groups."""
    if groups < 1 or weight.shape[0] % groups:
        raise AlexNetError(f"cannot split {weight.shape[0]} kernels into {groups} groups")
    images = kernels_as_images(weight)
    per = weight.shape[0] // groups
    return [tile(images[g * per : (g + 1) * per], ncols, pad) for g in range(groups)]


def filter_grid(weight: torch.Tensor, groups: int = 1, ncols: int = 16, pad: int = 1, gap: int = 4) -> torch.Tensor:
    """conv1's kernels as one (C, H, W) image in [0, 1]: the blocks of ``filter_blocks`` stacked
    top to bottom, ``gap`` rows apart. 96 kernels of 11x11 in rows of 16: (C, 73, 193)."""
    blocks = filter_blocks(weight, groups, ncols, pad)
    parts: list[torch.Tensor] = []
    for block in blocks:
        if parts:
            parts.append(block.new_ones(block.shape[0], gap, block.shape[2]))
        parts.append(block)
    return torch.cat(parts, dim=1)


# ------------------------------------------------------------------------------ feature maps


def feature_maps(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """[("conv1", (C, H, W)), ...]: each convolution's output after its ReLU, for one image (C, S, S).

    Forward hooks on the ReLU that follows each convolution (the ReLUs are in place, so
    the convolution's own output would be overwritten by the time it could be read).
    """
    hooks, maps = [], []
    pending: str | None = None
    index = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            index += 1
            pending = f"conv{index}"
        elif isinstance(module, nn.ReLU) and pending is not None:
            name = pending

            def keep(_module, _inputs, output, name=name):
                maps.append((name, output.detach()[0].float().cpu().clone()))

            hooks.append(module.register_forward_hook(keep))
            pending = None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x.unsqueeze(0).to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return maps


def feature_map_grid(maps: torch.Tensor, channels: int = 32, pad: int = 1) -> torch.Tensor:
    """The first ``channels`` maps of a layer (C, H, W) as one (1, H', W') image in a square-ish grid,
    each map scaled by its own maximum (ReLU outputs are >= 0; a map that is all zero stays 0).
    The padding is NaN, so that a plot can tell it from a silent map."""
    shown = maps[:channels].float()
    peak = shown.flatten(1).max(1).values.clamp(min=1e-12)
    n = shown.shape[0]
    ncols = math.ceil(math.sqrt(n))
    ncols = next((c for c in range(ncols, ncols + 4) if n % c == 0), ncols)  # full rows where possible
    return tile((shown / peak[:, None, None]).unsqueeze(1), ncols, pad, pad_value=math.nan)


# ------------------------------------------------------------------------------ neighbors


def last_linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise AlexNetError(f"{type(model).__name__} has no fully connected layer")
    return layers[-1]


@torch.no_grad()
def penultimate(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last hidden layer for a batch: the input of the last Linear (fc8), i.e. fc7 after
    its ReLU for AlexNet, (B, 4096) float32. The model should be in eval mode (no dropout)."""
    captured: list[torch.Tensor] = []
    handle = last_linear(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    try:
        model(images)
    finally:
        handle.remove()
    return captured[0].float()


@dataclass
class FeatureBank:
    """Last-hidden-layer features of a split: ``features`` float16 (N, D); ``indices`` (N,) the
    split index of each row (a file that could not be read has no row)."""

    features: torch.Tensor
    indices: torch.Tensor


def extract_features(
    model: nn.Module, split: EvalSplit, *, batch_size: int = 256, device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> FeatureBank:  # fmt: skip
    """Features of every image of ``split``, computed in batches, stored as float16."""
    model.eval()
    feats, indices = [], []
    done = 0
    for idx, images in split.batches(batch_size, device):
        feats.append(penultimate(model, images).to(torch.float16).cpu())
        indices.append(idx)
        done += len(idx)
        if progress is not None:
            progress(done, len(split))
    if not feats:
        raise AlexNetError(f"no readable image in the {split.name} split")
    return FeatureBank(torch.cat(feats), torch.cat(indices).to(torch.int64))


def feature_cache_path(cache_dir: Path, checkpoint: Path, split: EvalSplit) -> tuple[Path, dict]:
    """Where the features of ``split`` under ``checkpoint`` are cached, and what they depend on.

    The key covers the checkpoint file (path, size, modification time) and the images
    (source, count), so a retrained or replaced checkpoint gets new features.
    """
    stat = checkpoint.stat()
    meta = {
        "version": FEATURE_CACHE_VERSION,
        "checkpoint": str(checkpoint.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "split": split.name,
        "source": split.source,
        "count": len(split),
    }
    key = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir / f"features-{split.name}-{checkpoint.stem}-{key}.pt", meta


def cached_features(
    model: nn.Module, checkpoint: str | os.PathLike, split: EvalSplit, cache_dir: str | os.PathLike, *,
    batch_size: int = 256, device: torch.device | str = "cpu", log: Callable[[str], None] = print,
) -> tuple[FeatureBank, bool]:  # fmt: skip
    """The split's features from the cache when it matches, else computed and cached.

    Returns (bank, from_cache). Older caches of the same checkpoint and split are removed;
    a cache that cannot be written is a warning, not an error.
    """
    checkpoint, cache_dir = Path(checkpoint), Path(cache_dir)
    path, meta = feature_cache_path(cache_dir, checkpoint, split)
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("meta") == meta:
                return FeatureBank(stored["features"], stored["indices"]), True
        except Exception:  # a damaged cache is recomputed
            pass
    log(f"computing last-hidden-layer features of {len(split)} {split.name} images (cached in {cache_dir})")
    bank = extract_features(model, split, batch_size=batch_size, device=device)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for old in cache_dir.glob(f"features-{split.name}-{checkpoint.stem}-*.pt"):
            old.unlink()
        tmp = path.with_suffix(".tmp")
        torch.save({"meta": meta, "features": bank.features, "indices": bank.indices}, tmp)
        os.replace(tmp, path)
    except OSError as e:
        print(f"warning: cannot cache features in {cache_dir}: {e.strerror or e}", file=sys.stderr)
    return bank, False


def nearest_neighbors(
    queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean k nearest rows of ``bank`` (N, D) for each query (Q, D): (distances, rows), both (Q, k),
    nearest first.

    Squared distances come from ||q||^2 - 2 q.b + ||b||^2 (one matrix product per chunk of
    the bank, so the bank is never all in float32 at once); the k winners' distances are
    then recomputed directly, since the expansion loses precision near 0.
    """
    if k < 1:
        raise AlexNetError(f"k must be at least 1, got {k}")
    q = queries.float()
    q2 = (q * q).sum(1, keepdim=True)  # (Q, 1)
    best_d = q.new_empty(q.shape[0], 0)
    best_i = torch.empty(q.shape[0], 0, dtype=torch.int64)
    for start in range(0, bank.shape[0], chunk):
        b = bank[start : start + chunk].float()
        d2 = torch.addmm(q2 + (b * b).sum(1)[None, :], q, b.T, alpha=-2.0)  # (Q, chunk)
        rows = torch.arange(start, start + b.shape[0]).expand(q.shape[0], -1)
        cand_d, cand_i = torch.cat([best_d, d2], 1), torch.cat([best_i, rows], 1)
        best_d, pos = cand_d.topk(min(k, cand_d.shape[1]), dim=1, largest=False)
        best_i = cand_i.gather(1, pos)
    exact = (bank[best_i].float() - q[:, None, :]).norm(dim=-1)  # (Q, k)
    exact, order = exact.sort(dim=1)
    return exact, best_i.gather(1, order)


def query_features(model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Last-hidden-layer features of model inputs (Q, C, S, S), rounded to float16 as the bank's
    are, so that a copy of a bank image lands on it (up to how a batch of another size rounds)."""
    return penultimate(model.eval(), images.to(device)).to(torch.float16).cpu()


def bank_features(bank: FeatureBank, indices: Sequence[int]) -> torch.Tensor | None:
    """The stored features of split images that are in the bank; None if one is missing."""
    rows = []
    for i in indices:
        hit = (bank.indices == i).nonzero()
        if len(hit) == 0:
            return None
        rows.append(int(hit[0, 0]))
    return bank.features[rows]


def neighbors(features: torch.Tensor, bank: FeatureBank, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query's features (Q, D), the ``k`` bank images nearest in the last hidden layer:
    (distances (Q, k), split indices (Q, k)), nearest first."""
    dist, rows = nearest_neighbors(features, bank.features, min(k, bank.features.shape[0]))
    return dist, bank.indices[rows]


def feature_scale(bank: FeatureBank, sample: int = 1000) -> float:
    """The median length of the bank's feature vectors: the scale distances are read against."""
    return float(bank.features[:sample].float().norm(dim=1).median())
