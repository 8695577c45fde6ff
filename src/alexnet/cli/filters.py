"""``alexnet filters``: the first convolution's kernels as a grid image (the paper's Figure 3)."""

from __future__ import annotations

from pathlib import Path

from .. import plots
from ..analysis import filter_blocks, first_layer_kernels, run_dir_of
from ..engine.checkpoint import build_model, read_checkpoint
from ..errors import AlexNetError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "filters",
        help="draw the first convolution's kernels (the paper's Figure 3)",
        description="Draw conv1's kernels as a grid, each scaled to its own range. For alexnet_paper_grouped "
        "the two halves that feed the two conv2 groups are drawn as two labelled blocks.",
    )
    p.add_argument("--checkpoint", required=True, metavar="C")
    p.add_argument("--out", default=None, metavar="FILE", help="default: <run>/plots/filters.png")
    p.add_argument("--columns", type=int, default=16, metavar="N", help="kernels per row (default 16)")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.columns < 1:
        raise AlexNetError(f"--columns must be positive, got {args.columns}")
    ckpt = read_checkpoint(args.checkpoint)
    model = build_model(ckpt, args.checkpoint)
    weight, groups = first_layer_kernels(model)
    blocks = filter_blocks(weight, groups, ncols=args.columns)
    n, c, k = weight.shape[0], weight.shape[1], weight.shape[-1]
    per = n // groups
    if groups == 1:
        titles = [f"{n} kernels"]
    else:
        titles = [f"group {g + 1}: kernels {g * per}-{(g + 1) * per - 1}, which feed conv2's group {g + 1}"
                  for g in range(groups)]  # fmt: skip
    colour = {1: "grey", 3: "RGB"}.get(c, f"mean of {c} channels")
    name = ckpt["model_args"]["name"]
    out = Path(args.out) if args.out else run_dir_of(args.checkpoint) / "plots" / "filters.png"
    plots.plot_filters(blocks, titles, out,
                       suptitle=f"{name}: conv1, {n} kernels of {k}x{k}x{c} ({colour}), each scaled to its own range")  # fmt: skip
    print(f"{n} first-layer kernels of {name} ({groups} block{'s' if groups > 1 else ''}) drawn in {out}")
    return 0
