"""Evaluation: top-1, top-5, loss, per-class accuracy and the confusion matrix, over all ranks."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .distributed import all_reduce_sum


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    num_classes: int,
    *,
    autocast: contextlib.AbstractContextManager | None = None,
    channels_last: bool = False,
    keep_mistakes: int = 0,
    keep_samples: int = 0,
    progress: bool = False,
    desc: str = "eval",
) -> dict:
    """Evaluate on ``loader``; batches of shape (B, T, C, H, W) are T crops whose softmax is averaged.

    Counts are summed over ranks, so with a sharded loader (no padding) every sample is
    counted exactly once. ``mistakes`` holds up to ``keep_mistakes`` misclassified inputs
    of this rank (first crop) with their labels and predictions, for pictures; ``samples``
    the first ``keep_samples`` inputs of this rank, right or wrong, with their labels and
    predicted class probabilities.
    """
    model.eval()
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct5 = torch.zeros((), device=device, dtype=torch.long)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
    mistakes: list[tuple[torch.Tensor, int, int]] = []
    samples: list[tuple[torch.Tensor, int, torch.Tensor]] = []
    k = min(5, num_classes)
    for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True, unit="batch"):
        crops = images.shape[1] if images.ndim == 5 else 1
        batch = images.flatten(0, 1) if crops > 1 else images
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(batch)
        if crops > 1:
            log_probs = F.softmax(logits.float().view(labels.shape[0], crops, -1), dim=-1).mean(1).log()
        else:
            log_probs = F.log_softmax(logits.float(), dim=-1)
        loss_sum += F.nll_loss(log_probs, labels, reduction="sum").double()
        top = log_probs.topk(k, dim=1).indices
        pred = top[:, 0]
        correct5 += (top == labels[:, None]).any(1).sum()
        confusion += torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
        if len(mistakes) < keep_mistakes:
            wrong = (pred != labels).nonzero().flatten()[: keep_mistakes - len(mistakes)]
            first = images[:, 0] if crops > 1 else images
            mistakes += [(first[i].float().cpu(), int(labels[i]), int(pred[i])) for i in wrong.tolist()]
        if len(samples) < keep_samples:
            first = images[:, 0] if crops > 1 else images
            probs = log_probs[: keep_samples - len(samples)].exp().cpu()
            samples += [(first[i].float().cpu(), int(labels[i]), probs[i]) for i in range(len(probs))]
    all_reduce_sum(loss_sum)
    all_reduce_sum(correct5)
    all_reduce_sum(confusion)
    matrix = confusion.view(num_classes, num_classes).cpu()
    n = int(matrix.sum())
    per_class_n = matrix.sum(1)
    per_class = (matrix.diag().double() / per_class_n.clamp(min=1)).tolist()
    return {
        "top1": float(matrix.diag().sum()) / max(n, 1),
        "top5": float(correct5) / max(n, 1),
        "loss": float(loss_sum) / max(n, 1),
        "n": n,
        "per_class": per_class,
        "per_class_n": per_class_n.tolist(),
        "confusion": matrix.tolist(),
        "mistakes": mistakes,
        "samples": samples,
    }
