"""``alexnet report RUN_DIR``: the run as one self-contained HTML page (see alexnet/report.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import report
from ..engine.checkpoint_eval import evaluate_checkpoint
from ..engine.runtime import select_device
from ..errors import AlexNetError
from ..run_dir import RunDirectory


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write a run's HTML report",
        description="One self-contained HTML file: configuration, metrics, curves, confusion matrix, per-class "
        "accuracy, samples and mistakes. The checkpoint is evaluated on its validation split as alexnet eval does; "
        "without the data (or with --no-eval) the pictures saved at the end of training are used.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", default=None, metavar="FILE", help="default: RUN_DIR/report.html")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which to evaluate (default best, else last)")
    p.add_argument("--no-eval", action="store_true", help="use only the files in RUN_DIR; no data needed")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="where the validation data is, if not where it was")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(run=run)


def run(args) -> int:
    select_device(args.device)  # a device that is not there is an error, not a report without evaluation
    if args.batch_size is not None and args.batch_size < 1:
        raise AlexNetError(f"--batch-size must be positive, got {args.batch_size}")
    out = Path(args.out) if args.out else RunDirectory(args.run_dir).report_path
    record = report.load_run(args.run_dir, checkpoint=args.checkpoint)
    with report.ReportFile(out) as target:
        if args.no_eval:
            record.no_evaluation = "--no-eval"
        else:
            try:
                record.evaluation = evaluate_checkpoint(
                    record.checkpoint_path, overrides={"data_dir": args.data_dir}, device=args.device,
                    batch_size=args.batch_size, keep_mistakes=32, keep_samples=16, loaded=record.checkpoint,
                )  # fmt: skip
            except AlexNetError as e:  # the checkpoint was read above: what fails here is the data
                record.no_evaluation = f"the validation data could not be loaded: {e}"
                print(f"alexnet report: warning: {record.no_evaluation}; using the pictures in "
                      f"{Path(args.run_dir) / 'plots'}", file=sys.stderr)  # fmt: skip
        target.write(report.build_report(record))
    print(f"report written to {out}")
    return 0
