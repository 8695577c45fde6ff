"""``alexnet predict``: class names and probabilities for image files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from ..engine.checkpoint import load_for_inference
from ..errors import AlexNetError

# PIL's own bomb check warns at 89 MP and refuses at 179 MP; refuse at the warning so a
# huge file is an error, not minutes of decoding.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify image files")
    p.add_argument("--checkpoint", required=True, metavar="C")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=int, default=5, metavar="K")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(run=run)


def open_image(path: str) -> Image.Image:
    file = Path(path)
    if not file.is_file():
        raise AlexNetError(f"{path}: no such file")
    if file.stat().st_size == 0:
        raise AlexNetError(f"{path}: the file is empty")
    try:
        with warnings.catch_warnings():
            # PIL warns about damaged metadata (EXIF, truncated TIFF tags) on files it still
            # decodes; the answer is the prediction, not a warning on stderr.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(file)
            if img.width * img.height > MAX_PIXELS:
                raise AlexNetError(f"{path}: {img.width}x{img.height} is too large to classify (over {MAX_PIXELS:,} pixels)")
            img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if isinstance(e, UnidentifiedImageError):
            raise AlexNetError(f"{path}: not an image file this program can read") from None
        raise AlexNetError(f"{path}: the image is too large to classify") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise AlexNetError(f"{path}: cannot decode the image ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    return img


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
