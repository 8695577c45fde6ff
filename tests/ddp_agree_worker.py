"""Launched by torchrun from test_distributed.py: the decisions a rank could take alone, made on one rank.

    torchrun --nproc_per_node=2 tests/ddp_agree_worker.py OUT_DIR

Each scenario runs ``alexnet train`` in this process (the real ``fit``) with the train loader
wrapped so that on rank 1 only, at a given step, a batch's loss becomes NaN, the rank is sent
SIGTERM, or its batch arrives empty (every image unreadable); or with rank 0 unable to write a
checkpoint, or the time budget measuring a different speed on each rank. Every rank writes what it saw to OUT_DIR/<scenario>.rank<r>.json,
for the test to compare; a scenario that hung would never write it.
"""

import contextlib
import csv
import dataclasses
import importlib
import io
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import torch

from alexnet.cli import main
from alexnet.engine import budget
from alexnet.engine import checkpoint as checkpoint_module
from alexnet.engine import distributed as dist
from alexnet.engine.checkpoint import rank_rng_state, read_checkpoint, set_rng_state
from alexnet.errors import AlexNetError

fit_module = importlib.import_module("alexnet.engine.fit")  # the module; alexnet.engine.fit is the function
RANK = int(os.environ["RANK"])
STEPS_PER_EPOCH = 4  # 64 images, 2 ranks, batch 8
real_build_loaders = fit_module.build_loaders
real_train_one_epoch = fit_module.train_one_epoch
real_save_checkpoint = checkpoint_module.save_checkpoint  # what CheckpointSaver writes with


class OnRank1:
    """The train loader, doing ``action`` to rank 1's batch at global step ``at``."""

    def __init__(self, loader, action: str, at: int):
        self.loader, self.action, self.at = loader, action, at

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def set_epoch(self, epoch, start_batch=0):
        self.loader.set_epoch(epoch, start_batch)

    def __iter__(self):
        for i, (images, labels) in enumerate(self.loader, start=self.loader.start_batch):
            if RANK == 1 and self.loader.epoch * len(self.loader) + i == self.at:
                if self.action == "nan":
                    images = images.clone()
                    images[0] = float("nan")
                elif self.action == "sigterm":
                    os.kill(os.getpid(), signal.SIGTERM)  # the handler fit installed sets the stop flag
                elif self.action == "empty":
                    images, labels = images[:0], labels[:0]
            yield images, labels


def wrap_loaders(action: str, at: int):
    def build(*args, **kwargs):
        train, val, info = real_build_loaders(*args, **kwargs)
        return OnRank1(train, action, at), val, info

    fit_module.build_loaders = build


def read_back_every(steps: int) -> None:
    """Read the step verdicts every ``steps`` steps, as on a GPU (on the CPU fit reads every step)."""

    def train_one_epoch(*args, opts, **kwargs):
        return real_train_one_epoch(*args, opts=dataclasses.replace(opts, sync_every=steps), **kwargs)

    fit_module.train_one_epoch = train_one_epoch


def train(out: Path, *extra: str) -> tuple[int, str]:
    """``alexnet train`` in this process: (exit code, its stderr)."""
    args = ["train", "--dataset", "synthetic", "--subset", "64", "--model", "alexnet_owt", "--image-size", "63",
            "--batch-size", "8", "--epochs", "2", "--optimizer", "sgd", "--lr", "0.01", "--init", "torch",
            "--dropout", "0.5", "--scheduler", "cosine", "--seed", "3", "--deterministic", "--no-progress",
            "--workers", "0", "--device", "cpu", "--out", str(out), *extra]  # fmt: skip
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args)
    return code, err.getvalue()


def report(out: Path, name: str, code: int, err: str, run: Path, keep: bool = False) -> None:
    """Write what this rank saw of ``run`` to OUT_DIR/<name>.rank<r>.json; then the run goes, unless kept.

    Each run holds checkpoints of about 0.9 GB: kept to the end, the scenarios would fill a small CI disk.
    """
    dist.barrier()  # rank 0 has written the run before anyone reads it
    ckpt = read_checkpoint(run / "checkpoints" / "last.pt") if (run / "checkpoints" / "last.pt").is_file() else {}
    weights = ckpt.get("model", {})
    metrics = run / "metrics.csv"
    rows = [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_time_s")}
            for r in csv.DictReader(metrics.open())] if metrics.is_file() else []  # fmt: skip
    (out / f"{name}.rank{RANK}.json").write_text(json.dumps({
        "code": code,
        "last_line": err.strip().splitlines()[-1] if err.strip() else "",
        "step": ckpt.get("step"),
        "batch_in_epoch": ckpt.get("batch_in_epoch"),
        "nonfinite_skipped": ckpt.get("nonfinite_skipped"),
        "finite": all(bool(torch.isfinite(v).all()) for v in weights.values()),
        "weights": {k: v.double().sum().item() for k, v in weights.items()},
        "rng_per_rank": len(ckpt.get("rng_per_rank") or []),
        "metrics": rows,
    }))  # fmt: skip
    dist.barrier()  # and nobody starts the next run while another reads this one
    if RANK == 0 and not keep:
        shutil.rmtree(run, ignore_errors=True)


def dropout_masks_after_resume(out: Path, run: Path) -> None:
    """Each rank restores its own saved state and draws a dropout mask, as the resumed run would."""
    ckpt = read_checkpoint(run / "checkpoints" / "last.pt")
    set_rng_state(rank_rng_state(ckpt, RANK, 2), torch.device("cpu"))
    mask = torch.nn.functional.dropout(torch.ones(4096), 0.5)
    masks = dist.all_gather_object(mask)
    (out / f"masks.rank{RANK}.json").write_text(json.dumps({"equal": torch.equal(masks[0], masks[1])}))


def main_scenarios(out: Path) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")  # fit joins this group instead of making its own

    wrap_loaders("nan", at=2)  # the third step
    report(out, "nan-skip", *train(out / "nan-skip", "--skip-nonfinite", "1"), out / "nan-skip")
    report(out, "nan-stop", *train(out / "nan-stop", "--save-every", "1"), out / "nan-stop")

    # Read back every 4 steps, as on a GPU: the NaN at step 6 is found at step 8's read, by both.
    wrap_loaders("nan", at=5)
    read_back_every(4)
    report(out, "nan-stop-read-every-4", *train(out / "nan-stop-4", "--subset", "128"), out / "nan-stop-4")
    fit_module.train_one_epoch = real_train_one_epoch

    wrap_loaders("empty", at=5)
    report(out, "empty", *train(out / "empty"), out / "empty")

    wrap_loaders("none", at=-1)
    report(out, "whole", *train(out / "whole"), out / "whole")
    wrap_loaders("sigterm", at=5)
    report(out, "sigterm", *train(out / "stopped"), out / "stopped", keep=True)
    dropout_masks_after_resume(out, out / "stopped")
    wrap_loaders("none", at=-1)
    code, err = main_resume(out / "stopped")
    report(out, "resumed", code, err, out / "stopped")

    # Rank 0 cannot write its second checkpoint (a full disk): every rank stops, none waits.
    writes = []

    def save_checkpoint(state, path):
        writes.append(path)
        if len(writes) == 2:
            raise AlexNetError(f"cannot write checkpoint {path}: No space left on device; the previous one is kept")
        real_save_checkpoint(state, path)

    checkpoint_module.save_checkpoint = save_checkpoint
    report(out, "disk-full", *train(out / "disk-full", "--save-every", "1"), out / "disk-full")
    checkpoint_module.save_checkpoint = real_save_checkpoint

    # The time budget: each rank measures another speed; rank 0's plan holds on both.
    speeds = {0: 0.05, 1: 5.0}
    budget.measure_speed = lambda *a, **k: budget.Speed(step_s=speeds[RANK], eval_batch_s=0.01)
    report(out, "budget", *train(out / "budget", "--time-budget", "1", "--epochs", "3"), out / "budget")


def main_resume(run: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--resume", str(run), "--no-progress"])
    return code, err.getvalue()


if __name__ == "__main__":
    main_scenarios(Path(sys.argv[1]))
