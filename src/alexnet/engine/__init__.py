"""The training engine: plain functions the commands wire together."""

from .checkpoint import load_for_inference, read_checkpoint, save_checkpoint
from .evaluate import evaluate
from .fit import fit
from .runtime import select_device
from .optim import LRSchedule, create_optimizer
from .train import StepOptions, train_one_epoch

__all__ = [
    "LRSchedule",
    "StepOptions",
    "create_optimizer",
    "evaluate",
    "fit",
    "load_for_inference",
    "read_checkpoint",
    "save_checkpoint",
    "select_device",
    "train_one_epoch",
]
