"""One epoch of training."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import AlexNetError
from .optim import LRSchedule


class NonFiniteLoss(AlexNetError):
    """The loss became NaN or infinite; the message says where and what to try."""


@dataclass
class StepOptions:
    """How each step runs: the one mixed-precision path and the knobs around it."""

    autocast: contextlib.AbstractContextManager | None = None  # torch.autocast(..., enabled=...) or None
    scaler: torch.amp.GradScaler | None = None  # enabled only for float16
    clip_grad: float | None = None
    channels_last: bool = False
    max_steps: int | None = None
    sync_every: int = 1  # read the loss back to the host every N steps (1 on CPU; more on GPU)


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    loss_fn: nn.Module,
    *,
    step: int,
    opts: StepOptions,
    progress: bool = False,
    desc: str = "train",
    start_batch: int = 0,
    partial: dict | None = None,
    stop=None,
) -> tuple[dict[str, float], int]:
    """Train over ``loader`` once; returns (metrics, global step).

    The epoch ends early at ``opts.max_steps`` or when ``stop.requested`` (a signal); then
    ``metrics["batches"]`` is less than ``len(loader)`` and ``metrics["partial"]`` holds the
    running sums, so a resumed run (``start_batch``, ``partial``) reports the same figures as
    one that was never stopped. The loader must already start at ``start_batch``.
    """
    model.train()
    autocast = opts.autocast if opts.autocast is not None else contextlib.nullcontext()
    scaler = opts.scaler if opts.scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
    device = next(model.parameters()).device
    partial = partial or {}
    loss_sum = torch.tensor(float(partial.get("loss_sum", 0.0)), device=device)
    correct = torch.tensor(int(partial.get("correct", 0)), device=device, dtype=torch.long)
    seen, lr = int(partial.get("seen", 0)), schedule.optimizer.param_groups[0]["lr"]
    seen_before, batches = seen, start_batch
    start = time.perf_counter()
    bar = tqdm(total=len(loader), initial=start_batch, desc=desc, disable=not progress, leave=False,
               dynamic_ncols=True, unit="batch")  # fmt: skip
    try:
        for i, (images, labels) in enumerate(loader, start=start_batch):
            if (opts.max_steps is not None and step >= opts.max_steps) or (stop is not None and stop.requested):
                break
            lr = schedule.step(step)
            if opts.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = model(images)
                loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if opts.clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            batches += 1
            n = labels.shape[0]
            seen += n
            loss_sum += loss.detach().float() * n
            correct += (logits.detach().argmax(1) == labels).sum()
            if (i + 1) % opts.sync_every == 0 or i + 1 == len(loader):
                mean_loss = loss_sum.item() / seen
                if not math.isfinite(mean_loss):
                    raise NonFiniteLoss(
                        f"loss became {loss.item()} at step {step} (lr {lr:.3g}); "
                        "try a lower --lr, --clip-grad 1.0, or --init torch"
                    )
                rate = (seen - seen_before) / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{correct.item() / seen:.3f}", img_s=f"{rate:.0f}", lr=f"{lr:.3g}")
            bar.update(1)
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    return {
        "train_loss": loss_sum.item() / seen if seen else float("nan"),
        "train_acc": correct.item() / seen if seen else float("nan"),
        "images_per_s": (seen - seen_before) / elapsed if elapsed > 0 else 0.0,
        "time_s": elapsed,
        "lr": lr,
        "seen": seen,
        "batches": batches,
        "complete": batches >= len(loader),
        "partial": {"loss_sum": loss_sum.item(), "correct": int(correct.item()), "seen": seen},
    }, step
