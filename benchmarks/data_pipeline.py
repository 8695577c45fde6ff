"""Training-batch throughput: torchvision's per-sample PIL pipeline vs alexnet's in-memory loader.

Both produce ready float batches of Fashion-MNIST at the model's size (227 px by default),
batch 128, on the CPU:

(a) the classic recipe: a Dataset whose __getitem__ does what torchvision.datasets.FashionMNIST
    does (``Image.fromarray(img.numpy(), mode="L")``) followed by ``Resize(227)`` and
    ``ToTensor()``, through a shuffling DataLoader with 2 worker processes;
(b) ``alexnet.data.build_loaders`` with the default augmentation (padded random crop, flip,
    normalisation, bilinear resize of the whole batch with tensor ops; no workers).

(a) does less work than (b): no augmentation and no normalisation. The two are timed in the
same run, alternating, after warm-up batches; the figure reported is the ratio of medians.

    flock /tmp/alexnet-bench.lock .venv/bin/python benchmarks/data_pipeline.py --batches 100 --batch-size 128 --image-size 227
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader
from torchvision import transforms

from alexnet.bench import PILFashionMNIST
from alexnet.data import DataConfig, build_loaders, load_fashion_mnist
from alexnet.errors import AlexNetError
from alexnet.loader_speed import cpu_seconds


def measure(loader, *, batches: int, warmup: int, batch_size: int, epoch: int) -> tuple[float, float | None]:
    """Steady state: a fresh epoch iterator, ``warmup`` batches untimed, then ``batches`` timed.
    Returns (images per second, CPU milliseconds per batch over all processes)."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    cpu0, start = cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
        assert x.dtype == torch.float32
    elapsed, cpu1 = time.perf_counter() - start, cpu_seconds()
    del it
    cpu_ms = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) * 1000 / batches
    return batches * batch_size / elapsed, cpu_ms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=100, help="timed batches per round and method")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=227)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is reported")
    p.add_argument("--warmup", type=int, default=4, help="untimed batches at the start of each round")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the torchvision pipeline")
    p.add_argument("--data-dir", default=None, help="where Fashion-MNIST is (default: the usual search)")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    args = p.parse_args(argv)

    try:
        data = load_fashion_mnist(args.data_dir, download=False)
    except AlexNetError as e:
        print(f"data_pipeline: error: {e}", file=sys.stderr)
        return 2
    per_epoch = len(data.train_images) // args.batch_size
    if args.batches + args.warmup > per_epoch:
        print(f"data_pipeline: error: --batches + --warmup must fit in one epoch ({per_epoch})", file=sys.stderr)
        return 2

    tv_transform = transforms.Compose([transforms.Resize(args.image_size), transforms.ToTensor()])
    tv_loader = DataLoader(
        PILFashionMNIST(data.train_images[:, 0], data.train_labels, tv_transform),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    cfg = DataConfig(dataset="fashion-mnist", data_dir=args.data_dir, download=False, image_size=args.image_size)
    ours, _, info = build_loaders(cfg, device="cpu", batch_size=args.batch_size)

    x_tv, _ = next(iter(tv_loader))
    x_ours, _ = next(iter(ours))
    assert x_tv.shape == x_ours.shape == (args.batch_size, 1, args.image_size, args.image_size)

    load_before = os.getloadavg()[0]
    rates: dict[str, list[float]] = {"torchvision": [], "in-memory": []}
    cpu: dict[str, list[float]] = {"torchvision": [], "in-memory": []}
    for r in range(args.rounds):
        for name, loader in (("torchvision", tv_loader), ("in-memory", ours)):
            rate, cpu_ms = measure(
                loader, batches=args.batches, warmup=args.warmup, batch_size=args.batch_size, epoch=r
            )
            rates[name].append(rate)
            if cpu_ms is not None:
                cpu[name].append(cpu_ms)
    med = {k: statistics.median(v) for k, v in rates.items()}
    med_cpu = {k: statistics.median(v) if v else float("nan") for k, v in cpu.items()}
    ratio = med["in-memory"] / med["torchvision"]

    print(
        f"machine: {os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}; "
        f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after (other processes skew timings)"
    )
    print(
        f"data: Fashion-MNIST train, {len(data.train_images)} images, from {data.source}; "
        f"batches of {args.batch_size} at {args.image_size} px; {args.rounds} alternating rounds of "
        f"{args.batches} timed batches after {args.warmup} warm-up"
    )
    aug = info.augment
    rows = [
        (f"torchvision PIL Resize+ToTensor, DataLoader({args.workers} workers)", "torchvision"),
        (
            f"alexnet in-memory (pad-crop {aug['crop_padding']}, flip, normalise, bilinear resize)",
            "in-memory",
        ),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"{'pipeline':<{width}}  {'images/s':>9}  {'CPU ms/batch':>12}  images/s per round")
    for label, key in rows:
        rounds = ", ".join(f"{v:.0f}" for v in rates[key])
        print(f"{label:<{width}}  {med[key]:>9.0f}  {med_cpu[key]:>12.0f}  {rounds}")
    print(f"ratio in-memory / torchvision: {ratio:.1f}x the images per second, "
          f"{med_cpu['torchvision'] / med_cpu['in-memory']:.1f}x less CPU time per batch (all processes)")
    if args.json:
        print(json.dumps({"images_per_s": med, "per_round": rates, "ratio": round(ratio, 2),
                          "cpu_ms_per_batch": med_cpu, "batch_size": args.batch_size, "image_size": args.image_size,
                          "cpu_cores": os.cpu_count(), "torch": torch.__version__}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
