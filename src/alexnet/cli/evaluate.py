"""``alexnet eval``: top-1, top-5, loss, per-class accuracy, confusion matrix and mistakes of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import plots
from ..data import DATASETS, build_loaders
from ..engine.checkpoint import build_model, read_checkpoint
from ..engine.evaluate import evaluate
from ..engine.fit import amp_context, data_config, select_device
from ..config import TrainConfig


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint")
    p.add_argument("--checkpoint", required=True, metavar="C")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="default: the one the checkpoint was trained on")
    p.add_argument("--data-dir", default=None, metavar="DIR")
    p.add_argument("--val-dir", default=None, metavar="DIR")
    p.add_argument("--val-labels", default=None, metavar="FILE")
    p.add_argument("--subset", type=int, default=None, metavar="N")
    p.add_argument("--tta", choices=("10crop",), default=None, help="the paper's 10-crop test")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, metavar="DIR", help="where the pictures go (default: <run>/eval)")
    p.add_argument("--json", action="store_true", help="print one JSON object: top1, top5, loss, n, per_class")
    p.set_defaults(run=run)


def run(args) -> int:
    ckpt = read_checkpoint(args.checkpoint)
    model = build_model(ckpt, args.checkpoint)
    cfg = TrainConfig.from_dict(ckpt.get("config", {}))
    if cfg.data_dir and not Path(cfg.data_dir).expanduser().is_dir():
        cfg.data_dir = None  # the training machine's folder is not here: search the usual places
    for name in ("dataset", "data_dir", "val_dir", "val_labels", "subset"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.batch_size is not None and args.batch_size < 1:
        from ..errors import AlexNetError

        raise AlexNetError(f"--batch-size must be positive, got {args.batch_size}")
    cfg.in_channels = ckpt["model_args"]["in_channels"]
    device = select_device(args.device)
    batch = args.batch_size or cfg.eval_batch_size or cfg.batch_size
    _, loader, info = build_loaders(data_config(cfg), device=device, batch_size=batch, eval_batch_size=batch, tta=args.tta)
    num_classes = ckpt["model_args"]["num_classes"]
    model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast, _ = amp_context(device, cfg.amp)
    result = evaluate(model, loader, num_classes, autocast=autocast, channels_last=cfg.channels_last, keep_mistakes=32)
    names = list(ckpt.get("class_names") or info.class_names)
    names += [str(i) for i in range(len(names), num_classes)]
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    plots.plot_confusion(result["confusion"], names, out / "confusion.png")
    (out / "confusion.json").write_text(json.dumps({"class_names": names, "matrix": result["confusion"]}) + "\n")
    if result["mistakes"]:
        plots.plot_images(
            [m[0] for m in result["mistakes"]],
            [f"true {names[t]}\npred {names[p]}" for _, t, p in result["mistakes"]],
            out / "misclassified.png",
            mean=info.mean,
            std=info.std,
        )
    per_class = {names[i]: acc for i, acc in enumerate(result["per_class"]) if result["per_class_n"][i] > 0}
    if args.json:
        print(json.dumps({k: result[k] for k in ("top1", "top5", "loss", "n")} | {"per_class": per_class}))
        return 0
    print(f"{args.checkpoint} on {result['n']} {info.name} images{' (10-crop)' if args.tta else ''}")
    print(f"top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  loss {result['loss']:.4f}")
    width = max(len(n) for n in per_class) if per_class else 0
    for name, acc in per_class.items():
        print(f"  {name:<{width}}  {100 * acc:6.2f}%")
    print(f"confusion matrix and misclassified images in {out}")
    return 0
