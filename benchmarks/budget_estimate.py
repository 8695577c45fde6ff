"""The time budget's step estimate against the steps a run then takes, on the real Fashion-MNIST.

    .venv/bin/python benchmarks/budget_estimate.py --preset quick --steps 40

In a fresh process, as `alexnet train` does: builds the preset's loaders and model, calls
``measure_speed`` (what ``--time-budget`` plans from), then trains the model for ``--steps``
steps of epoch 1 and times each step in that one pass of the loader. Prints the estimate, the
first steps one by one (a cold process's first steps are slower), and the median and mean of
the steps after the warm-up the estimate leaves out; the mean over a whole epoch is what the
plan has to match (the run's metrics.csv gives it as images/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics

import torch
import torch.nn as nn

from alexnet.config import resolve_config
from alexnet.data import build_loaders
from alexnet.engine.budget import WARMUP_STEPS, StepClock, measure_speed
from alexnet.engine.cpu import has_fast_bfloat16, keep_freed_memory
from alexnet.engine.runtime import amp_context
from alexnet.engine.optim import LRSchedule, create_optimizer
from alexnet.engine.train import StepOptions, train_one_epoch
from alexnet.models import create_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick")
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    keep_freed_memory()  # as fit() does on the CPU
    cfg = resolve_config(args.preset, {})
    device = torch.device("cpu")
    train, val, info = build_loaders(cfg.data_config(), device=device, batch_size=cfg.batch_size, seed=cfg.seed)
    model = create_model(cfg.model, num_classes=info.num_classes, in_channels=info.in_channels, dropout=cfg.dropout,
                         init=cfg.init, **cfg.model_kwargs())  # fmt: skip
    autocast, scaler = amp_context(device, cfg.amp)
    opts = StepOptions(autocast=autocast, scaler=scaler, channels_last=cfg.channels_last, sync_every=1)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"native bfloat16 {has_fast_bfloat16()}; preset {args.preset}: {cfg.model} at {cfg.image_size} px, "
          f"batch {cfg.batch_size}, amp {cfg.amp}, {len(train)} steps an epoch")  # fmt: skip
    speed = measure_speed(model, cfg, train, val, loss_fn, opts)
    print(f"measure_speed: {speed.step_s:.3f} s a step (median of steps {WARMUP_STEPS + 1}-{len(speed.step_times)} of: "
          + ", ".join(f"{s:.3f}" for s in speed.step_times) + f" s), {speed.eval_batch_s:.3f} s a validation batch")

    optimizer = create_optimizer(model.parameters(), cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
                                 nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)  # fmt: skip
    schedule = LRSchedule(optimizer, cfg.scheduler, total_steps=len(train) * cfg.epochs, steps_per_epoch=len(train))
    clock = StepClock(train, device)  # the steps timed as measure_speed times them
    train.set_epoch(0)
    train_one_epoch(model, clock, optimizer, schedule, loss_fn, step=0, opts=dataclasses.replace(opts, max_steps=args.steps))
    steps = clock.step_times(args.steps)
    later = steps[WARMUP_STEPS:]
    print("then the run's first steps: " + ", ".join(f"{s:.3f}" for s in steps[:8]) + " s")
    print(f"steps {WARMUP_STEPS + 1}-{len(steps)}: median {statistics.median(later):.3f} s, mean {statistics.mean(later):.3f} s, "
          f"min {min(later):.3f} s, max {max(later):.3f} s")  # fmt: skip
    print(f"estimate / mean of those steps: {speed.step_s / statistics.mean(later):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
