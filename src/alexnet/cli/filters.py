"""``alexnet filters``: the first convolution's kernels as a grid image (the paper's Figure 3)."""

from __future__ import annotations

from pathlib import Path

from ..engine.checkpoint import read_checkpoint
from ..errors import AlexNetError
from ..paper.figures import draw_filters
from ..run_dir import RunDirectory


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
    out = Path(args.out) if args.out else RunDirectory.of_checkpoint(args.checkpoint).plot("filters.png")
    print(f"{draw_filters(ckpt, args.checkpoint, out, columns=args.columns)} drawn in {out}")
    return 0
