"""``alexnet ablate``: the paper's ablations, each variant trained under the same budget, data order and seeds."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..paper.ablation import VARIANTS, describe_setup, final_map_labels, parse_variants, run_ablation, write_report
from ..config import PRESETS, TrainConfig, resolve_config
from ..errors import AlexNetError
from .train import ARGUMENTS

# The ablated axes and the outputs are the ablation's to set, not the user's.
# No --time-budget: each variant would plan its epochs on its own speed, and the variants must
# train the same epochs to be compared (a preset's budget is dropped, as the description says).
FIXED = {"--dropout", "--init", "--lrn", "--pool-kernel", "--pool-stride", "--init-from", "--out", "--resume", "--seed",
         "--time-budget"}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ablate",
        help="train the paper's ablations and tabulate their test error",
        description="Train variants of the paper's network (each changes one of its choices) with the same "
        "data, budget, data order and seeds, and write a table (CSV, Markdown) and a bar plot of their "
        "error over seeds. There is no time budget (a preset's is dropped): every variant trains the same "
        "epochs. Every variant x seed is a run directory OUT/<variant>/seed-<s>/; running the "
        "same command again reuses finished runs and resumes unfinished ones. Variants: "
        + "; ".join(f"{v.name}: {v.change}" for v in VARIANTS.values()),
    )
    p.add_argument("--variants", nargs="+", default=["all"], metavar="V", help="'all' (default) or some of: " + ", ".join(VARIANTS))
    p.add_argument("--seeds", type=int, default=2, metavar="K", help="seeds per variant (default 2)")
    p.add_argument("--first-seed", type=int, default=0, metavar="S", help="seeds are S, S+1, ... (default 0)")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None, help="the training recipe (default: TrainConfig's)")
    p.add_argument("--out", default=None, metavar="DIR", help="default: runs/ablation-<dataset>")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for group, flag, options in ARGUMENTS:
        if flag in FIXED:
            continue
        g = groups.setdefault(group, p.add_argument_group(group))
        g.add_argument(flag, default=None, **options)
    p.set_defaults(run=run)


def run(args) -> int:
    variants = parse_variants(args.variants)
    if args.seeds < 1:
        raise AlexNetError(f"--seeds must be at least 1, got {args.seeds}")
    fields = set(TrainConfig.__dataclass_fields__) - {"out"}
    base = resolve_config(args.preset, {k: v for k, v in vars(args).items() if k in fields and v is not None})
    if args.model is None and base.model not in ("alexnet_paper", "alexnet_paper_grouped"):
        base.model = "alexnet_paper"
    out = Path(args.out or f"runs/ablation-{base.dataset}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    title = f"Ablations of {base.model} on {base.dataset}"
    setup = describe_setup(base, seeds)
    maps = final_map_labels(base, variants)

    def report(results):
        write_report(results, out / "ablation", setup=setup, title=title, final_maps=maps)

    results = run_ablation(base, variants, seeds, out, after_each=report)
    paths = write_report(results, out / "ablation", setup=setup, title=title, final_maps=maps)
    print((out / "ablation.md").read_text(), end="")
    print("written: " + ", ".join(str(p) for p in paths))
    return 0 if all(r.status != "failed" for r in results) else 1

