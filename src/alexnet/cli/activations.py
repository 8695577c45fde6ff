"""``alexnet activations``: the feature maps of every convolution for one image."""

from __future__ import annotations

from pathlib import Path

from .. import plots
from ..data import open_image
from ..engine.checkpoint import load_for_inference
from ..errors import AlexNetError
from ..paper.analysis import feature_map_grid, feature_maps
from ..run_dir import RunDirectory


def add_parser(sub) -> None:
    p = sub.add_parser(
        "activations",
        help="draw each convolution's feature maps (after its ReLU) for one image",
        description="One panel per convolution, conv1 to conv5: a grid of its first channels after the ReLU, "
        "each map scaled by its own maximum (black: the unit is silent everywhere).",
    )
    p.add_argument("--checkpoint", required=True, metavar="C")
    p.add_argument("--image", required=True, metavar="FILE")
    p.add_argument("--channels", type=int, default=32, metavar="N", help="maps shown per layer (default 32)")
    p.add_argument("--out", default=None, metavar="FILE", help="default: <run>/plots/activations-<image name>.png")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.channels < 1:
        raise AlexNetError(f"--channels must be positive, got {args.channels}")
    if not Path(args.image).is_file():
        raise AlexNetError(f"{args.image}: no such file")
    model, _, preprocess = load_for_inference(args.checkpoint)
    x = preprocess(open_image(args.image))
    panels = []
    for name, maps in feature_maps(model, x):
        c, h, w = maps.shape
        shown = min(args.channels, c)
        silent = int((maps.flatten(1).amax(1) <= 0).sum())
        title = f"{name}: {c} maps of {h}x{w}" + (f", first {shown}" if shown < c else "") + f"; {silent} silent"
        panels.append((title, feature_map_grid(maps, args.channels)))
    out = Path(args.out) if args.out else RunDirectory.of_checkpoint(args.checkpoint).plot(f"activations-{Path(args.image).stem}.png")
    spec = preprocess.spec
    plots.plot_feature_maps(x, panels, out, mean=spec["mean"], std=spec["std"],
                            suptitle=f"{Path(args.image).name}: feature maps after each convolution's ReLU")  # fmt: skip
    for title, _ in panels:
        print(title)
    print(f"feature maps drawn in {out}")
    return 0
