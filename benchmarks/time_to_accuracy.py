"""Time to accuracy: train a preset on the real Fashion-MNIST, record test accuracy against wall time.

    .venv/bin/python benchmarks/time_to_accuracy.py --preset quick --out runs/tta-quick

Writes <out>/time_to_accuracy.csv (wall_s, epoch, step, test_top1) and time_to_accuracy.png,
and prints the figures the README quotes. Wall time counts from before the data is loaded
to the end of each epoch's evaluation on the full 10,000-image test set; the test set is
the validation split, evaluated once per epoch, so the curve has one point per epoch.
Any TrainConfig field can be overridden: --set epochs=3 --set image_size=96.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from alexnet import plots  # noqa: F401  (selects matplotlib's Agg backend)
from alexnet.config import TrainConfig, resolve_config
from alexnet.engine import fit


def parse_override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    field = TrainConfig.__dataclass_fields__[key]
    kind = str(field.type)
    if "bool" in kind:
        return key, value.lower() in ("1", "true", "yes")
    if "int" in kind:
        return key, int(value)
    if "float" in kind:
        return key, float(value)
    return key, value


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick")
    p.add_argument("--out", default="runs/tta-quick")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    overrides = dict(parse_override(s) for s in args.set)
    cfg = resolve_config(args.preset, {**overrides, "out": args.out, "progress": False})
    t0 = time.perf_counter()
    result = fit(cfg)
    total = time.perf_counter() - t0
    out = Path(args.out)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    # Setup (process start to the first step) is charged to the first epoch.
    setup = total - sum(float(r["epoch_time_s"]) for r in rows)
    wall, series = setup, []
    for r in rows:
        wall += float(r["epoch_time_s"])
        series.append({"wall_s": round(wall, 1), "epoch": int(r["epoch"]), "test_top1": float(r["val_top1"]),
                       "images_per_s": float(r["images_per_s"])})  # fmt: skip
    with (out / "time_to_accuracy.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(series[0]))
        w.writeheader()
        w.writerows(series)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([0] + [s["wall_s"] / 60 for s in series], [10.0] + [100 * s["test_top1"] for s in series], "o-")
    ax.axhline(91, ls="--", c="gray", lw=1, label="91% target")
    ax.axvline(15, ls=":", c="gray", lw=1, label="15 minutes")
    ax.set(xlabel="wall time (minutes)", ylabel="test top-1 (%)", title=f"{args.preset} preset, Fashion-MNIST", ylim=(50, 100))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "time_to_accuracy.png", dpi=100)
    machine = {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }
    summary = {"preset": args.preset, "overrides": overrides, "total_wall_s": round(total, 1),
               "final_test_top1": result["eval"]["top1"], "n": result["eval"]["n"], "machine": machine, "series": series}  # fmt: skip
    (out / "time_to_accuracy.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
