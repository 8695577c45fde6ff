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

    Nothing is read back to the host until the last batch: counts, sums and the pictures'
    inputs are gathered on the device, so a GPU never waits for the host between batches.
    """
    model.eval()
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct5 = torch.zeros((), device=device, dtype=torch.long)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
    mistakes = FirstMistakes(keep_mistakes)
    samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (inputs, labels, probabilities)
    taken = 0
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
        # index_add_, not bincount: CUDA's bincount reads the largest value back to size its output.
        cells = labels * num_classes + pred
        confusion.index_add_(0, cells, torch.ones_like(cells))
        first = images[:, 0] if crops > 1 else images
        mistakes.add(first, labels, pred)
        if taken < keep_samples:
            n = min(keep_samples - taken, labels.shape[0])
            samples.append((first[:n].clone(), labels[:n], log_probs[:n].exp()))  # a view would keep the batch
            taken += n
    all_reduce_sum(loss_sum)
    all_reduce_sum(correct5)
    all_reduce_sum(confusion)
    matrix = confusion.view(num_classes, num_classes).cpu()
    n = int(matrix.sum())
    per_class_n = matrix.sum(1)
    per_class = (matrix.diag().double() / per_class_n.clamp(min=1)).tolist()
    kept_samples = []
    for inputs, truth, probs in samples:
        inputs, truth, probs = inputs.float().cpu(), truth.tolist(), probs.cpu()
        kept_samples += [(inputs[i], truth[i], probs[i]) for i in range(len(truth))]
    return {
        "top1": float(matrix.diag().sum()) / max(n, 1),
        "top5": float(correct5) / max(n, 1),
        "loss": float(loss_sum) / max(n, 1),
        "n": n,
        "per_class": per_class,
        "per_class_n": per_class_n.tolist(),
        "confusion": matrix.tolist(),
        "mistakes": mistakes.result(),
        "samples": kept_samples,
    }


class FirstMistakes:
    """The first ``keep`` misclassified inputs, in loader order, collected without a host sync.

    A buffer of at most ``keep`` candidates stays on the device; each batch's mistakes are
    merged in behind those already there (a stable sort on "is it a mistake") and the buffer is
    cut back to ``keep``, so its size never depends on data the host has not read.
    """

    def __init__(self, keep: int):
        self.keep = keep
        self.buffer: tuple[torch.Tensor, ...] | None = None  # (inputs, labels, predictions, is a mistake)

    def add(self, inputs: torch.Tensor, labels: torch.Tensor, pred: torch.Tensor) -> None:
        if self.keep <= 0:
            return
        batch = _first_mistakes((inputs, labels, pred, pred != labels), self.keep)
        if self.buffer is not None:
            batch = _first_mistakes(tuple(torch.cat([a, b]) for a, b in zip(self.buffer, batch)), self.keep)
        self.buffer = batch

    def result(self) -> list[tuple[torch.Tensor, int, int]]:
        if self.buffer is None:
            return []
        inputs, labels, pred, wrong = self.buffer
        inputs, labels, pred = inputs.float().cpu(), labels.tolist(), pred.tolist()
        return [(inputs[i], labels[i], pred[i]) for i, w in enumerate(wrong.tolist()) if w]


def _first_mistakes(rows: tuple[torch.Tensor, ...], keep: int) -> tuple[torch.Tensor, ...]:
    """The first ``keep`` rows, mistakes (``rows[3]`` true) before the rest, each in its order."""
    order = torch.argsort((~rows[3]).to(torch.uint8), stable=True)[:keep]
    return tuple(t.index_select(0, order) for t in rows)
