"""A time budget for a run: how many epochs of its schedule fit, measured on this machine.

``--time-budget MIN`` (the quick preset's 15 minutes) times a few real training steps and
evaluation batches on a throw-away copy of the model before training starts, then plans
the run for as many whole epochs as fit, never more than ``--epochs``. The schedule is
planned on those epochs, so a one-cycle run still anneals to its end; nothing is cut off
mid-schedule. The random state is put back afterwards, so the measurement does not change
what the run computes, only (through the epochs) how long it is.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from .checkpoint import rng_state, set_rng_state
from .optim import LRSchedule, create_optimizer
from .train import StepOptions, train_one_epoch

# Reserved for what the measurement does not see: checkpoint writes, the end-of-run plots,
# and steps slower than the first few.
MARGIN = 0.07


@dataclass
class Speed:
    step_s: float  # one training step, augmentation included
    eval_batch_s: float  # one evaluation batch (all its crops)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_speed(model: nn.Module, cfg, train_loader, val_loader, loss_fn: nn.Module, opts: StepOptions) -> Speed:
    """Time real steps and evaluation batches of a copy of ``model``; the model, the loaders'
    epoch and the random state are as before afterwards."""
    saved = rng_state()
    device = next(model.parameters()).device
    trial = copy.deepcopy(model)
    optimizer = create_optimizer(trial.parameters(), cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
                                 nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)  # fmt: skip
    schedule = LRSchedule(optimizer, "none", total_steps=len(train_loader), steps_per_epoch=len(train_loader))
    quiet = dataclasses.replace(opts, save_every=None, skip_nonfinite=10**9)
    timed = min(2, len(train_loader) - 1)  # after one warm-up step (oneDNN's primitive caches, the allocator)
    train_loader.set_epoch(0)
    t0 = time.perf_counter()
    train_one_epoch(trial, train_loader, optimizer, schedule, loss_fn, step=0, opts=dataclasses.replace(quiet, max_steps=1))
    _synchronize(device)
    step_s = time.perf_counter() - t0
    if timed > 0:
        train_loader.set_epoch(0, start_batch=1)
        t0 = time.perf_counter()
        train_one_epoch(trial, train_loader, optimizer, schedule, loss_fn, step=1, start_batch=1,
                        opts=dataclasses.replace(quiet, max_steps=1 + timed))  # fmt: skip
        _synchronize(device)
        step_s = (time.perf_counter() - t0) / timed
    times = []
    trial.eval()
    autocast = opts.autocast if opts.autocast is not None else torch.autocast(device.type, enabled=False)
    with torch.no_grad():
        val_iter = iter(val_loader)
        for images, _ in itertools.islice(val_iter, 3):
            t0 = time.perf_counter()
            batch = images.flatten(0, 1) if images.ndim == 5 else images
            if opts.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast:
                trial(batch)
            _synchronize(device)
            times.append(time.perf_counter() - t0)
        del val_iter
    eval_batch_s = min(times[1:] or times) if times else 0.0
    del trial, optimizer
    train_loader.set_epoch(0)
    set_rng_state(saved)
    return Speed(step_s=step_s, eval_batch_s=eval_batch_s)


def epoch_seconds(speed: Speed, steps_per_epoch: int, eval_batches: int) -> float:
    return steps_per_epoch * speed.step_s + eval_batches * speed.eval_batch_s


def epochs_within(budget_s: float, elapsed_s: float, speed: Speed, steps_per_epoch: int, eval_batches: int,
                  max_epochs: int) -> int:  # fmt: skip
    """Whole epochs that fit in what is left of ``budget_s``: at least 1, at most ``max_epochs``."""
    per_epoch = epoch_seconds(speed, steps_per_epoch, eval_batches)
    left = budget_s * (1 - MARGIN) - elapsed_s
    if per_epoch <= 0:
        return max_epochs
    return max(1, min(max_epochs, math.floor(left / per_epoch)))


def plan_epochs(model: nn.Module, cfg, train_loader, val_loader, loss_fn: nn.Module, opts: StepOptions,
                elapsed_s: float) -> dict:  # fmt: skip
    """Measure, then plan ``cfg.time_budget`` minutes: the epochs, what was measured, and a line saying so."""
    speed = measure_speed(model, cfg, train_loader, val_loader, loss_fn, opts)
    steps, batches = len(train_loader), len(val_loader)
    epochs = epochs_within(cfg.time_budget * 60, elapsed_s, speed, steps, batches, cfg.epochs)
    per_epoch = epoch_seconds(speed, steps, batches)
    message = (
        f"time budget {cfg.time_budget:g} min: a training step takes {speed.step_s:.2f} s and a validation pass "
        f"{speed.eval_batch_s * batches:.0f} s here, so {epochs} of {cfg.epochs} epochs fit (about "
        f"{per_epoch / 60:.1f} min each)"
    )
    if per_epoch > cfg.time_budget * 60:
        message += "; one epoch is more than the budget, training one anyway"
    return {"epochs": epochs, "max_epochs": cfg.epochs, "step_s": speed.step_s, "eval_batch_s": speed.eval_batch_s,
            "epoch_s": per_epoch, "message": message}  # fmt: skip
