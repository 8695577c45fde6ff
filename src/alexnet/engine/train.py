"""One epoch of training."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import AlexNetError
from .optim import LRSchedule
from .step_guard import StepGuard, guarded_update


class NonFiniteLoss(AlexNetError):
    """The loss became NaN or infinite; the message says where and what to try."""


@dataclass
class RunningSums:
    """One rank's running totals over the steps taken in an epoch (skipped batches count in none)."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    def to_dict(self) -> dict:
        """Plain numbers, as checkpoints keep them (``weights_only`` loads them back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> RunningSums:
        return cls(**{k: d[k] for k in ("loss_sum", "correct", "seen")}) if d else cls()


@dataclass
class EpochProgress:
    """How far an epoch got: all that a checkpoint of an unfinished epoch needs, so that the
    resumed epoch starts at the next batch and reports what an uninterrupted one would."""

    batches: int  # batches done in this epoch: the resumed epoch starts at this one
    step: int  # optimizer steps of the whole run
    complete: bool
    nonfinite_skipped: int  # bad batches skipped in this epoch so far
    sums: RunningSums


@dataclass
class EpochResult:
    """What ``train_one_epoch`` returns besides the step: the epoch's figures and where it stopped."""

    train_loss: float
    train_acc: float
    images_per_s: float
    time_s: float
    lr: float
    signal: int  # the signal that stopped the epoch (agreed by all ranks), 0 for none
    progress: EpochProgress


@dataclass
class StepOptions:
    """How each step runs: the one mixed-precision path and the knobs around it."""

    autocast: contextlib.AbstractContextManager | None = None  # torch.autocast(..., enabled=...) or None
    scaler: torch.amp.GradScaler | None = None  # enabled only for float16
    clip_grad: float | None = None
    channels_last: bool = False
    max_steps: int | None = None
    sync_every: int = 1  # read the step verdicts and metrics back every N steps (1 on CPU; more on GPU)
    skip_nonfinite: int = 0  # bad batches that may still be skipped in this run (--skip-nonfinite)
    save_every: int | None = None  # steps between mid-epoch checkpoints (--save-every)
    agree: bool = False  # DDP: every rank takes the same decisions (step_guard.py); a collective per step
    budget: object | None = None  # a budget.BudgetKeeper: may cut max_steps when the steps run slower than planned


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
    sums: RunningSums | None = None,
    stop=None,
    save: Callable[[EpochProgress], None] | None = None,
) -> tuple[EpochResult, int]:
    """Train over ``loader`` once; returns (result, global step).

    The epoch ends early at ``opts.max_steps`` or on a signal (``stop.requested``; under DDP
    when any rank received one); then ``result.progress`` is incomplete and holds the batch
    reached and the running sums, so a resumed run (``start_batch``, ``sums``) reports the same
    figures as one that was never stopped. The loader must already start at ``start_batch``.

    A batch whose loss is NaN or infinite never reaches the weights (step_guard.py): it is
    skipped while ``opts.skip_nonfinite`` allows (it still counts as a step, keeping the schedule
    in line with the data), otherwise every later step is skipped too and NonFiniteLoss is raised
    at the next read, every ``opts.sync_every`` steps. Every ``opts.save_every`` steps ``save``
    gets the epoch's progress (as an epoch cut short would return it) to write a mid-epoch
    checkpoint; it is called on every rank.
    """
    model.train()
    autocast = opts.autocast if opts.autocast is not None else contextlib.nullcontext()
    scaler = opts.scaler if opts.scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
    device = next(model.parameters()).device
    before = sums or RunningSums()
    # Running sums stay on the device (torch.full fills there: no host-to-device copy).
    loss_sum = torch.full((), float(before.loss_sum), device=device)
    correct = torch.full((), int(before.correct), device=device, dtype=torch.long)
    seen = torch.full((), int(before.seen), device=device, dtype=torch.long)
    seen_before, lr = int(before.seen), schedule.optimizer.param_groups[0]["lr"]
    batches, skipped, signum = start_batch, 0, 0
    guard = StepGuard(device, allowance=opts.skip_nonfinite, agree=opts.agree)
    start = time.perf_counter()
    bar = tqdm(total=len(loader), initial=start_batch, desc=desc, disable=not progress, leave=False,
               dynamic_ncols=True, unit="batch")  # fmt: skip

    def host_sums() -> RunningSums:
        """The running sums on the host (a sync): what a checkpoint of an unfinished epoch keeps."""
        n, right = torch.stack([seen, correct]).cpu().tolist()
        return RunningSums(loss_sum=loss_sum.item(), correct=right, seen=n)

    def settle() -> int:
        """Read the verdicts (a host sync): report skips, raise on a failure; the agreed signal (0: none)."""
        nonlocal skipped
        reading = guard.read()
        for at, batch, value, elsewhere in reading.skipped:
            skipped += 1
            tqdm.write(f"skipped batch {batch + 1} at step {at + 1}: loss {'non-finite on another rank' if elsewhere else value} "
                       f"(--skip-nonfinite: {opts.skip_nonfinite - skipped} more may be skipped)", file=sys.stderr)  # fmt: skip
        if reading.failed is not None:
            raise non_finite(*reading.failed)
        if progress:
            now = host_sums()
            if now.seen:
                n, rate = now.seen, (now.seen - seen_before) / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{now.loss_sum / n:.4f}", acc=f"{now.correct / n:.3f}", img_s=f"{rate:.0f}", lr=f"{lr:.3g}")
        return reading.signal

    try:
        for i, (images, labels) in enumerate(loader, start=start_batch):
            if not opts.agree and stop is not None:  # one process: stop at once
                signum = stop.signum
            if signum or (opts.max_steps is not None and step >= opts.max_steps):
                break
            lr = schedule.step(step)
            if opts.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = model(images)
                # A rank handed an empty batch (every image unreadable) still steps with the
                # others, contributing zero gradients.
                loss = loss_fn(logits, labels) if labels.numel() else logits.float().sum() * 0.0

            # Skip (bad loss here or on any rank, or too many so far): decided on the device.
            skip = guard.verdict(loss, step=step, batch=i, lr=lr, signal=stop.signum if stop is not None else 0)
            if scaler.is_enabled():
                loss = torch.where(skip, float("nan"), loss)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if opts.clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
            guarded_update(optimizer, scaler, skip)
            step += 1
            batches += 1
            bar.update(1)

            # Metrics of the steps that were taken, summed on the device.
            n = labels.shape[0]
            seen += (~skip).long() * n
            loss_sum += torch.where(skip, 0.0, loss.detach().float() * n)
            correct += torch.where(skip, 0, (logits.detach().argmax(1) == labels).sum())

            # Read back (a sync) every sync_every steps and before a save; all ranks at the same steps.
            due_save = save is not None and opts.save_every and step % opts.save_every == 0 and batches < len(loader)
            if step % opts.sync_every == 0 or batches >= len(loader) or due_save or step == opts.max_steps:
                signum = settle() or signum
            if opts.budget is not None and opts.budget.due(step) and batches < len(loader):
                total = opts.budget.check(step)
                opts.max_steps = total if opts.max_steps is None else min(opts.max_steps, total)
            if due_save:
                save(EpochProgress(batches=batches, step=step, complete=False, nonfinite_skipped=skipped, sums=host_sums()))
        signum = settle() or signum  # what the last read did not see (a loader that ended early)
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    final = host_sums()
    n = final.seen
    reached = EpochProgress(batches=batches, step=step, complete=batches >= len(loader), nonfinite_skipped=skipped,
                            sums=final)  # fmt: skip
    return EpochResult(
        train_loss=final.loss_sum / n if n else float("nan"),
        train_acc=final.correct / n if n else float("nan"),
        images_per_s=(n - seen_before) / elapsed if elapsed > 0 else 0.0,
        time_s=elapsed,
        lr=lr,
        signal=signum,
        progress=reached,
    ), step


def non_finite(step: int, batch: int, lr: float, loss: float, elsewhere: bool = False) -> NonFiniteLoss:
    """``step``: 0-based, the step whose loss was bad."""
    what = "became non-finite on another rank" if elsewhere else f"became {loss}"
    return NonFiniteLoss(
        f"loss {what} at step {step + 1} (batch {batch + 1} of the epoch, lr {lr:.3g}); the last good "
        "checkpoint is kept; try a lower --lr, --clip-grad 1.0 or --init torch, or --skip-nonfinite N to skip bad batches"
    )
