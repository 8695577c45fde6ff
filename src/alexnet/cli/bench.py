"""``alexnet bench``: throughput of the usual AlexNet pipeline against ours (benchmarks/throughput.py)."""

from __future__ import annotations


def add_parser(sub) -> None:
    from ..bench import parse_args

    p = sub.add_parser("bench", help="training and inference images/s: the usual pipeline against ours")
    parse_args(parser=p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..bench import run as run_bench

    run_bench(args)
    return 0
