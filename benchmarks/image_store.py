"""The prepared image store against torchvision's ImageFolder, on a JPEG tree at ImageNet's size.

Pipelines, each in its own process, all producing batches of 64 float images at 224 px
(RandomResizedCrop or the paper's crop, flip, normalisation), with the same number of
worker processes where they use workers:

- ``torchvision``: ``torchvision.datasets.ImageFolder`` + ``RandomResizedCrop(224)``,
  ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``, a shuffling ``DataLoader`` with
  ``--workers`` workers, as its users write it; over the tree without its one truncated
  file, which would stop it (``is_valid_file``, nothing else changed);
- ``folder``: ``alexnet train --dataset imagefolder --data-dir TREE``'s loader (decoding in
  ``--workers`` worker processes, augmentation on the device);
- ``store-rrc`` and ``store-paper``: the same, reading the store ``alexnet prepare`` wrote
  (no worker processes: a prefetch thread copies the images out of the shards).

Each is timed for ``--seconds`` after warm-up batches; images/s and images per CPU-second
(this process and its workers, from /proc) are recorded. Rounds alternate the pipelines and
the median is reported. Then training at 227 px on the CPU (alexnet_paper, batch 64,
bfloat16 autocast, the paper's crop) reading the folder against reading the store, each in
its own process for ``--train-seconds``.

    .venv/bin/python benchmarks/jpeg_tree.py --out /tmp/jpeg-tree --train-per-class 300 --val-per-class 50
    .venv/bin/python benchmarks/image_store.py --tree /tmp/jpeg-tree --store /tmp/jpeg-store \\
        --json benchmarks/results/image-store-<cpu>.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PIPELINES = ("torchvision", "folder", "store-rrc", "store-paper")
BATCH = 64
SIZE = 224


def time_batches(loader, seconds: float, warmup: int = 3) -> dict:
    from alexnet.loader_speed import cpu_seconds

    images = 0
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    cpu0, start = cpu_seconds(), time.perf_counter()
    while time.perf_counter() - start < seconds:
        try:
            x, _ = next(it)
        except StopIteration:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(loader.epoch + 1)
            it = iter(loader)
            continue
        images += x.shape[0]
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    return {"images_per_s": images / elapsed, "images_per_core_s": images / cpu, "cpu_seconds": cpu,
            "seconds": elapsed, "images": images}  # fmt: skip


def torchvision_loader(tree: Path, store: Path, workers: int):
    import torch
    from torchvision import datasets, transforms

    # The files prepare found unreadable (the truncated one): PIL raises on them mid-epoch.
    unreadable = {str(tree / s["path"]) for s in json.loads((store / "manifest.json").read_text())["skipped"]}
    tf = transforms.Compose([
        transforms.RandomResizedCrop(SIZE),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])  # fmt: skip
    ds = datasets.ImageFolder(str(tree / "train"), transform=tf,
                              is_valid_file=lambda p: p.lower().endswith((".jpeg", ".jpg")) and p not in unreadable)  # fmt: skip
    return torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0)  # fmt: skip


def our_loader(data_dir: Path, workers: int, crop: str, size: int = SIZE):
    from alexnet.data import DataConfig, build_loaders

    cfg = DataConfig(dataset="imagefolder", data_dir=str(data_dir), image_size=size, workers=workers, train_crop=crop,
                     download=False)  # fmt: skip
    train, _, _ = build_loaders(cfg, device="cpu", batch_size=BATCH)
    return train


def measure_one(args) -> dict:
    """In this process: one pipeline, timed."""
    import warnings

    import torch

    torch.set_num_threads(2)
    warnings.simplefilter("ignore")  # the folder loader names its skipped file once per epoch
    if args.one == "torchvision":
        loader = torchvision_loader(args.tree, args.store, args.workers)
    elif args.one == "folder":
        loader = our_loader(args.tree, args.workers, "random-resized")
    else:
        loader = our_loader(args.store, args.workers, "random-resized" if args.one == "store-rrc" else "paper")
    return time_batches(loader, args.seconds)


def train_one(args) -> dict:
    """In this process: training at 227 px reading the folder or the store, timed."""
    import warnings

    import torch
    import torch.nn as nn

    from alexnet.engine.optim import LRSchedule, create_optimizer
    from alexnet.engine.runtime import amp_context
    from alexnet.engine.train import StepOptions, train_one_epoch
    from alexnet.loader_speed import cpu_seconds
    from alexnet.models import create_model

    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    source = args.tree if args.train == "folder" else args.store
    loader = our_loader(source, args.workers, "paper", size=227)
    model = create_model("alexnet_paper", num_classes=10, init="torch").to(memory_format=torch.channels_last)
    optimizer = create_optimizer(model.parameters(), "sgd", lr=0.01, momentum=0.9, weight_decay=5e-4)
    schedule = LRSchedule(optimizer, "none", total_steps=10**9, steps_per_epoch=len(loader))
    autocast, scaler = amp_context(torch.device("cpu"), True)
    opts = StepOptions(autocast=autocast, scaler=scaler, channels_last=True)

    class Timed:  # the loader's batches until the time is up; the first two untimed
        def __init__(self):
            self.images, self.start, self.cpu0 = 0, None, None

        def __len__(self):
            return len(loader)

        def __iter__(self):
            for i, (x, y) in enumerate(loader):
                if self.start is None:
                    if i == 2:  # the clock starts once, in the first epoch, not again in each
                        self.cpu0, self.start = cpu_seconds(), time.perf_counter()
                else:
                    self.images += x.shape[0]  # counted when the step on the previous batch is done
                    if time.perf_counter() - self.start >= args.train_seconds:
                        return
                yield x, y

    timed = Timed()
    while timed.start is None or time.perf_counter() - timed.start < args.train_seconds:
        loader.set_epoch(loader.epoch + 1)
        train_one_epoch(model, timed, optimizer, schedule, nn.CrossEntropyLoss(), step=0, opts=opts)
    elapsed, cpu = time.perf_counter() - timed.start, cpu_seconds() - timed.cpu0
    return {"images_per_s": timed.images / elapsed, "seconds": elapsed, "images": timed.images, "cpu_seconds": cpu}


def child(args, **extra) -> dict:
    cmd = [sys.executable, __file__, "--tree", str(args.tree), "--store", str(args.store), "--workers", str(args.workers),
           "--seconds", str(args.seconds), "--train-seconds", str(args.train_seconds)]  # fmt: skip
    for k, v in extra.items():
        cmd += [f"--{k}", v]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{extra}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, required=True)
    p.add_argument("--store", type=Path, required=True, help="written by alexnet prepare if not there")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-seconds", type=float, default=90.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--one", choices=PIPELINES, help=argparse.SUPPRESS)
    p.add_argument("--train", choices=("folder", "store"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure_one(args)))
        return
    if args.train:
        print(json.dumps(train_one(args)))
        return

    from alexnet.bench import machine_info

    import torch

    result = {"machine": machine_info(torch.device("cpu")), "batch": BATCH, "size": SIZE, "workers": args.workers,
              "tree": str(args.tree), "command": " ".join(sys.argv)}  # fmt: skip
    start = time.perf_counter()
    prep = subprocess.run([sys.executable, "-m", "alexnet", "prepare", str(args.tree), "--out", str(args.store),
                           "--workers", str(args.workers), "--no-progress"], capture_output=True, text=True)  # fmt: skip
    result["prepare"] = {"seconds": time.perf_counter() - start, "stdout": prep.stdout, "stderr": prep.stderr,
                         "returncode": prep.returncode}  # fmt: skip
    print(f"prepare: {result['prepare']['seconds']:.1f} s: {prep.stdout.strip()}\n{prep.stderr.strip()}", flush=True)
    if prep.returncode != 0:
        sys.exit("prepare failed")

    rounds = {k: [] for k in PIPELINES}
    for r in range(args.rounds):
        for k in PIPELINES:
            rounds[k].append(child(args, one=k))
            print(f"round {r + 1} {k:12} {rounds[k][-1]['images_per_s']:8.1f} images/s "
                  f"{rounds[k][-1]['images_per_core_s']:8.1f} per core-second", flush=True)  # fmt: skip
    result["rounds"] = rounds
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("images_per_s", "images_per_core_s")}
           for k, v in rounds.items()}  # fmt: skip
    result["median"] = med
    base = med["torchvision"]
    print(f"\n{'pipeline':14}{'images/s':>10}{'per core-s':>12}{'x torchvision (per core)':>26}")
    for k, m in med.items():
        print(f"{k:14}{m['images_per_s']:10.1f}{m['images_per_core_s']:12.1f}{m['images_per_core_s'] / base['images_per_core_s']:25.2f}x")

    train = {k: child(args, train=k) for k in ("folder", "store")}
    result["train_227"] = train
    print("\ntraining alexnet_paper at 227 px, batch 64, bfloat16 autocast, 2 threads, the paper's crop:")
    for k, t in train.items():
        print(f"  reading the {k:6}: {t['images_per_s']:6.1f} images/s ({t['images']} images in {t['seconds']:.0f} s)")
    print(f"  store / folder: {train['store']['images_per_s'] / train['folder']['images_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
