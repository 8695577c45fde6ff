"""A training run's configuration: one typed dataclass, presets as plain dictionaries of overrides.

argparse fills ``TrainConfig`` (cli/train.py); the resolved configuration is written to
``config.json`` in the run directory and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .data.config import DATASET_DEFAULTS, DataConfig
from .errors import AlexNetError


@dataclass
class TrainConfig:
    # Model
    model: str = "alexnet_paper"
    num_classes: int | None = None  # None: the dataset's
    in_channels: int | None = None  # None: the dataset's
    dropout: float = 0.5
    init: str = "paper"  # paper: N(0, 0.01) and the paper's biases; torch: PyTorch's default
    image_size: int = 227
    init_from: str | None = None  # torchvision AlexNet weights file (alexnet_owt)
    # The paper models' ablation switches; None keeps the model's own default (the paper's:
    # LRN on, overlapping 3/2 pooling). Given ones go to the builder and into model_args.
    lrn: bool | None = None
    pool_kernel: int | None = None
    pool_stride: int | None = None

    # Data
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    train_dir: str | None = None
    val_dir: str | None = None
    val_labels: str | None = None
    subset: int | None = None
    # Training images kept apart to validate (choose best.pt, drive the plateau rule); the test
    # split is then read once, at the end. None: the dataset's default (5,000 for Fashion-MNIST
    # and CIFAR-10); 0: validate on the held-out split, as before.
    val_split: int | None = None
    # With a validation split, whether the run ends by reading the test split (best.pt's
    # figures). Off for tuning runs and ablations, which must not see the test split at all.
    test: bool = True
    workers: int = 2
    download: bool = True

    # Optimization
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    batch_size: int = 128
    eval_batch_size: int | None = None
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    scale_lr: bool = False  # linear scaling rule: lr * global_batch / 256

    # Schedule
    epochs: int = 90
    scheduler: str = "plateau"  # none | step | plateau | cosine | onecycle
    warmup_epochs: float = 0.0
    step_epochs: int = 30  # step: divide every step_epochs
    gamma: float = 0.1
    patience: int = 2  # plateau: epochs without improvement before dividing
    min_lr: float = 0.0
    # Minutes for the whole run; 0: none. A few steps are timed before training and the run
    # is planned for the steps that fit, at most ``epochs`` (engine/budget.py).
    time_budget: float = 0.0
    # Set by the time budget when the last epoch is cut short: the run's length in steps, which
    # the schedule is planned on; None: epochs x steps per epoch.
    train_steps: int | None = None

    # Augmentation
    crop: bool = True
    # imagefolder: "paper" (a random S x S patch of the 256 image, the paper's) or "random-resized"
    train_crop: str = "random-resized"
    crop_padding: int | None = None  # None: the dataset's default
    flip: bool = True
    rotate: float = 0.0
    translate: float = 0.0
    pca_color: float | None = None  # None: the dataset's default (0.1 for cifar10 and imagefolder)
    tta: str | None = None  # None | 10crop: test-time augmentation for validation

    # Runtime
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: bool = False
    compile: bool = False
    channels_last: bool = True
    threads: int | None = None
    seed: int = 0
    deterministic: bool = False
    max_steps: int | None = None
    skip_nonfinite: int = 0  # batches with a NaN or infinite loss that may be skipped before stopping
    progress: bool = True

    # Output
    out: str | None = None
    resume: str | None = None
    save_every: int | None = None  # also write checkpoints/last.pt every N steps within an epoch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_kwargs(self) -> dict[str, Any]:
        """Builder keyword arguments beyond num_classes, in_channels and dropout that shape the
        network (and so must be in a checkpoint's model_args to rebuild it): the ones given."""
        return {k: getattr(self, k) for k in ARCHITECTURE_FIELDS if getattr(self, k) is not None}

    def data_config(self) -> DataConfig:
        """The data layer's part of this configuration."""
        kw: dict[str, Any] = dict(
            dataset=self.dataset,
            data_dir=self.data_dir,
            train_dir=self.train_dir,
            val_dir=self.val_dir,
            val_labels=self.val_labels,
            download=self.download,
            subset=self.subset,
            val_split=self.val_split,
            image_size=self.image_size,
            in_channels=self.in_channels,
            workers=self.workers,
            crop=self.crop,
            train_crop=self.train_crop,
            flip=self.flip,
            rotate=self.rotate,
            translate=self.translate,
        )
        for name in ("crop_padding", "pca_color"):  # None: leave the dataset's default in place
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        return DataConfig(**kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# TrainConfig fields passed to the model builder when set (see ``TrainConfig.model_kwargs``).
ARCHITECTURE_FIELDS = ("lrn", "pool_kernel", "pool_stride")


# Each preset is a plain dictionary of overrides on TrainConfig's defaults; the command
# line overrides the preset. The README's table is written from these.
PRESETS: dict[str, dict[str, Any]] = {
    # The 2012 paper (section 5 and 4.1): SGD, momentum 0.9, weight decay 5e-4, batch 128,
    # lr 0.01 divided by 10 when the validation error stops improving, dropout 0.5, the
    # paper's init, random crops, flips and PCA colour noise, 10-crop evaluation.
    "paper": dict(
        model="alexnet_paper",
        image_size=227,
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=128,
        scheduler="plateau",
        patience=2,
        gamma=0.1,
        dropout=0.5,
        init="paper",
        crop=True,
        train_crop="paper",
        flip=True,
        pca_color=0.1,
        tta="10crop",
        epochs=90,
    ),
    # The seed project's set-up (Fashion-MNIST resized to 227 px, 1 channel, 10 classes),
    # with the recipe that trained best here at small sizes: AdamW from PyTorch's default
    # init (SGD at lr 0.01 stays at chance for the first hundreds of steps, see
    # benchmarks/init_and_optimizer.py), one-cycle schedule, label smoothing, crops and flips.
    "fashion-mnist": dict(
        model="alexnet_paper",
        dataset="fashion-mnist",
        image_size=227,
        init="torch",
        optimizer="adamw",
        lr=5e-4,
        weight_decay=0.05,
        batch_size=128,
        scheduler="onecycle",
        label_smoothing=0.1,
        crop=True,
        flip=True,
        epochs=10,
    ),
}
# The README's main job: the best Fashion-MNIST accuracy in at most 15 minutes on a 2-core
# CPU. Chosen by measurement (benchmarks/RESULTS.md, "How the quick preset was chosen"): the
# fashion-mnist recipe at 63 px, where the paper network trains several times faster than at
# 227, with bfloat16 autocast, a higher peak rate and no random crops (short runs underfit;
# they need no extra regularisation), for 6 epochs.
# The 15 minutes are a time budget: on a slower CPU the run is planned for fewer steps
# (measured before training; a last epoch may be cut), so it still ends in time with its
# schedule complete.
PRESETS["quick"] = {**PRESETS["fashion-mnist"], "image_size": 63, "lr": 1e-3, "crop": False, "amp": True, "epochs": 6,
                    "time_budget": 15.0}  # fmt: skip


def resolve_config(preset: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the preset, then the explicit overrides (None means 'not given')."""
    if preset is not None and preset not in PRESETS:
        raise AlexNetError(f"unknown preset {preset!r}; choose from: {', '.join(PRESETS)}")
    values = TrainConfig().to_dict()
    if preset is not None:
        values.update(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig.from_dict(values)
    validate_config(cfg)
    return cfg


def validate_config(cfg: TrainConfig) -> None:
    checks = [
        (cfg.lr > 0, f"--lr must be positive, got {cfg.lr}"),
        (cfg.batch_size > 0, f"--batch-size must be positive, got {cfg.batch_size}"),
        (cfg.eval_batch_size is None or cfg.eval_batch_size > 0, "--eval-batch-size must be positive"),
        (cfg.epochs > 0, f"--epochs must be positive, got {cfg.epochs}"),
        (cfg.max_steps is None or cfg.max_steps > 0, "--max-steps must be positive"),
        (cfg.train_steps is None or cfg.train_steps > 0, "train_steps must be positive"),
        (cfg.subset is None or cfg.subset > 0, "--subset must be positive"),
        (cfg.val_split is None or cfg.val_split >= 0, "--val-split must not be negative"),
        (cfg.image_size > 0, f"--image-size must be positive, got {cfg.image_size}"),
        (cfg.pool_kernel is None or cfg.pool_kernel > 0, f"--pool-kernel must be positive, got {cfg.pool_kernel}"),
        (cfg.pool_stride is None or cfg.pool_stride > 0, f"--pool-stride must be positive, got {cfg.pool_stride}"),
        (0.0 <= cfg.dropout < 1.0, f"--dropout must be in [0, 1), got {cfg.dropout}"),
        (0.0 <= cfg.label_smoothing < 1.0, "--label-smoothing must be in [0, 1)"),
        (cfg.weight_decay >= 0, "--weight-decay must not be negative"),
        (cfg.warmup_epochs >= 0, "--warmup-epochs must not be negative"),
        (cfg.time_budget >= 0, "--time-budget must not be negative"),
        (cfg.clip_grad is None or cfg.clip_grad > 0, "--clip-grad must be positive"),
        (cfg.optimizer in ("sgd", "adamw"), f"unknown optimizer {cfg.optimizer!r}; choose sgd or adamw"),
        (
            cfg.scheduler in ("none", "step", "plateau", "cosine", "onecycle"),
            f"unknown scheduler {cfg.scheduler!r}; choose none, step, plateau, cosine or onecycle",
        ),
        (cfg.init in ("paper", "torch"), f"unknown init {cfg.init!r}; choose paper or torch"),
        (cfg.tta in (None, "10crop"), f"unknown --tta {cfg.tta!r}; the only one is 10crop"),
    ]
    checks += [
        # Flags that would be ignored are refused, so that a run is what its command line says.
        (not (cfg.warmup_epochs > 0 and cfg.scheduler == "onecycle"),
         "--warmup-epochs does nothing with --scheduler onecycle, which warms up over its first 25% of steps; drop it"),
        (not (cfg.min_lr > 0 and cfg.scheduler not in ("cosine", "plateau")),
         f"--min-lr is the floor of the cosine schedule and of the plateau rule's cuts; --scheduler {cfg.scheduler} "
         "does not use it"),
        (cfg.skip_nonfinite >= 0, "--skip-nonfinite must not be negative"),
        (cfg.num_classes is None or cfg.num_classes > 0, f"--num-classes must be positive, got {cfg.num_classes}"),
        (cfg.save_every is None or cfg.save_every > 0, "--save-every must be positive"),
        (cfg.test or _has_val_split(cfg),
         "--no-test needs a validation split: without one the held-out split validates every epoch; "
         "give --val-split N"),
    ]
    for ok, message in checks:
        if not ok:
            raise AlexNetError(message)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise AlexNetError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")


def _has_val_split(cfg: TrainConfig) -> bool:
    """Whether the run keeps training images apart to validate (the dataset's default when not given)."""
    default = DATASET_DEFAULTS[cfg.dataset].val_split if cfg.dataset in DATASET_DEFAULTS else 0
    return (default if cfg.val_split is None else cfg.val_split) > 0
