"""The paper's ablations on the real Fashion-MNIST, at a budget a 2-core CPU allows.

    flock /tmp/alexnet-bench.lock .venv/bin/python benchmarks/ablation.py

trains the five variants (baseline = the paper's choices, no-lrn, no-overlap, no-dropout,
torch-init) of alexnet_paper with the quick preset's recipe (AdamW, peak lr 1e-3,
one-cycle, weight decay 0.05, label smoothing 0.1, flips, bfloat16 autocast) at 63 px for
2 epochs, seeds 0 and 1: 10 runs on all 60,000 training images, each tested on the
10,000 test images. About 45-50 minutes at the quick preset's measured 476 images/s
(2.2 minutes per epoch); the runs need about 14 GB of disk (two checkpoints of ~0.7 GB,
weights and AdamW state, per run).

The table goes to benchmarks/results/ablation-fashion-mnist.csv (one row per variant),
-runs.csv (one row per run), .md and .png, rewritten after every run. The runs are
ordinary run directories under --out (default runs/ablation-fashion-mnist/<variant>/seed-<s>);
running the script again reuses finished runs and resumes an unfinished one. A smoke run
(a few minutes' budget cut to well under one):

    .venv/bin/python benchmarks/ablation.py --subset 256 --epochs 1 --seeds 1 \\
        --out /tmp/ablation-smoke --results /tmp/ablation-smoke/results
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from alexnet.ablation import VARIANTS, describe_setup, parse_variants, run_ablation, write_report
from alexnet.config import resolve_config
from alexnet.errors import AlexNetError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["all"], help="'all' or some of: " + ", ".join(VARIANTS))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--image-size", type=int, default=63)
    p.add_argument("--subset", type=int, default=None, help="only the first N images of each split")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/ablation-fashion-mnist", help="the run directories")
    p.add_argument("--results", default=str(Path(__file__).parent / "results"), help="where the table goes")
    args = p.parse_args()
    try:
        variants = parse_variants(args.variants)
        base = resolve_config("quick", {
            "dataset": "fashion-mnist", "data_dir": args.data_dir, "epochs": args.epochs,
            "image_size": args.image_size, "subset": args.subset, "progress": False,
        })  # fmt: skip
    except AlexNetError as e:
        print(f"ablation: error: {e}", file=sys.stderr)
        return 2
    seeds = list(range(args.seeds))
    machine = (
        f"Measured with benchmarks/ablation.py on {platform.machine()} ({os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads), torch {torch.__version__}, Python {platform.python_version()}."
    )
    stem = Path(args.results) / "ablation-fashion-mnist"
    title = "Ablations of alexnet_paper on Fashion-MNIST"
    setup = describe_setup(base, seeds) + "\n\n" + machine
    t0 = time.perf_counter()

    def report(results) -> None:
        write_report(results, stem, setup=setup, title=title)

    try:
        results = run_ablation(base, variants, seeds, args.out, after_each=report)
    except AlexNetError as e:
        print(f"ablation: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    wall = time.perf_counter() - t0
    trained = sum(r.status == "trained" for r in results)
    setup += (
        f" Wall time of the last invocation: {wall / 60:.1f} min for {trained} run(s) trained"
        f" and {len(results) - trained} reused or failed."
    )
    paths = write_report(results, stem, setup=setup, title=title)
    print(stem.with_suffix(".md").read_text(), end="")
    print("written: " + ", ".join(str(p) for p in paths))
    return 0 if all(r.status != "failed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
