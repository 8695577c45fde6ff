"""Evaluate a training checkpoint on the validation split it was trained with.

``alexnet eval`` and ``alexnet report`` both call ``evaluate_checkpoint``: the model, the
data and the preprocessing come from the checkpoint, any override on top.
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import torch

from ..config import TrainConfig
from ..data import DatasetInfo, build_loaders
from ..errors import AlexNetError
from .checkpoint import build_model, read_checkpoint
from .evaluate import evaluate
from .runtime import amp_context, select_device

# The data settings a caller may change; everything else is the checkpoint's.
DATA_OVERRIDES = ("dataset", "data_dir", "val_dir", "val_labels", "subset")


@dataclass
class CheckpointEvaluation:
    result: dict  # evaluate()'s: top1, top5, loss, n, per_class, per_class_n, confusion, mistakes, samples
    class_names: list[str]  # one per model output
    info: DatasetInfo  # the validation data: name, mean and std (to draw its images), size
    config: TrainConfig  # the checkpoint's configuration with the overrides applied
    checkpoint: dict[str, Any]


def evaluate_checkpoint(
    path: str | os.PathLike,
    *,
    overrides: dict[str, Any] | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    tta: str | None = None,
    keep_mistakes: int = 32,
    keep_samples: int = 0,
    loaded: dict[str, Any] | None = None,
) -> CheckpointEvaluation:
    """Top-1, top-5, loss, per-class accuracy and the confusion matrix of the checkpoint at ``path``.

    ``overrides`` (None values ignored) may change the names in ``DATA_OVERRIDES``;
    ``loaded``: the checkpoint already read from ``path``, so as not to read it twice.
    """
    ckpt = loaded if loaded is not None else read_checkpoint(path)
    model = build_model(ckpt, path)
    cfg = TrainConfig.from_dict(ckpt.get("config", {}))
    if cfg.data_dir and not Path(cfg.data_dir).expanduser().is_dir():
        cfg.data_dir = None  # the training machine's folder is not here: search the usual places
    for name, value in (overrides or {}).items():
        if name not in DATA_OVERRIDES:
            raise ValueError(f"evaluate_checkpoint cannot override {name!r}")
        if value is not None:
            setattr(cfg, name, value)
    if batch_size is not None and batch_size < 1:
        raise AlexNetError(f"--batch-size must be positive, got {batch_size}")
    cfg.in_channels = ckpt["model_args"]["in_channels"]
    cfg.val_split = 0  # the dataset's held-out split, whatever the run validated on
    dev = select_device(device)
    batch = batch_size or cfg.eval_batch_size or cfg.batch_size
    _, loader, info = build_loaders(cfg.data_config(), device=dev, batch_size=batch, eval_batch_size=batch, tta=tta)
    num_classes = ckpt["model_args"]["num_classes"]
    model.to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast, _ = amp_context(dev, cfg.amp)
    result = evaluate(
        model, loader, num_classes, autocast=autocast, channels_last=cfg.channels_last,
        keep_mistakes=keep_mistakes, keep_samples=keep_samples,
    )  # fmt: skip
    names = list(ckpt.get("class_names") or info.class_names)
    names += [str(i) for i in range(len(names), num_classes)]
    return CheckpointEvaluation(result=result, class_names=names, info=info, config=cfg, checkpoint=ckpt)
