"""Which initialisation and optimizer start learning: the first steps of alexnet_paper on Fashion-MNIST.

    flock /tmp/alexnet-bench.lock .venv/bin/python benchmarks/init_and_optimizer.py --steps 100

For each (init, optimizer, lr) it trains the same model from the same seed on the same
batches (63 px, batch 128, no label smoothing) and prints the mean training loss and
accuracy of the last 20 steps. Chance is loss ln(10) = 2.303 and accuracy 10%. This is
the measurement behind the README's advice on --init and the presets' optimizer.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn as nn

from alexnet.bench import FirstBatches
from alexnet.data import DataConfig, build_loaders
from alexnet.engine.optim import LRSchedule, create_optimizer
from alexnet.engine.train import StepOptions, train_one_epoch
from alexnet.models import create_model

VARIANTS = [
    ("paper", "sgd", 0.01),
    ("torch", "sgd", 0.01),
    ("paper", "adamw", 3e-4),
    ("torch", "adamw", 3e-4),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--image-size", type=int, default=63)
    p.add_argument("--model", default="alexnet_paper")
    args = p.parse_args()
    loader, _, _ = build_loaders(DataConfig(dataset="fashion-mnist", image_size=args.image_size, download=False),
                                 device=torch.device("cpu"), batch_size=128)  # fmt: skip
    tail = 20
    results = []
    for init, opt_name, lr in VARIANTS:
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=10, in_channels=1, init=init).to(memory_format=torch.channels_last)
        wd = 5e-4 if opt_name == "sgd" else 0.05
        opt = create_optimizer(model.parameters(), opt_name, lr=lr, momentum=0.9, weight_decay=wd)
        schedule = LRSchedule(opt, "none", total_steps=args.steps, steps_per_epoch=len(loader))
        loader.set_epoch(0)
        head = FirstBatches(loader, args.steps - tail)
        _, step = train_one_epoch(model, head, opt, schedule, nn.CrossEntropyLoss(), step=0, opts=StepOptions(channels_last=True))
        loader.set_epoch(0, start_batch=args.steps - tail)
        last, _ = train_one_epoch(model, FirstBatches(loader, tail), opt, schedule, nn.CrossEntropyLoss(), step=step,
                                  opts=StepOptions(channels_last=True))  # fmt: skip
        row = {"init": init, "optimizer": opt_name, "lr": lr, "steps": args.steps,
               "last20_loss": round(last.train_loss, 3), "last20_acc": round(last.train_acc, 3)}  # fmt: skip
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.model}, {args.image_size} px, batch 128, {args.steps} steps; mean of the last {tail} steps")
    print(f"{'init':8}{'optimizer':11}{'lr':>8}{'loss':>8}{'acc':>8}")
    for r in results:
        print(f"{r['init']:8}{r['optimizer']:11}{r['lr']:8g}{r['last20_loss']:8.3f}{100 * r['last20_acc']:7.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
