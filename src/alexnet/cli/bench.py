"""``alexnet bench``: throughput of the usual AlexNet pipeline against ours (alexnet/bench.py does the timing)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="training and inference images/s: the usual pipeline against ours",
                       description="throughput: the usual AlexNet pipeline against ours")  # fmt: skip
    p.add_argument("--model", default="alexnet_paper", help="alexnet_paper or alexnet_owt")
    p.add_argument("--image-size", type=int, default=227)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None, help="where Fashion-MNIST is (default: the usual search)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds after the warm-up")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per phase")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the usual pipeline")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CPU) / mixed precision (CUDA); with --only ours")
    p.add_argument("--compile", action="store_true", help="torch.compile; with --only ours")
    p.add_argument("--only", choices=("both", "ours"), default="both", help="ours: time this package's pipeline alone")
    p.add_argument("--data", choices=("fashion-mnist", "synthetic", "imagefolder"), default="fashion-mnist",
                   help="synthetic: generated images (with --only ours); imagefolder: a tree or a prepared store "
                        "(--data-dir, with --loader)")
    p.add_argument("--loader", action="store_true", help="the input pipeline alone beside the training step alone, "
                   "on the same device; names the bottleneck")
    p.add_argument("--seconds", type=float, default=10.0, help="with --loader: how long each is timed")
    p.add_argument("--train-crop", choices=("paper", "random-resized"), default="random-resized",
                   help="with --loader on imagefolder: the training crop")
    p.add_argument("--in-channels", type=int, default=None, help="default: 1 for Fashion-MNIST, 3 for synthetic")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--infer-iters", type=int, default=3, help="timed batches per inference measurement")
    p.add_argument("--infer-batch-sizes", type=int, nargs="+", default=None, metavar="B",
                   help="inference batch sizes to time (default: 1 and --batch-size); each is its own compilation with --compile")
    p.add_argument("--no-keep-memory", action="store_true", help="leave glibc's malloc as it is (see engine/cpu.py)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    # Imported here, not at the top: the benchmark pulls in torchvision's datasets and the
    # baseline pipeline, which every other command would otherwise load at start-up.
    from ..errors import AlexNetError

    if args.loader:
        from ..loader_speed import run as run_loader_speed

        result = run_loader_speed(args)
        if args.json:
            import json
            from pathlib import Path

            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if args.data == "imagefolder":
        raise AlexNetError("--data imagefolder times the input pipeline: add --loader")
    from ..bench import run as run_bench

    run_bench(args)
    return 0
