"""``alexnet neighbors``: training images nearest to a query in the last hidden layer (the paper's Figure 4)."""

from __future__ import annotations

from pathlib import Path

from ..engine.checkpoint import read_checkpoint
from ..errors import AlexNetError
from ..paper.figures import draw_neighbors
from ..run_dir import RunDirectory


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
    p.add_argument("--k", type=int, default=6, help="neighbors per query (default 6)")
    p.add_argument("--split", choices=("val", "train"), default="val",
                   help="the split --index refers to (default val: the test set for Fashion-MNIST and CIFAR-10)")  # fmt: skip
    p.add_argument("--data-dir", default=None, metavar="DIR", help="default: where the checkpoint's data was found")
    p.add_argument("--subset", type=int, default=None, metavar="N", help="default: the checkpoint's")
    p.add_argument("--batch-size", type=int, default=256, help="for computing the training features")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, metavar="FILE", help="default: <run>/plots/neighbors.png")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.image:
        for path in args.image:
            if not Path(path).is_file():
                raise AlexNetError(f"{path}: no such file")
    ckpt = read_checkpoint(args.checkpoint)
    out = Path(args.out) if args.out else RunDirectory.of_checkpoint(args.checkpoint).plot("neighbors.png")
    found = draw_neighbors(ckpt, args.checkpoint, out, index=args.index, images=args.image, k=args.k,
                           split=args.split, data_dir=args.data_dir, subset=args.subset,
                           batch_size=args.batch_size, device=args.device)  # fmt: skip
    for line in found.lines():
        print(line)
    print(f"neighbors drawn in {out}")
    return 0
