"""The paper's ablations: variants of its network trained under one budget, data order and seeds.

Each variant is a few TrainConfig overrides on the paper's values. Every variant x seed
is an ordinary run directory, ``OUT/<variant>/seed-<s>/``, trained by ``fit``; a finished
one (``result.json`` with the same configuration) is reused and an unfinished one is
resumed, so an interrupted ablation continues where it stopped. The tables (CSV and
Markdown) and the bar plot are rewritten after every run.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import plots
from ..config import TrainConfig, validate_config
from ..engine import fit
from ..engine.fit import TrainingStopped
from ..errors import AlexNetError
from ..models import create_model
from ..run_dir import RunDirectory


@dataclass(frozen=True)
class Variant:
    name: str
    change: str  # what differs from the paper's network, in words
    overrides: dict
    paper: str  # what the paper reports for this choice (on ImageNet)


# The paper's choices for the ablated axes; every variant starts from these, whatever the
# preset says (the quick preset, for one, uses PyTorch's init).
PAPER_VALUES = dict(lrn=True, pool_kernel=3, pool_stride=2, dropout=0.5, init="paper")

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("baseline", "the paper's: LRN, overlapping 3/2 pooling, dropout 0.5, N(0, 0.01) init", {}, ""),
        Variant("no-lrn", "no local response normalisation", {"lrn": False},
                "LRN lowers top-1 error by 1.4%, top-5 by 1.2% (section 3.3)"),
        Variant("no-overlap", "non-overlapping 2/2 max-pooling", {"pool_kernel": 2, "pool_stride": 2},
                "overlapping pooling lowers top-1 error by 0.4%, top-5 by 0.3% (section 3.4)"),
        Variant("no-dropout", "no dropout in fc6 and fc7", {"dropout": 0.0},
                "without dropout the network overfits substantially (section 4.2)"),
        Variant("torch-init", "PyTorch's default init (Kaiming-uniform)", {"init": "torch"},
                "no comparison; the paper's init is N(0, 0.01), biases 1 in conv2, conv4, conv5, fc6, fc7"),
    )
}  # fmt: skip

# Fields that say where or how fast a run goes, not what it computes: a finished run is
# reused when everything else matches.
NOT_COMPARED = {"out", "resume", "progress", "device", "threads", "workers", "data_dir", "train_dir", "val_dir",
                "val_labels", "download", "compile", "eval_batch_size"}  # fmt: skip

RESULT_FILE = "result.json"


@dataclass
class RunResult:
    variant: str
    seed: int
    run_dir: str
    status: str  # trained | reused | failed
    top1_error: float = math.nan
    top5_error: float = math.nan
    val_loss: float = math.nan
    train_error: float = math.nan  # the last epoch's running training error (dropout and augmentation on)
    epochs: int = 0
    train_seconds: float = math.nan
    n: int | None = None  # images in the evaluated split
    message: str = ""

    def to_row(self) -> dict:
        return {k: getattr(self, k) for k in RUN_FIELDS}


RUN_FIELDS = ["variant", "seed", "status", "top1_error", "top5_error", "val_loss", "train_error", "epochs",
              "train_seconds", "n", "run_dir", "message"]  # fmt: skip


def parse_variants(names: Sequence[str]) -> list[str]:
    """``["all"]`` or variant names (also comma-separated), in the order given, without repeats."""
    chosen: list[str] = []
    for item in names:
        for name in filter(None, (part.strip() for part in item.split(","))):
            if name == "all":
                chosen.extend(VARIANTS)
            elif name not in VARIANTS:
                raise AlexNetError(f"unknown variant {name!r}; choose from: all, {', '.join(VARIANTS)}")
            else:
                chosen.append(name)
    if not chosen:
        raise AlexNetError("no variant given")
    return list(dict.fromkeys(chosen))


def variant_config(base: TrainConfig, variant: str, seed: int, run_dir: Path) -> TrainConfig:
    """The base configuration with the paper's values, the variant's change, the seed and the run directory.

    No time budget: it would plan each variant's epochs on its own speed, and the variants must
    train for the same epochs to be compared. No test split: the variants are compared on the
    validation split, and an ablation is a tuning decision, which must not see the test split."""
    values = {**base.to_dict(), **PAPER_VALUES, **VARIANTS[variant].overrides, "seed": seed, "out": str(run_dir),
              "resume": None, "time_budget": 0.0, "test": False}  # fmt: skip
    cfg = TrainConfig.from_dict(values)
    validate_config(cfg)
    return cfg


def final_map(cfg: TrainConfig) -> tuple[int, int] | None:
    """The height and width of the last feature map (what fc6 sees) for ``cfg``'s network and
    image size; None where the image is too small for it."""
    model = create_model(cfg.model, num_classes=10, in_channels=cfg.in_channels or 1, **cfg.model_kwargs())
    try:
        with torch.no_grad():
            return tuple(model.features(torch.zeros(1, cfg.in_channels or 1, cfg.image_size, cfg.image_size)).shape[-2:])
    except RuntimeError:
        return None


# The smallest last feature map a comparison of the variants is made on: at 1x1 fc6 sees one
# vector per channel and pooling choices barely matter; at 3x3 there is a map to pool over.
MIN_FINAL_MAP = 3


def check_final_maps(base: TrainConfig, variants: Sequence[str]) -> dict[str, tuple[int, int] | None]:
    """Every variant's last feature map, which must be the same and at least 3x3.

    Where it differs (3/2 against 2/2 pooling at most sizes) fc6 of one variant sees more
    distinct inputs than the other's and the comparison says more about that than about the
    choice it ablates; a one-line error names the image sizes where they agree.
    """
    if base.model not in ("alexnet_paper", "alexnet_paper_grouped"):
        raise AlexNetError(f"the ablation varies the paper models only (alexnet_paper, alexnet_paper_grouped), not {base.model}")
    maps = {v: final_map(variant_config(base, v, 0, Path("."))) for v in variants}
    if len(set(maps.values())) == 1 and None not in maps.values() and min(maps[variants[0]]) >= MIN_FINAL_MAP:
        return maps
    good = []
    for size in range(63, 400):
        at = {v: final_map(variant_config(TrainConfig.from_dict({**base.to_dict(), "image_size": size}), v, 0, Path(".")))
              for v in dict.fromkeys([variants[0], *variants])}  # fmt: skip
        if len(set(at.values())) == 1 and None not in at.values() and min(at[variants[0]]) >= MIN_FINAL_MAP:
            good.append(size)
        if len(good) == 4:
            break
    shown = ", ".join(f"{v} {'x'.join(map(str, m)) if m else 'none'}" for v, m in maps.items())
    raise AlexNetError(f"at --image-size {base.image_size} the variants' last feature maps are {shown}; they must be the "
                       f"same and at least {MIN_FINAL_MAP}x{MIN_FINAL_MAP} to compare like with like: try --image-size "
                       f"{', '.join(map(str, good))}")  # fmt: skip



def final_map_labels(base: TrainConfig, variants: Sequence[str]) -> dict[str, str]:
    """The table's "last feature map" column: each variant's map as HxW (checked as check_final_maps does)."""
    return {v: "x".join(map(str, m)) for v, m in check_final_maps(base, variants).items()}

def describe_setup(cfg: TrainConfig, seeds: Sequence[int]) -> str:
    """One sentence saying what every run of an ablation shares."""
    amp = ", bfloat16 autocast" if cfg.amp else ""
    subset = f", first {cfg.subset} images of each split" if cfg.subset else ""
    steps = f", at most {cfg.max_steps} steps" if cfg.max_steps else ""
    if cfg.val_split is None:
        val = " (compared on the dataset's default validation split)"
    elif cfg.val_split == 0:
        val = " (compared on the held-out split: no validation split)"
    else:
        val = f" ({cfg.val_split} training images kept apart to compare on)"
    return (
        f"Every run: {cfg.model}, {cfg.dataset}{subset}{val} at {cfg.image_size} px, {cfg.epochs} "
        f"epoch{'s' if cfg.epochs != 1 else ''}{steps}, {cfg.optimizer} lr {cfg.lr:g} (schedule: {cfg.scheduler}), "
        f"batch {cfg.batch_size}, weight decay {cfg.weight_decay:g}, label smoothing {cfg.label_smoothing:g}{amp}; "
        f"seeds {', '.join(map(str, seeds))} (a seed fixes the data order and augmentation, the same for every variant)."
    )


def comparable(config: dict) -> dict:
    known = set(TrainConfig.__dataclass_fields__)
    return {k: v for k, v in config.items() if k in known and k not in NOT_COMPARED}


def run_ablation(
    base: TrainConfig,
    variants: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    *,
    log: Callable[[str], None] = print,
    after_each: Callable[[list[RunResult]], None] | None = None,
) -> list[RunResult]:
    """Train (or reuse, or resume) every variant x seed under ``out``; returns one result per run.

    A run that fails (a non-finite loss, say) is recorded as failed and the others go on;
    a stop on SIGINT/SIGTERM stops the whole ablation, and running it again resumes.
    """
    maps = check_final_maps(base, variants)
    log("last feature map (what fc6 sees): " + ", ".join(f"{v} {'x'.join(map(str, m))}" for v, m in maps.items()))
    out = Path(out)
    results: list[RunResult] = []
    total = len(variants) * len(seeds)
    for seed in seeds:  # all variants of one seed first: a stopped ablation still compares like with like
        for variant in variants:
            run_dir = out / variant / f"seed-{seed}"
            cfg = variant_config(base, variant, seed, run_dir)
            head = f"[{len(results) + 1}/{total}] {variant}, seed {seed}"
            previous = finished_result(run_dir, cfg)
            if previous is not None:
                previous.status = "reused"
                log(f"{head}: reusing the finished run in {run_dir} (top-1 error {100 * previous.top1_error:.2f}%)")
                results.append(previous)
            else:
                if RunDirectory(run_dir).checkpoint("last").is_file():
                    cfg.resume = str(run_dir)
                    log(f"{head}: resuming {run_dir}")
                else:
                    log(f"{head}: training in {run_dir}")
                try:
                    outcome = fit(cfg)
                except TrainingStopped:
                    raise
                except AlexNetError as e:
                    log(f"{head}: failed: {e}")
                    results.append(RunResult(variant, seed, str(run_dir), "failed", message=str(e)))
                else:
                    result = result_from_run(run_dir, variant, seed, outcome.get("eval") or {})
                    (run_dir / RESULT_FILE).write_text(
                        json.dumps({"config": comparable(cfg.to_dict()), "result": result.to_row()}, indent=2) + "\n"
                    )
                    log(f"{head}: top-1 error {100 * result.top1_error:.2f}%, top-5 error {100 * result.top5_error:.2f}%")
                    results.append(result)
            if after_each is not None:
                after_each(results)
    return results


def finished_result(run_dir: Path, cfg: TrainConfig) -> RunResult | None:
    """The stored result of a finished run of ``cfg`` in ``run_dir``; None when there is none.

    A directory that holds a run of another configuration is an error: its results must
    not be mixed into this table, nor its checkpoints resumed with other settings.
    """
    want = comparable(cfg.to_dict())
    run, stored = RunDirectory(run_dir), None
    if (run_dir / RESULT_FILE).is_file():
        record = json.loads((run_dir / RESULT_FILE).read_text())
        stored, result = record.get("config", {}), record.get("result", {})
    elif run.checkpoint("last").is_file():
        stored, result = run.read_config(), None
    if stored is None:
        return None
    differ = sorted(k for k in set(want) | set(comparable(stored)) if want.get(k) != stored.get(k))
    if differ:
        raise AlexNetError(
            f"{run_dir} holds a run with other settings ({', '.join(differ[:5])}"
            f"{' ...' if len(differ) > 5 else ''}); give another --out or remove it"
        )
    if result is None:
        return None  # an unfinished run of the same configuration: resume it
    fields = {k: result[k] for k in RUN_FIELDS if k in result}
    return RunResult(**fields)


def result_from_run(run_dir: Path, variant: str, seed: int, final_eval: dict) -> RunResult:
    """The last epoch's figures from metrics.csv (the final weights, not the best epoch's)."""
    rows = RunDirectory(run_dir).read_metrics()
    if not rows:
        return RunResult(variant, seed, str(run_dir), "failed", message="no completed epoch in metrics.csv")
    last = rows[-1]
    return RunResult(
        variant,
        seed,
        str(run_dir),
        "trained",
        top1_error=1.0 - float(last["val_top1"]),
        top5_error=1.0 - float(last["val_top5"]),
        val_loss=float(last["val_loss"]),
        train_error=1.0 - float(last["train_acc"]),
        epochs=int(last["epoch"]),
        train_seconds=sum(float(r["epoch_time_s"]) for r in rows),
        n=final_eval.get("n"),
    )


def summary_row(variant: str, runs: Sequence[RunResult], baseline_mean: float | None,
                final_maps: dict[str, str] | None = None) -> dict:  # fmt: skip
    """Mean, sample std, min and max over seeds of the runs of one variant that did not fail."""
    final_maps = final_maps or {}
    ok = [r for r in runs if r.status != "failed"]
    top1 = [r.top1_error for r in ok]
    return {
        "variant": variant,
        "change": VARIANTS[variant].change,
        "final_map": final_maps.get(variant, ""),
        "runs": len(ok),
        "failed": len(runs) - len(ok),
        "top1_errors": top1,
        "top1_error_mean": _mean(top1),
        "top1_error_std": statistics.stdev(top1) if len(top1) > 1 else math.nan,
        "top1_error_min": min(top1, default=math.nan),
        "top1_error_max": max(top1, default=math.nan),
        "top5_error_mean": _mean([r.top5_error for r in ok]),
        "train_error_mean": _mean([r.train_error for r in ok]),
        "delta_top1_vs_baseline": _mean(top1) - baseline_mean if baseline_mean is not None and top1 else math.nan,
        "paper": VARIANTS[variant].paper,
    }


SUMMARY_FIELDS = ["variant", "change", "final_map", "runs", "failed", "top1_error_mean", "top1_error_std", "top1_error_min",
                  "top1_error_max", "top5_error_mean", "train_error_mean", "delta_top1_vs_baseline", "paper"]  # fmt: skip


def summarize(results: Sequence[RunResult], final_maps: dict[str, str] | None = None) -> list[dict]:
    """One row per variant (in the order run): mean, std, min and max of the top-1 error over seeds;
    ``final_maps``: each variant's last feature map, as "HxW"."""
    by_variant: dict[str, list[RunResult]] = {}
    for r in results:
        by_variant.setdefault(r.variant, []).append(r)
    base = [r.top1_error for r in by_variant.get("baseline", []) if r.status != "failed"]
    baseline_mean = _mean(base) if base else None
    return [summary_row(name, runs, baseline_mean, final_maps) for name, runs in by_variant.items()]


def write_report(results: Sequence[RunResult], stem: str | Path, *, setup: str, title: str,
                 final_maps: dict[str, str] | None = None) -> list[Path]:  # fmt: skip
    """``stem``.csv (one row per variant), ``stem``-runs.csv (one per run), ``stem``.md and ``stem``.png."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, final_maps)
    paths = [stem.with_suffix(".csv"), stem.parent / f"{stem.name}-runs.csv", stem.with_suffix(".md")]
    with paths[0].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        for row in summary:
            w.writerow({k: _fmt(row[k]) for k in SUMMARY_FIELDS})
    with paths[1].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RUN_FIELDS)
        w.writeheader()
        for r in results:
            w.writerow({k: _fmt(v) for k, v in r.to_row().items()})
    paths[2].write_text(markdown_table(summary, setup=setup, title=title))
    ok = [row for row in summary if row["runs"] > 0]
    if ok:
        paths.append(plots.plot_ablation(ok, stem.with_suffix(".png"), title=title))
    return paths


def markdown_table(summary: Sequence[dict], *, setup: str, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        setup,
        "",
        "Top-1 and top-5 error of the final weights on the validation split; mean ± sample std over seeds, "
        "and the range. Train error: the last epoch's running error (dropout and augmentation on).",
        "",
        "| variant | change | last feature map | runs | top-1 error | min–max | Δ top-1 vs baseline (points) | top-5 error | "
        "train error | the paper (ImageNet) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in summary:
        std = row["top1_error_std"]
        mean = _pct(row["top1_error_mean"]) + (f" ± {_pct(std)}" if std == std else "")
        spread = f"{_pct(row['top1_error_min'])}–{_pct(row['top1_error_max'])}" if row["runs"] else "–"
        delta = row["delta_top1_vs_baseline"]
        delta_text = "–" if delta != delta or row["variant"] == "baseline" else f"{100 * delta:+.2f}"
        runs = f"{row['runs']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        lines.append(
            f"| {row['variant']} | {row['change']} | {row['final_map'] or '–'} | {runs} | {mean} | {spread} | {delta_text} | "
            f"{_pct(row['top5_error_mean'])} | {_pct(row['train_error_mean'])} | {row['paper'] or '–'} |"
        )
    return "\n".join(lines) + "\n"


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.2f}%"


def _fmt(v):
    if isinstance(v, float):
        return "" if v != v else f"{v:.6g}"
    return "" if v is None else v
