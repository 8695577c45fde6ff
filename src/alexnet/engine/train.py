"""One epoch of training."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
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
    skip_nonfinite: int = 0  # bad batches that may still be skipped in this run (--skip-nonfinite)
    save_every: int | None = None  # steps between mid-epoch checkpoints (--save-every)


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
    save: Callable[[dict], None] | None = None,
) -> tuple[dict[str, float], int]:
    """Train over ``loader`` once; returns (metrics, global step).

    The epoch ends early at ``opts.max_steps`` or when ``stop.requested`` (a signal); then
    ``metrics["batches"]`` is less than ``len(loader)`` and ``metrics["partial"]`` holds the
    running sums, so a resumed run (``start_batch``, ``partial``) reports the same figures as
    one that was never stopped. The loader must already start at ``start_batch``.

    A batch whose loss is NaN or infinite is caught before the optimizer steps, so the weights
    stay those of the last good step: it is skipped while ``opts.skip_nonfinite`` allows
    (it still counts as a step, keeping the schedule in line with the data), otherwise
    NonFiniteLoss is raised. Every ``opts.save_every`` steps ``save`` gets the running
    metrics (as an epoch cut short would return them) to write a mid-epoch checkpoint.
    """
    model.train()
    autocast = opts.autocast if opts.autocast is not None else contextlib.nullcontext()
    scaler = opts.scaler if opts.scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
    device = next(model.parameters()).device
    partial = partial or {}
    loss_sum = torch.tensor(float(partial.get("loss_sum", 0.0)), device=device)
    correct = torch.tensor(int(partial.get("correct", 0)), device=device, dtype=torch.long)
    seen, lr = int(partial.get("seen", 0)), schedule.optimizer.param_groups[0]["lr"]
    seen_before, batches, skipped = seen, start_batch, 0
    # On the CPU reading the loss back costs nothing; on a GPU only when skipping is asked for.
    check_each_step = device.type == "cpu" or opts.skip_nonfinite > 0
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
            if check_each_step and not torch.isfinite(loss).item():
                if skipped >= opts.skip_nonfinite:
                    raise non_finite(loss, step + 1, i, lr)
                skipped += 1
                step += 1
                batches += 1
                tqdm.write(f"skipped batch {i + 1} at step {step}: loss {loss.item()} "
                           f"(--skip-nonfinite: {opts.skip_nonfinite - skipped} more may be skipped)", file=sys.stderr)  # fmt: skip
                bar.update(1)
                continue
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
                    raise non_finite(loss, step, i, lr)
                rate = (seen - seen_before) / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{correct.item() / seen:.3f}", img_s=f"{rate:.0f}", lr=f"{lr:.3g}")
            bar.update(1)
            if save is not None and opts.save_every and step % opts.save_every == 0 and batches < len(loader):
                save({"batches": batches, "step": step, "complete": False, "nonfinite_skipped": skipped,
                      "partial": {"loss_sum": loss_sum.item(), "correct": int(correct.item()), "seen": seen}})  # fmt: skip
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
        "nonfinite_skipped": skipped,
        "partial": {"loss_sum": loss_sum.item(), "correct": int(correct.item()), "seen": seen},
    }, step


def non_finite(loss: torch.Tensor, step: int, batch: int, lr: float) -> NonFiniteLoss:
    return NonFiniteLoss(
        f"loss became {loss.item()} at step {step} (batch {batch + 1} of the epoch, lr {lr:.3g}); the last good "
        "checkpoint is kept; try a lower --lr, --clip-grad 1.0 or --init torch, or --skip-nonfinite N to skip bad batches"
    )
