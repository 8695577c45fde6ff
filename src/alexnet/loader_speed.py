"""The input pipeline's speed beside the model's, and which of the two sets the pace.

``alexnet bench --loader`` times, on the same device and batch size:

- the train loader alone: ready batches on the device, images/s, and the CPU time it
  took in this process and its worker processes, as images per core-second;
- the training step alone: forward, backward and update on one batch already on the
  device, repeated (the engine's ``train_one_epoch``, as ``alexnet train`` runs it);

and says which is the bottleneck and by how much. On a CPU the two share the cores, so
the line also says how many cores the loader would need to keep up with the model. Each
is timed for at least ``--seconds`` after warm-up batches.

    alexnet bench --loader --data imagefolder --data-dir STORE_OR_TREE --image-size 227 --batch-size 64
"""

from __future__ import annotations

import multiprocessing
import os
import time

import torch
import torch.nn as nn

from .data import DataConfig, ImageFolderLoader, build_loaders
from .engine.optim import LRSchedule, create_optimizer
from .engine.runtime import amp_context, select_device
from .engine.train import StepOptions, train_one_epoch
from .errors import AlexNetError
from .models import create_model


def cpu_seconds() -> float | None:
    """User + system CPU seconds of this process (all its threads) and its live child
    processes (DataLoader workers), from /proc; None where there is no /proc."""
    total = 0
    for pid in [os.getpid()] + [p.pid for p in multiprocessing.active_children()]:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loader(loader, device: torch.device, *, seconds: float, warmup: int = 2) -> dict:
    """Images/s of ``loader`` alone (batches ready on the device) and images per CPU-second."""
    images = batches = 0
    epoch = 0
    cpu0 = start = None
    while True:
        loader.set_epoch(epoch)
        for x, _ in loader:
            if warmup > 0:
                warmup -= 1
                if warmup == 0:
                    _sync(device)
                    cpu0, start = cpu_seconds(), time.perf_counter()
                continue
            images += x.shape[0]
            batches += 1
            if time.perf_counter() - start >= seconds:
                _sync(device)
                elapsed = time.perf_counter() - start
                cpu1 = cpu_seconds()
                cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
                return {"images_per_s": images / elapsed, "seconds": elapsed, "images": images, "batches": batches,
                        "cpu_seconds": cpu, "images_per_core_s": images / cpu if cpu else None}  # fmt: skip
        epoch += 1
        if epoch > 1000:
            raise AlexNetError("the loader yields no batches")


class _SameBatch:
    """One batch, ``n`` times: a loader for timing the step alone."""

    def __init__(self, batch, n: int):
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


def time_step(model, batch, device: torch.device, opts: StepOptions, *, seconds: float) -> dict:
    """Images/s of the training step alone, on a batch already on the device."""
    optimizer = create_optimizer(model.parameters(), "sgd", lr=0.01, momentum=0.9, weight_decay=5e-4)
    schedule = LRSchedule(optimizer, "none", total_steps=10**9, steps_per_epoch=1)
    loss = nn.CrossEntropyLoss()
    train_one_epoch(model, _SameBatch(batch, 2), optimizer, schedule, loss, step=0, opts=opts)  # warm-up
    steps, elapsed = 0, 0.0
    while elapsed < seconds:
        n = max(1, steps)  # double the run until it is long enough
        _sync(device)
        t0 = time.perf_counter()
        train_one_epoch(model, _SameBatch(batch, n), optimizer, schedule, loss, step=0, opts=opts)
        _sync(device)
        elapsed += time.perf_counter() - t0
        steps += n
    return {"images_per_s": steps * batch[0].shape[0] / elapsed, "seconds": elapsed, "steps": steps}


def run(args) -> dict:
    device = select_device(args.device)
    if args.seconds <= 0 or args.batch_size < 1:
        raise AlexNetError("--seconds and --batch-size must be positive")
    cfg = DataConfig(dataset=args.data, data_dir=args.data_dir, image_size=args.image_size, in_channels=args.in_channels,
                     workers=args.workers, train_crop=args.train_crop, download=False,
                     synthetic_train=args.batch_size * 8, synthetic_size=args.image_size)  # fmt: skip
    train, _, info = build_loaders(cfg, device=device, batch_size=args.batch_size)
    workers = args.workers if isinstance(train, ImageFolderLoader) else 0
    loader = time_loader(train, device, seconds=args.seconds)
    batch = next(iter(train))
    del train  # its workers stop: the step is timed with the cores to itself
    model = create_model(args.model, num_classes=info.num_classes, in_channels=info.in_channels, init="torch")
    model = model.to(device).to(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)
    autocast, scaler = amp_context(device, args.amp)
    opts = StepOptions(autocast=autocast, scaler=scaler, channels_last=True, sync_every=1 if device.type == "cpu" else 20)
    step = time_step(model, batch, device, opts, seconds=args.seconds)
    result = {"loader": loader, "step": step, "device": str(device), "threads": torch.get_num_threads(),
              "cores": os.cpu_count(), "source": info.source, "image_size": args.image_size,
              "batch_size": args.batch_size, "workers": workers, "model": args.model, "amp": args.amp,
              "verdict": verdict(loader, step, device)}  # fmt: skip
    print_result(result)
    return result


def verdict(loader: dict, step: dict, device: torch.device) -> str:
    feed, eat = loader["images_per_s"], step["images_per_s"]
    per_core = loader["images_per_core_s"]
    cores = f"; to keep up it needs {eat / per_core:.1f} cores at its {per_core:.0f} images per core-second" if per_core else ""
    if feed < eat:
        return f"bottleneck: the loader ({feed:.0f} images/s) is {eat / feed:.2f}x slower than the training step ({eat:.0f} images/s){cores}"
    shared = " (on the CPU both share the cores: a training run gets less than either alone)" if device.type == "cpu" else ""
    return f"bottleneck: the training step ({eat:.0f} images/s); the loader feeds {feed / eat:.2f}x that ({feed:.0f} images/s){shared}"


def print_result(r: dict) -> None:
    lo, st = r["loader"], r["step"]
    per_core = f"{lo['images_per_core_s']:.0f} per core-second" if lo["images_per_core_s"] else "CPU time not available"
    print(f"{r['model']} at {r['image_size']} px, batch {r['batch_size']}, {r['device']} ({r['threads']} threads, "
          f"{r['cores']} cores); data: {r['source']}")  # fmt: skip
    how = f"{r['workers']} worker processes" if r["workers"] else "in this process"
    print(f"loader alone:        {lo['images_per_s']:8.1f} images/s  ({per_core}, {how}, {lo['seconds']:.1f} s)")
    print(f"training step alone: {st['images_per_s']:8.1f} images/s  ({st['steps']} steps, {st['seconds']:.1f} s)")
    print(r["verdict"])
