"""A time budget for a run: how many epochs of its schedule fit, measured on this machine.

``--time-budget MIN`` (the quick preset's 15 minutes) times a few real training steps and
evaluation batches on a throw-away copy of the model before training starts, then plans
the run for the steps that fit, never more than ``--epochs``: whole epochs, and what time
they leave as a last, shorter epoch. The schedule is planned on those steps, so a one-cycle
run still anneals to its end; nothing is cut off mid-schedule. The random state is put back
afterwards, so the measurement does not change what the run computes, only (through the
steps) how long it is.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from . import distributed as dist
from .checkpoint import rng_state, set_rng_state
from .optim import LRSchedule, create_optimizer
from .train import StepOptions, train_one_epoch

# Reserved for what the measurement does not see: checkpoint writes, the end-of-run plots,
# and steps a little slower than the first few (benchmarks/budget_estimate.py compares the
# estimate with later steps; figures in benchmarks/RESULTS.md).
MARGIN = 0.10
WARMUP_STEPS = 3
TIMED_STEPS = 5
EVAL_BATCHES = 4  # the first one is a warm-up
# The time left after the whole epochs trains part of one more when it buys at least this much
# of an epoch; less is not worth a row of metrics of its own.
MIN_LAST_EPOCH = 0.1


@dataclass
class Speed:
    step_s: float  # one training step, augmentation included
    eval_batch_s: float  # one evaluation batch (all its crops)
    step_times: tuple[float, ...] = ()  # every step timed, warm-up included


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """The loader, noting the time each batch is handed out: the gap between two is one whole
    step of the training loop (forward, backward, update, the next batch), timed inside one
    iteration so that starting the iterator is not counted as a step."""

    def __init__(self, loader, device: torch.device):
        self.loader, self.device, self.ticks = loader, device, []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            _synchronize(self.device)
            self.ticks.append(time.perf_counter())
            yield batch

    def step_times(self, steps: int) -> list[float]:
        """The time of each of the ``steps`` steps just run. A step ends when the next batch is
        asked for; where the loader had no next batch, the last one ends now."""
        _synchronize(self.device)
        ends = self.ticks[1:] if len(self.ticks) > steps else [*self.ticks[1:], time.perf_counter()]
        return [b - a for a, b in zip(self.ticks, ends)]


def measure_speed(model: nn.Module, cfg, train_loader, val_loader, loss_fn: nn.Module, opts: StepOptions) -> Speed:
    """Time real steps and evaluation batches of a copy of ``model``; the model, the loaders'
    epoch and the random state are as before afterwards.

    The first WARMUP_STEPS steps are not counted: oneDNN builds its primitives and the
    allocator grows, so the first few steps of a fresh process are slower than later ones
    (benchmarks/budget_estimate.py). The estimate is the median of the next TIMED_STEPS, all in
    one pass of the loader, so that an odd slow step does not count.
    """
    device = next(model.parameters()).device
    saved = rng_state(device)
    trial = copy.deepcopy(model)
    optimizer = create_optimizer(trial.parameters(), cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
                                 nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)  # fmt: skip
    schedule = LRSchedule(optimizer, "none", total_steps=len(train_loader), steps_per_epoch=len(train_loader))
    steps = min(WARMUP_STEPS + TIMED_STEPS, len(train_loader))
    # Each rank times its own copy: no decisions to agree on (agree=False), no collectives.
    quiet = dataclasses.replace(opts, save_every=None, skip_nonfinite=10**9, max_steps=steps, agree=False)
    clock = StepClock(train_loader, device)
    train_loader.set_epoch(0)
    train_one_epoch(trial, clock, optimizer, schedule, loss_fn, step=0, opts=quiet)
    step_times = clock.step_times(steps)
    counted = step_times[WARMUP_STEPS:] or step_times[-1:]
    step_s = statistics.median(counted) if counted else 0.0
    times = []
    trial.eval()
    autocast = opts.autocast if opts.autocast is not None else torch.autocast(device.type, enabled=False)
    with torch.no_grad():
        val_iter = iter(val_loader)
        for images, _ in itertools.islice(val_iter, EVAL_BATCHES):
            t0 = time.perf_counter()
            batch = images.flatten(0, 1) if images.ndim == 5 else images
            if opts.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast:
                trial(batch)
            _synchronize(device)
            times.append(time.perf_counter() - t0)
        del val_iter
    eval_batch_s = statistics.median(times[1:] or times) if times else 0.0
    del trial, optimizer
    train_loader.set_epoch(0)
    set_rng_state(saved, device)
    return Speed(step_s=step_s, eval_batch_s=eval_batch_s, step_times=tuple(step_times))


def epoch_seconds(speed: Speed, steps_per_epoch: int, eval_batches: int) -> float:
    return steps_per_epoch * speed.step_s + eval_batches * speed.eval_batch_s


def plan_within(budget_s: float, elapsed_s: float, speed: Speed, steps_per_epoch: int, eval_batches: int,
                max_epochs: int) -> tuple[int, int]:  # fmt: skip
    """The epochs and training steps that fit in what is left of ``budget_s``.

    Whole epochs first (at most ``max_epochs``); the time they leave goes to a last, shorter
    epoch when it buys at least MIN_LAST_EPOCH of one (its evaluation is paid for too). Where not
    even one epoch fits, the run is one shorter epoch (one step at least). Returns (epochs,
    steps): steps is less than epochs * steps_per_epoch when the last epoch is cut.
    """
    per_epoch = epoch_seconds(speed, steps_per_epoch, eval_batches)
    left = max(0.0, budget_s * (1 - MARGIN) - elapsed_s)  # set-up may have spent it all
    if per_epoch <= 0 or speed.step_s <= 0:
        return max_epochs, max_epochs * steps_per_epoch
    whole = min(max_epochs, math.floor(left / per_epoch))
    extra = math.floor((left - whole * per_epoch - eval_batches * speed.eval_batch_s) / speed.step_s)
    extra = min(extra, steps_per_epoch - 1)
    if whole == 0:
        return 1, max(1, extra)
    if whole < max_epochs and extra >= max(1, MIN_LAST_EPOCH * steps_per_epoch):
        return whole + 1, whole * steps_per_epoch + extra
    return whole, whole * steps_per_epoch


def plan_epochs(model: nn.Module, cfg, train_loader, val_loader, loss_fn: nn.Module, opts: StepOptions,
                started: float) -> dict:  # fmt: skip
    """Measure, then plan ``cfg.time_budget`` minutes from ``started`` (a ``time.perf_counter()``;
    set-up and the measurement itself are spent): the epochs and steps, what was measured, and a
    line saying so."""
    speed = measure_speed(model, cfg, train_loader, val_loader, loss_fn, opts)
    per_epoch_steps, batches = len(train_loader), len(val_loader)
    elapsed_s = time.perf_counter() - started
    epochs, steps = plan_within(cfg.time_budget * 60, elapsed_s, speed, per_epoch_steps, batches, cfg.epochs)
    per_epoch = epoch_seconds(speed, per_epoch_steps, batches)
    fit = f"{epochs} of {cfg.epochs} epochs fit"
    if steps < epochs * per_epoch_steps:
        cut = steps - (epochs - 1) * per_epoch_steps
        part = f"{epochs - 1} whole and {cut} of the next {per_epoch_steps} steps" if epochs > 1 else \
            f"{cut} of its {per_epoch_steps} steps"
        fit = f"{steps / per_epoch_steps:.2f} of {cfg.epochs} epochs fit ({part})"
    if steps * speed.step_s + epochs * batches * speed.eval_batch_s > cfg.time_budget * 60 - elapsed_s:
        fit += "; even that is more than the budget, training it anyway"
    message = (
        f"time budget {cfg.time_budget:g} min: a training step takes {speed.step_s:.2f} s and a validation pass "
        f"{speed.eval_batch_s * batches:.0f} s here, so {fit}, about {per_epoch / 60:.1f} min an epoch"
    )
    return {"epochs": epochs, "train_steps": steps, "max_epochs": cfg.epochs, "step_s": speed.step_s,
            "eval_batch_s": speed.eval_batch_s, "epoch_s": per_epoch, "setup_s": elapsed_s, "message": message}  # fmt: skip


# How often (in seconds of planned steps) a budgeted run checks the clock within an epoch.
CHECK_EVERY_S = 5.0
# Kept free at the end for what is not measured: the plots, closing files, the interpreter's exit.
END_S = 5.0


class BudgetKeeper:
    """Holds a budgeted run to its deadline.

    The first plan comes from a few steps timed before training (``plan_epochs``); steps
    can turn slower afterwards (another program on the cores, a hot CPU, a slower disk for
    the checkpoints). Every ``every`` steps and at each epoch end the keeper re-plans from
    what it measured since: the steps that still fit before the deadline, leaving time for
    each remaining evaluation and checkpoint and for the final test. When fewer fit than
    planned it cuts the run short and fits the rest of the schedule into the steps left
    (``LRSchedule.replan``), so the run still anneals and ends with a checkpoint. It never
    lengthens a run: the plan printed at the start is the most it will train.

    Under torchrun rank 0 decides and the others follow, at the same steps.
    """

    def __init__(self, *, deadline: float, total_steps: int, steps_per_epoch: int, step_s: float, eval_s: float,
                 save_s: float, test_s: float, schedule, agree: bool = False):  # fmt: skip
        self.deadline, self.total, self.steps_per_epoch = deadline, total_steps, steps_per_epoch
        self.step_s, self.eval_s, self.save_s, self.test_s = step_s, eval_s, save_s, test_s
        self.schedule, self.agree = schedule, agree
        self.every = self._interval(step_s)
        self.mark: tuple[int, float] | None = None  # (step, time) the current stretch of steps began
        self.cuts: list[tuple[int, int]] = []  # (at step, new total), for the log

    def _interval(self, step_s: float) -> int:
        """Steps between checks: about CHECK_EVERY_S of them, and at least four checks an epoch."""
        by_time = int(CHECK_EVERY_S / step_s) if step_s > 0 else 1
        return max(1, min(by_time, self.steps_per_epoch // 4))

    def start_stretch(self, step: int) -> None:
        """Steps from here on are timed (called when an epoch's training begins)."""
        self.mark = (step, time.perf_counter())

    def due(self, step: int) -> bool:
        return step % self.every == 0 and step < self.total

    def seconds_needed(self, step: int, total: int) -> float:
        """From ``step`` to the end of a run of ``total`` steps: the steps, an evaluation and a
        checkpoint at each epoch end on the way, the test and the end."""
        epoch_ends = -(-total // self.steps_per_epoch) - step // self.steps_per_epoch
        return (total - step) * self.step_s + max(1, epoch_ends) * (self.eval_s + self.save_s) + self.test_s + END_S

    def fitting_total(self, step: int, now: float) -> int:
        """The most steps, at most the current plan, that end in time; ``step`` when none fit."""
        left = self.deadline - now
        if self.seconds_needed(step, self.total) <= left:
            return self.total
        lo, hi = step, self.total  # seconds_needed grows with the total: bisect
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.seconds_needed(step, mid) <= left else (lo, mid - 1)
        return lo

    def check(self, step: int, *, step_s: float | None = None, eval_s: float | None = None,
              save_s: float | None = None) -> int:  # fmt: skip
        """Re-plan at ``step`` from the step time since the stretch began (or the figures given);
        returns the run's total steps, cut where it no longer fits."""
        now = time.perf_counter()
        if step_s is None and self.mark is not None and step > self.mark[0]:
            step_s = (now - self.mark[1]) / (step - self.mark[0])
        for name, value in (("step_s", step_s), ("eval_s", eval_s), ("save_s", save_s)):
            if value is not None:
                setattr(self, name, value)
        total, every = self.fitting_total(step, now), self._interval(self.step_s)
        if self.agree:  # rank 0's clock decides for all
            total, every = dist.broadcast_object((total, every))
        self.every = every
        if total < self.total:
            self.schedule.replan(step, total)
            self.cuts.append((step, total))
            self.total = total
        return self.total
