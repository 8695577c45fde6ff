"""``alexnet predict``: class names and probabilities for image files."""

from __future__ import annotations

import json

import torch

from ..data import open_image
from ..engine.checkpoint import load_for_inference
from ..errors import AlexNetError


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify image files")
    p.add_argument("--checkpoint", required=True, metavar="C")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=int, default=5, metavar="K")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.topk < 1:
        raise AlexNetError(f"--topk must be positive, got {args.topk}")
    model, class_names, preprocess = load_for_inference(args.checkpoint)
    k = min(args.topk, len(class_names))
    for path in args.images:
        x = preprocess(open_image(path)).unsqueeze(0)
        with torch.no_grad():
            probs = torch.softmax(model(x).float(), dim=1)[0]
        top = probs.topk(k)
        pairs = [(class_names[i], float(p)) for p, i in zip(top.values, top.indices)]
        if args.json:
            print(json.dumps({"image": path, "top": [{"class": c, "probability": p} for c, p in pairs]}))
        else:
            print(f"{path}: " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in pairs))
    return 0
