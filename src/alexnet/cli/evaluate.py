"""``alexnet eval``: top-1, top-5, loss, per-class accuracy, confusion matrix and mistakes of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from .. import plots
from ..data import DATASETS
from ..engine.checkpoint_eval import DATA_OVERRIDES, evaluate_checkpoint
from ..run_dir import RunDirectory, write_confusion


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
    ev = evaluate_checkpoint(
        args.checkpoint,
        overrides={name: getattr(args, name) for name in DATA_OVERRIDES},
        device=args.device,
        batch_size=args.batch_size,
        tta=args.tta,
        keep_mistakes=32,
    )
    result, names, info = ev.result, ev.class_names, ev.info
    out = Path(args.out) if args.out else RunDirectory.of_checkpoint(args.checkpoint).eval_dir
    out.mkdir(parents=True, exist_ok=True)
    plots.plot_confusion(result["confusion"], names, out / "confusion.png")
    write_confusion(out, result["confusion"], names)
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
