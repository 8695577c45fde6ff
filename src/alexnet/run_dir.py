"""The run directory: the one place that knows its layout, and reads and writes its files.

    runs/NAME/
      config.json          the resolved configuration, with what the run found (device, classes, ...)
      metrics.csv          one row per epoch, METRICS_FIELDS
      test.json            the test split's figures for best.pt, read once at the end
      checkpoints/         last.pt, best.pt
      plots/               the pictures, and confusion.json beside confusion.png
      eval/                what ``alexnet eval`` writes
      cache/               feature banks of the paper's Figure 4
      report.html          what ``alexnet report`` writes
      result.json          an ablation run's figures (paper/ablation.py writes and reads it)
      events.*             TensorBoard scalars, where tensorboard is installed

Training, evaluation, the report, the ablation and the paper's figures all go through
``RunDirectory``, so a new file or column is added here once.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from .errors import AlexNetError

METRICS_FIELDS = [
    "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "images_per_s", "epoch_time_s",
]  # fmt: skip


class RunDirectory:
    """Paths and files of one run; nothing is created until ``prepare`` or a write."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.config_path = self.root / "config.json"
        self.metrics_path = self.root / "metrics.csv"
        self.test_path = self.root / "test.json"
        self.ckpt_dir = self.root / "checkpoints"
        self.plot_dir = self.root / "plots"
        self.eval_dir = self.root / "eval"
        self.cache_dir = self.root / "cache"
        self.report_path = self.root / "report.html"
        self._events = None

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> RunDirectory:
        """The run a checkpoint belongs to: RUN for RUN/checkpoints/X.pt, else the file's folder."""
        path = Path(checkpoint).resolve()
        return cls(path.parent.parent if path.parent.name == "checkpoints" else path.parent)

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>.pt``, for ``name`` last or best."""
        return self.ckpt_dir / f"{name}.pt"

    def plot(self, name: str) -> Path:
        return self.plot_dir / name

    # ------------------------------------------------------------------ reading

    def read_config(self) -> dict[str, Any] | None:
        """config.json as a dict; None where the run has none (older runs keep it only in checkpoints)."""
        if not self.config_path.is_file():
            return None
        try:
            config = json.loads(self.config_path.read_text())
        except (OSError, ValueError) as e:
            raise AlexNetError(f"cannot read {self.config_path}: {e}") from None
        if not isinstance(config, dict):
            raise AlexNetError(f"{self.config_path} does not hold a configuration object")
        return config

    def read_metrics(self) -> list[dict[str, str]]:
        """metrics.csv's rows as written (strings); [] before the first epoch has ended."""
        if not self.metrics_path.is_file():
            return []
        try:
            with self.metrics_path.open(newline="") as f:
                return list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise AlexNetError(f"cannot read {self.metrics_path}: {e}") from None

    def read_confusion(self) -> tuple[list[list[int]], list[str]] | None:
        """plots/confusion.json (matrix, class names) as training saved it; None where it is missing or unreadable."""
        try:
            saved = json.loads(self.plot("confusion.json").read_text())
            return saved["matrix"], saved["class_names"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # ------------------------------------------------------------------ writing

    def prepare(self) -> None:
        """Make the folders and check they can be written; remove what a killed process left."""
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            self.plot_dir.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
            # A process killed while writing a checkpoint leaves its temporary file behind.
            for stale in self.ckpt_dir.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        except OSError as e:
            raise AlexNetError(f"cannot write to the output directory {self.root}: {e.strerror or e}") from None
        try:
            from torch.utils.tensorboard import SummaryWriter  # an optional extra: alexnet[tensorboard]

            self._events = SummaryWriter(log_dir=str(self.root))
        except ImportError:
            self._events = None

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def append_metrics(self, row: dict, keep_epochs: int) -> None:
        """Add an epoch's row; rows beyond ``keep_epochs - 1`` (left by a run that died after
        writing them) go. Replaced atomically, and mirrored to TensorBoard where it is installed."""
        rows = [r for r in self.read_metrics() if int(r["epoch"]) < keep_epochs] + [row]
        tmp = self.metrics_path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRICS_FIELDS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r[k] for k in METRICS_FIELDS})
        os.replace(tmp, self.metrics_path)
        if self._events is not None:
            for k in METRICS_FIELDS[1:]:
                self._events.add_scalar(k, float(row[k]), int(row["epoch"]))
            self._events.flush()

    def write_test(self, result: dict, best_epoch: int) -> None:
        """test.json: the test split's figures for best.pt, read once at the end of the run."""
        keep = {k: result[k] for k in ("top1", "top5", "loss", "n")}
        self.test_path.write_text(json.dumps({**keep, "checkpoint": "best.pt", "epoch": best_epoch}) + "\n")

    def write_confusion(self, matrix: list[list[int]], class_names: list[str]) -> None:
        write_confusion(self.plot_dir, matrix, class_names)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None


def write_confusion(folder: Path, matrix: list[list[int]], class_names: list[str]) -> None:
    """``folder``/confusion.json, beside confusion.png: plots/ at the end of training, eval/ for ``alexnet eval``."""
    (folder / "confusion.json").write_text(json.dumps({"class_names": class_names, "matrix": matrix}) + "\n")
