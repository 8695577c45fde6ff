"""AlexNet on Fashion-MNIST the way the tutorials write it: the baseline the package is measured against.

Plain PyTorch and torchvision, nothing from ``alexnet``, none of its process settings:
``torchvision.datasets.FashionMNIST`` with ``Resize`` + ``ToTensor`` + ``Normalize``, one
shuffling ``DataLoader`` with worker processes, the paper's network with
``torch.nn.LocalResponseNorm``, float32, contiguous tensors, SGD with momentum, the usual loop.

    # train and test, as a user runs it (benchmarks/baseline.py times it from outside)
    python benchmarks/tutorial_alexnet.py --root DIR --epochs 1 --subset 2048
    # images/s of steps 4-23 of one epoch (the DataLoader's iterator is made once, as in an epoch)
    python benchmarks/tutorial_alexnet.py --root DIR --warmup-steps 3 --timed-steps 20 --json OUT

``--root`` holds ``FashionMNIST/raw/`` (the four IDX files, decompressed), where torchvision's
own downloader puts them. ``--weights FILE``: start from these weights (a list of tensors, in
parameter order), so that two pipelines train the same network from the same point.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms


class AlexNet(nn.Module):
    """The 2012 network for 1-channel images (torch's LRN, size 5, k 2, beta 0.75, alpha 1e-4 per channel)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4),
            nn.ReLU(inplace=True),
            nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def fashion_mnist(root: str, train: bool, image_size: int, subset: int | None):
    tf = transforms.Compose([transforms.Resize(image_size), transforms.ToTensor(),
                             transforms.Normalize((0.2860,), (0.3530,))])  # fmt: skip
    ds = datasets.FashionMNIST(root, train=train, download=False, transform=tf)
    return Subset(ds, range(subset)) if subset else ds


def train_loader(root: str, image_size: int, batch_size: int, workers: int, subset: int | None = None) -> DataLoader:
    ds = fashion_mnist(root, True, image_size, subset)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)


def build_model(weights: str | None) -> AlexNet:
    model = AlexNet()
    if weights:
        given = torch.load(weights)
        with torch.no_grad():
            for p, w in zip(model.parameters(), given, strict=True):
                p.copy_(w)
    return model


def timed_steps(model, loader, optimizer, warmup: int, steps: int) -> dict:
    """Train ``warmup + steps`` batches of one pass of ``loader``; images/s of the last ``steps``."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    ticks = []
    for i, (images, labels) in enumerate(loader):
        ticks.append(time.perf_counter())  # a step is from one batch in hand to the next
        if i == warmup + steps:
            break
        loss = criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if len(ticks) < warmup + steps + 1:
        raise SystemExit(f"the loader has {len(ticks) - 1} batches; {warmup + steps} are needed")
    step_s = [b - a for a, b in zip(ticks[warmup:-1], ticks[warmup + 1 :])]
    return {"images_per_s": steps * loader.batch_size / (ticks[-1] - ticks[warmup]), "step_s": step_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True)
    p.add_argument("--image-size", type=int, default=227)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--subset", type=int, default=None, help="the first N images of each split")
    p.add_argument("--weights", default=None)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--timed-steps", type=int, default=0, help="time this many steps and stop (0: train and test)")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    torch.manual_seed(0)
    model = build_model(args.weights)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = train_loader(args.root, args.image_size, args.batch_size, args.workers, args.subset)
    if args.timed_steps:
        result = timed_steps(model, loader, optimizer, args.warmup_steps, args.timed_steps)
        result.update(loader="tutorial", model="tutorial", batch_size=args.batch_size, image_size=args.image_size,
                      threads=torch.get_num_threads())  # fmt: skip
        print(json.dumps(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f)
        return

    criterion = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        for images, labels in loader:
            loss = criterion(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: last loss {loss.item():.4f}", flush=True)
    test = DataLoader(fashion_mnist(args.root, False, args.image_size, args.subset), batch_size=args.batch_size,
                      num_workers=args.workers)  # fmt: skip
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in test:
            correct += (model(images).argmax(1) == labels).sum().item()
            total += len(labels)
    print(f"test accuracy: {100 * correct / total:.2f}% on {total} images")


if __name__ == "__main__":
    main()
