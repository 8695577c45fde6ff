"""``alexnet summary``: the layer table (output shapes, parameters, multiply-adds) from torchinfo."""

from __future__ import annotations

import torchinfo

from ..errors import AlexNetError
from ..models import create_model, list_models, model_info


def add_parser(sub) -> None:
    p = sub.add_parser("summary", help="layer table with output shapes, parameters and multiply-adds")
    p.add_argument("--model", required=True, help=f"one of: {', '.join(list_models())}")
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--image-size", type=int, default=None, help="default: the model's native size")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--depth", type=int, default=2, help="how deep to expand nested modules")
    p.set_defaults(run=run)


def run(args) -> int:
    info = model_info(args.model)  # an unknown model is a one-line error here
    size = info.native_size if args.image_size is None else args.image_size
    if size < info.min_size:
        raise AlexNetError(f"--image-size {size} is too small for {args.model}; the smallest it takes is {info.min_size} px")
    for flag, value, least in (("--in-channels", args.in_channels, 1), ("--num-classes", args.num_classes, 1),
                               ("--depth", args.depth, 0)):  # fmt: skip
        if value < least:
            raise AlexNetError(f"{flag} must be at least {least} for {args.model}, got {value}")
    model = create_model(args.model, num_classes=args.num_classes, in_channels=args.in_channels)
    try:
        stats = torchinfo.summary(
            model,
            input_size=(1, args.in_channels, size, size),
            col_names=("output_size", "num_params", "mult_adds"),
            row_settings=("var_names",),
            depth=args.depth,
            verbose=0,
            device="cpu",
        )
    except RuntimeError:
        raise AlexNetError(
            f"--image-size {size} is too small for {args.model}; the smallest it takes is {model_info(args.model).min_size} px"
        ) from None
    print(f"{args.model}: {model_info(args.model).reproduces}")
    print(f"input (1, {args.in_channels}, {size}, {size}), {args.num_classes} classes")
    print(stats)
    print(f"parameters: {stats.total_params:,}  multiply-adds: {stats.total_mult_adds:,}")
    return 0
