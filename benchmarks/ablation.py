"""The paper's ablations on the real Fashion-MNIST, at a budget a 2-core CPU allows.

    flock /tmp/alexnet-bench.lock .venv/bin/python benchmarks/ablation.py

trains the five variants (baseline = the paper's choices, no-lrn, no-overlap, no-dropout,
torch-init) of alexnet_paper with the quick preset's recipe (AdamW, peak lr 1e-3,
one-cycle, weight decay 0.05, label smoothing 0.1, flips, bfloat16 autocast) at 103 px,
where every variant's last feature map is 3x3 (``alexnet ablate`` refuses sizes where the
variants' maps differ or are smaller), for 5 epochs, seeds 0, 1 and 2: 15 runs on the first
10,000 training images, 2,000 of them kept apart (seeded, stratified) as the validation split
the variants are compared on. The test split is not read. A small training set trained for
several epochs is what lets overfitting, and so dropout's effect, show within a CPU's
budget: the table's training error should end below the validation error. Each run keeps
two checkpoints of ~0.7 GB (weights and AdamW state).

The table goes to benchmarks/results/ablation-fashion-mnist-<size>.csv (one row per variant),
-runs.csv (one row per run), .md and .png, rewritten after every run. The runs are
ordinary run directories under --out (default runs/ablation-fashion-mnist-<size>/<variant>/seed-<s>);
running the script again reuses finished runs and resumes an unfinished one. A smoke run:

    .venv/bin/python benchmarks/ablation.py --subset 512 --val-split 128 --epochs 1 --seeds 1 \\
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

from alexnet.paper.ablation import VARIANTS, describe_setup, final_map_labels, parse_variants, run_ablation, write_report
from alexnet.config import resolve_config
from alexnet.errors import AlexNetError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["all"], help="'all' or some of: " + ", ".join(VARIANTS))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--image-size", type=int, default=103)
    p.add_argument("--subset", type=int, default=10000, help="only the first N images of each split")
    p.add_argument("--val-split", type=int, default=2000, help="training images kept apart to compare on")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="the run directories (default runs/ablation-fashion-mnist-<size>)")
    p.add_argument("--results", default=str(Path(__file__).parent / "results"), help="where the table goes")
    args = p.parse_args()
    try:
        variants = parse_variants(args.variants)
        base = resolve_config("quick", {
            "dataset": "fashion-mnist", "data_dir": args.data_dir, "epochs": args.epochs,
            "image_size": args.image_size, "subset": args.subset, "val_split": args.val_split, "progress": False,
        })  # fmt: skip
    except AlexNetError as e:
        print(f"ablation: error: {e}", file=sys.stderr)
        return 2
    seeds = list(range(args.seeds))
    machine = (
        f"Measured with benchmarks/ablation.py on {platform.machine()} ({os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads), torch {torch.__version__}, Python {platform.python_version()}."
    )
    stem = Path(args.results) / f"ablation-fashion-mnist-{args.image_size}"
    out = args.out or f"runs/ablation-fashion-mnist-{args.image_size}"
    title = "Ablations of alexnet_paper on Fashion-MNIST"
    setup = describe_setup(base, seeds) + "\n\n" + machine
    t0 = time.perf_counter()

    def report(results) -> None:
        write_report(results, stem, setup=setup, title=title, final_maps=maps)

    try:
        maps = final_map_labels(base, variants)
        results = run_ablation(base, variants, seeds, out, after_each=report)
    except AlexNetError as e:
        print(f"ablation: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    wall = time.perf_counter() - t0
    trained = sum(r.status == "trained" for r in results)
    setup += (
        f" Wall time of the last invocation: {wall / 60:.1f} min for {trained} run(s) trained"
        f" and {len(results) - trained} reused or failed."
    )
    paths = write_report(results, stem, setup=setup, title=title, final_maps=maps)
    print(stem.with_suffix(".md").read_text(), end="")
    print("written: " + ", ".join(str(p) for p in paths))
    return 0 if all(r.status != "failed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
