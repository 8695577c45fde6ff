"""``alexnet neighbors``: training images nearest to a query in the last hidden layer (the paper's Figure 4)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import plots
from ..analysis import bank_features, cached_features, feature_scale, neighbors, query_features, run_dir_of
from ..config import TrainConfig
from ..data import build_preprocess
from ..data.eval_split import open_eval_split
from ..engine.checkpoint import build_model, read_checkpoint
from ..engine.fit import data_config, select_device
from ..errors import AlexNetError
from .predict import open_image


def add_parser(sub) -> None:
    p = sub.add_parser(
        "neighbors",
        help="training images nearest to a query in the last hidden layer (the paper's Figure 4)",
        description="For each query image, the training images whose 4096-d last hidden layer (fc7 after its "
        "ReLU) is nearest in Euclidean distance. The training features are computed once and cached in "
        "<run>/cache/.",
    )
    p.add_argument("--checkpoint", required=True, metavar="C")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--index", type=int, nargs="+", metavar="I", help="images of the --split split, by index")
    query.add_argument("--image", nargs="+", metavar="FILE", help="image files, preprocessed as predict does")
    p.add_argument("--k", type=int, default=6, help="neighbours per query (default 6)")
    p.add_argument("--split", choices=("val", "train"), default="val",
                   help="the split --index refers to (default val: the test set for Fashion-MNIST and CIFAR-10)")  # fmt: skip
    p.add_argument("--data-dir", default=None, metavar="DIR", help="default: where the checkpoint's data was found")
    p.add_argument("--subset", type=int, default=None, metavar="N", help="default: the checkpoint's")
    p.add_argument("--batch-size", type=int, default=256, help="for computing the training features")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, metavar="FILE", help="default: <run>/plots/neighbors.png")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.k < 1:
        raise AlexNetError(f"--k must be at least 1, got {args.k}")
    if args.batch_size < 1:
        raise AlexNetError(f"--batch-size must be positive, got {args.batch_size}")
    if args.image:
        for path in args.image:
            if not Path(path).is_file():
                raise AlexNetError(f"{path}: no such file")
    ckpt = read_checkpoint(args.checkpoint)
    model = build_model(ckpt, args.checkpoint).eval()
    spec = ckpt.get("preprocess")
    if not isinstance(spec, dict):
        raise AlexNetError(f"{args.checkpoint} holds no preprocessing; it is not a training checkpoint of this package")
    cfg = TrainConfig.from_dict(ckpt.get("config") or {})
    for name in ("data_dir", "subset"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    cfg.in_channels = ckpt["model_args"]["in_channels"]
    names = list(ckpt.get("class_names") or [])
    names += [str(i) for i in range(len(names), ckpt["model_args"]["num_classes"])]
    device = select_device(args.device)
    model.to(device)

    dcfg = data_config(cfg)
    train = open_eval_split(dcfg, "train", spec)
    split = train if args.split == "train" else open_eval_split(dcfg, "val", spec)
    if args.index is not None:
        for i in args.index:
            split.check_index(i)
    bank, _ = cached_features(model, args.checkpoint, train, run_dir_of(args.checkpoint) / "cache",
                              batch_size=args.batch_size, device=device)  # fmt: skip
    if args.index is not None:
        # (picture, caption) per query; training images take their features from the bank.
        queries = [(split.picture(i), f"{split.name} #{i}\n{names[int(split.labels[i])]}") for i in args.index]
        feats = bank_features(bank, args.index) if split is train else None
        if feats is None:
            feats = query_features(model, split.images(args.index), device)
    else:
        preprocess = build_preprocess(spec)
        inputs = [preprocess(open_image(path)) for path in args.image]
        queries = [(x, Path(path).name) for x, path in zip(inputs, args.image)]
        feats = query_features(model, torch.stack(inputs), device)

    dist, found = neighbors(feats, bank, args.k)
    digits = decimals(feature_scale(bank))
    rows = []
    for (picture, caption), ds, js in zip(queries, dist.tolist(), found.tolist()):
        hits = [(train.picture(j), f"train #{j}\n{names[int(train.labels[j])]}\nd = {d:.{digits}f}") for d, j in zip(ds, js)]
        rows.append((picture, caption, hits))
        print(caption.replace("\n", " ") + ": " + ", ".join(
            f"train #{j} {names[int(train.labels[j])]} ({d:.{digits}f})" for d, j in zip(ds, js)))  # fmt: skip
    out = Path(args.out) if args.out else run_dir_of(args.checkpoint) / "plots" / "neighbors.png"
    plots.plot_neighbors(rows, out, mean=spec["mean"], std=spec["std"],
                         suptitle=f"{ckpt['model_args']['name']}: nearest training images\n"
                                  "in the last hidden layer (Euclidean distance d)")  # fmt: skip
    print(f"neighbours drawn in {out}")
    return 0


def decimals(scale: float) -> int:
    """Decimals that give four significant digits of the features' length (their scale differs
    from model to model), so that distances compare at a glance and a copy prints as 0."""
    return max(0, 3 - math.floor(math.log10(scale))) if scale > 0 else 4
