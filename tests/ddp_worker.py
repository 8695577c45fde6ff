"""Launched by torchrun from test_distributed.py: train a few steps with the engine, dump this rank's state.

    torchrun --nproc_per_node=W tests/ddp_worker.py OUT_DIR PER_PROCESS_BATCH
"""

import sys
from pathlib import Path

import torch

from alexnet.data import DataConfig, build_loaders
from alexnet.engine import distributed as dist
from alexnet.engine.evaluate import evaluate
from alexnet.engine.optim import LRSchedule, create_optimizer
from alexnet.engine.train import StepOptions, train_one_epoch
from alexnet.models import create_model


class Float64:
    """The loader's batches in float64, so that 2 ranks and 1 process agree to ~1e-12, not ~1e-5."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch, start_batch=0):
        self.loader.set_epoch(epoch, start_batch)

    def __iter__(self):
        return ((x.double(), y) for x, y in self.loader)


# The data every rank reads; test_distributed.py reads its val split again in one process.
DATA = DataConfig(dataset="synthetic", synthetic_train=48, synthetic_val=37, synthetic_classes=5, synthetic_size=32,
                  image_size=63, crop=False, flip=False)  # fmt: skip


def probe(in_channels: int, num_classes: int) -> torch.nn.Module:
    """A fixed random linear classifier: the trained network predicts one class for every image of
    this small set, which makes its confusion matrix only the label counts; this one spreads its
    predictions over the cells, so that a sample lost or counted twice in the sum over ranks shows."""
    torch.manual_seed(7)
    linear = torch.nn.Linear(in_channels * 63 * 63, num_classes, dtype=torch.float64)
    return torch.nn.Sequential(torch.nn.Flatten(), linear)


def main(out: Path, batch: int) -> None:
    device = torch.device("cpu")
    rank, world, _ = dist.init_distributed(device)
    torch.set_num_threads(1)
    train, val, info = build_loaders(DATA, device=device, batch_size=batch, seed=3, rank=rank, world_size=world)
    per_rank_val = val.num_samples
    train, val = Float64(train), Float64(val)
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(100 + rank)  # different on every rank: DDP must broadcast rank 0's weights
    model = create_model("alexnet_owt", num_classes=info.num_classes, in_channels=info.in_channels, dropout=0.0)
    if rank == 0:
        torch.manual_seed(0)
        model = create_model("alexnet_owt", num_classes=info.num_classes, in_channels=info.in_channels, dropout=0.0)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = create_optimizer(net.parameters(), "sgd", lr=0.02, momentum=0.9)
    schedule = LRSchedule(opt, "none", total_steps=100, steps_per_epoch=len(train))
    step = 0
    for epoch in range(2):
        train.set_epoch(epoch)
        _, step = train_one_epoch(net, train, opt, schedule, torch.nn.CrossEntropyLoss(), step=step, opts=StepOptions())
    result = evaluate(net, val, info.num_classes)
    probed = evaluate(probe(info.in_channels, info.num_classes), val, info.num_classes)
    torch.save({"model": dist.unwrap(net).state_dict(), "n": result["n"], "step": step, "per_rank_val": per_rank_val,
                "confusion": result["confusion"], "loss": result["loss"], "probe_confusion": probed["confusion"],
                "probe_loss": probed["loss"]}, out / f"rank{rank}.pt")  # fmt: skip
    dist.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
