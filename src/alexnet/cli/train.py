"""``alexnet train``: argument groups fill TrainConfig; presets are overridden by what is given."""

from __future__ import annotations

import argparse

from ..config import PRESETS, TrainConfig, resolve_config
from ..data import DATASETS
from ..engine import fit
from ..engine.checkpoint import read_resume_checkpoint
from ..errors import AlexNetError
from ..models import list_models
from ..run_dir import RunDirectory

_BOOL = argparse.BooleanOptionalAction

# (group, flag, options); every dest is a TrainConfig field and defaults to None ("not given").
ARGUMENTS: list[tuple[str, str, dict]] = [
    ("Model", "--model", dict(help=f"one of: {', '.join(list_models())}")),
    ("Model", "--num-classes", dict(type=int, help="default: the dataset's")),
    ("Model", "--in-channels", dict(type=int, help="default: the dataset's (1 for Fashion-MNIST)")),
    ("Model", "--dropout", dict(type=float)),
    ("Model", "--init", dict(choices=("paper", "torch"), help="paper: N(0, 0.01) and the paper's biases; torch: PyTorch's default")),
    ("Model", "--image-size", dict(type=int, help="input size in pixels")),
    ("Model", "--lrn", dict(action=_BOOL, help="paper models: local response normalisation after conv1 and conv2 (default on)")),
    ("Model", "--pool-kernel", dict(type=int, metavar="K", help="paper models: max-pooling window (default 3, overlapping)")),
    ("Model", "--pool-stride", dict(type=int, metavar="S", help="paper models: max-pooling stride (default 2)")),
    ("Model", "--init-from", dict(metavar="PATH", help="torchvision AlexNet weights to fine-tune (alexnet_owt)")),
    ("Data", "--dataset", dict(choices=DATASETS)),
    ("Data", "--data-dir", dict(metavar="DIR")),
    ("Data", "--train-dir", dict(metavar="DIR", help="imagefolder: class folders for training")),
    ("Data", "--val-dir", dict(metavar="DIR", help="imagefolder: class folders (or flat ILSVRC val) for validation")),
    ("Data", "--val-labels", dict(metavar="FILE", help="imagefolder: labels file for a flat validation folder")),
    ("Data", "--subset", dict(type=int, metavar="N", help="use only the first N images of each split")),
    ("Data", "--val-split", dict(type=int, metavar="N", help="keep N training images apart (seeded, stratified) to "
                                 "choose best.pt and drive the schedule; the test split is read once, at the end "
                                 "(default: 5000 for fashion-mnist and cifar10, none otherwise; 0: validate on the test split)")),
    ("Data", "--test", dict(action=_BOOL, help="with a validation split, end by reading the test split once with "
                            "best.pt (default); --no-test for tuning runs, which must not see it")),
    ("Data", "--workers", dict(type=int, help="imagefolder decoding processes")),
    ("Data", "--download", dict(action=_BOOL, help="try torchvision's downloader when no local copy is found")),
    ("Optimization", "--optimizer", dict(choices=("sgd", "adamw"))),
    ("Optimization", "--lr", dict(type=float)),
    ("Optimization", "--momentum", dict(type=float)),
    ("Optimization", "--nesterov", dict(action=_BOOL)),
    ("Optimization", "--weight-decay", dict(type=float)),
    ("Optimization", "--batch-size", dict(type=int, help="per process; the global batch is this times the world size")),
    ("Optimization", "--eval-batch-size", dict(type=int)),
    ("Optimization", "--label-smoothing", dict(type=float)),
    ("Optimization", "--clip-grad", dict(type=float, metavar="NORM")),
    ("Optimization", "--scale-lr", dict(action=_BOOL, help="linear scaling rule: lr x global batch / 256")),
    ("Schedule", "--epochs", dict(type=int)),
    ("Schedule", "--scheduler", dict(choices=("none", "step", "plateau", "cosine", "onecycle"))),
    ("Schedule", "--warmup-epochs", dict(type=float, help="linear warm-up (every schedule but onecycle, which has its own)")),
    ("Schedule", "--step-epochs", dict(type=int, help="step: epochs between cuts")),
    ("Schedule", "--gamma", dict(type=float, help="step/plateau: the factor of each cut")),
    ("Schedule", "--patience", dict(type=int, help="plateau: epochs without improvement before a cut")),
    ("Schedule", "--min-lr", dict(type=float, help="cosine: the rate it ends at; plateau: no cut goes below it")),
    ("Schedule", "--time-budget", dict(type=float, metavar="MIN", help="minutes for the whole command: plan the steps "
                                       "that fit here (measured first), at most --epochs, and re-plan as it goes so that "
                                       "it ends in time with its schedule annealed (0: no budget)")),
    ("Augmentation", "--crop", dict(action=_BOOL, help="random crops (padded for small images, random-resized for folders)")),
    ("Augmentation", "--train-crop", dict(choices=("paper", "random-resized"), help="imagefolder: paper: a random "
                                          "S x S patch of the 256 px image (the paper preset's); random-resized: "
                                          "torchvision's RandomResizedCrop (the default)")),
    ("Augmentation", "--crop-padding", dict(type=int, metavar="PX")),
    ("Augmentation", "--flip", dict(action=_BOOL, help="random horizontal flips")),
    ("Augmentation", "--rotate", dict(type=float, metavar="DEG")),
    ("Augmentation", "--translate", dict(type=float, metavar="FRAC")),
    ("Augmentation", "--pca-color", dict(type=float, metavar="STD", help="the paper's PCA colour noise; 0.1 in the paper")),
    ("Augmentation", "--tta", dict(choices=("10crop",), help="validate with the paper's 10-crop test (needs --crop: "
                                   "the crops are shifts within training's crop padding)")),
    ("Runtime", "--device", dict(help="auto, cpu, cuda, cuda:N or mps")),
    ("Runtime", "--amp", dict(action=_BOOL, help="mixed precision: bfloat16 on CPU, bfloat16/float16 on CUDA")),
    ("Runtime", "--compile", dict(action=_BOOL, help="torch.compile the model")),
    ("Runtime", "--channels-last", dict(action=_BOOL)),
    ("Runtime", "--threads", dict(type=int)),
    ("Runtime", "--seed", dict(type=int)),
    ("Runtime", "--deterministic", dict(action=_BOOL)),
    ("Runtime", "--max-steps", dict(type=int, metavar="N", help="stop after N optimizer steps")),
    ("Runtime", "--skip-nonfinite", dict(type=int, metavar="N", help="skip up to N batches whose loss is NaN or "
                                         "infinite instead of stopping (default 0: stop at the first)")),
    ("Runtime", "--progress", dict(action=_BOOL, help="tqdm progress bars")),
    ("Output", "--out", dict(metavar="RUN_DIR")),
    ("Output", "--resume", dict(metavar="RUN_DIR", help="continue the run in RUN_DIR from checkpoints/last.pt")),
    ("Output", "--save-every", dict(type=int, metavar="STEPS", help="also checkpoint every STEPS steps within an "
                                    "epoch (default: at the end of each epoch only)")),
]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model",
        description="Train AlexNet. A preset sets documented defaults; every flag given overrides it.",
    )
    p.add_argument("--preset", choices=tuple(PRESETS), default=None)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for group, flag, options in ARGUMENTS:
        g = groups.setdefault(group, p.add_argument_group(group))
        g.add_argument(flag, default=None, **options)
    p.set_defaults(run=run)


def given(args) -> dict:
    fields = set(TrainConfig.__dataclass_fields__)
    return {k: v for k, v in vars(args).items() if k in fields and v is not None}


def config_from_args(args, resume_ckpt: dict | None = None) -> TrainConfig:
    """The run's configuration: the preset and the flags given; with ``--resume``, the stored
    configuration of ``resume_ckpt`` (the run's last.pt) with the flags given now on top."""
    overrides = given(args)
    if args.resume is not None:
        stored = (resume_ckpt or {}).get("config")
        if not isinstance(stored, dict):
            raise AlexNetError(f"{RunDirectory(args.resume).checkpoint('last')} holds no configuration")
        base = {**stored, **overrides}
        if "epochs" in overrides:  # epochs asked for: they replace a time budget's cut of the last one
            base["train_steps"] = None
        return resolve_config(None, base)
    return resolve_config(args.preset, overrides)


def run(args) -> int:
    # Read once (a checkpoint is 0.2-0.9 GB): its configuration here, its state in fit.
    resume_ckpt = read_resume_checkpoint(args.resume) if args.resume is not None else None
    cfg = config_from_args(args, resume_ckpt)
    fit(cfg, started=getattr(args, "started", None), resume_ckpt=resume_ckpt)
    return 0
