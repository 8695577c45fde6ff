"""Kill a real training process with SIGKILL, resume it, again and again; compare with a run left alone.

Used by tests/test_kill_resume.py (a few kills) and benchmarks/kill_resume.py (many). A kill
is either at a random moment after the process starts, or "during a checkpoint write": the
harness watches the checkpoint folder and kills the process the moment a temporary
checkpoint file appears, i.e. between the start of the write and the rename. After each
kill the run is continued with ``alexnet train --resume`` (or started again when the kill
came before the first checkpoint), as a user would.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alexnet.engine.checkpoint import read_checkpoint

TIMEOUT_S = 300


def train_args(data_dir: Path, out: Path, *, epochs: int = 2, save_every: int = 3) -> list[str]:
    """A deterministic tiny run: alexnet_owt at 63 px, SGD with momentum (so optimizer state matters)."""
    return ["train", "--dataset", "fashion-mnist", "--data-dir", str(data_dir), "--out", str(out),
            "--model", "alexnet_owt", "--image-size", "63", "--batch-size", "16", "--epochs", str(epochs),
            "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9", "--init", "torch", "--dropout", "0.5",
            "--scheduler", "cosine", "--deterministic", "--seed", "3", "--save-every", str(save_every),
            "--no-progress", "--workers", "0"]  # fmt: skip


def start(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("ab") as f:
        return subprocess.Popen([sys.executable, "-m", "alexnet", *args], stdout=f, stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen, log: Path) -> None:
    code = proc.wait(timeout=TIMEOUT_S)
    if code != 0:
        raise AssertionError(f"training exited with {code}:\n{log.read_text()[-3000:]}")


def temp_checkpoints(ckpt_dir: Path) -> list[Path]:
    return list(ckpt_dir.glob(".*.tmp")) if ckpt_dir.is_dir() else []


@dataclass
class Campaign:
    kills: int = 0
    during_write: int = 0  # kills that left a half-written temporary checkpoint behind
    restarts_from_scratch: int = 0  # kills before the first checkpoint existed
    runs: int = 0
    moments: list[str] = field(default_factory=list)
    resumed_from: list[tuple[int, int, int]] = field(default_factory=list)  # (epoch, step, batch in epoch)


def kill_and_resume(args: list[str], out: Path, plan: list[str | float], log: Path) -> Campaign:
    """Follow ``plan`` (seconds after start, or "write"), then let the run finish."""
    ckpt_dir = out / "checkpoints"
    result = Campaign()
    for moment in plan + [None]:
        last = ckpt_dir / "last.pt"
        command = ["train", "--resume", str(out), "--no-progress"] if last.is_file() else args
        if not last.is_file() and result.kills:
            result.restarts_from_scratch += 1
        before = set(temp_checkpoints(ckpt_dir))  # left by an earlier kill; the new process removes them
        proc = start(command, log)
        result.runs += 1
        if moment is None:
            wait(proc, log)
            break
        deadline = time.monotonic() + TIMEOUT_S
        if moment == "write":
            # Kill while a checkpoint is being written over an existing one (the case that matters).
            while proc.poll() is None and not (set(temp_checkpoints(ckpt_dir)) - before and last.is_file()):
                if time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError("no checkpoint write seen")
                time.sleep(0.001)
        else:
            try:
                proc.wait(timeout=float(moment))
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is not None:  # it finished before the moment came; nothing to kill
            assert proc.returncode == 0, log.read_text()[-3000:]
            result.moments.append(f"{moment}: finished first")
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=TIMEOUT_S)
        result.kills += 1
        half_written = bool(set(temp_checkpoints(ckpt_dir)) - before)
        result.during_write += half_written
        result.moments.append(f"{moment}: killed{' mid-write' if half_written else ''}")
        if last.is_file():  # whatever the moment, the checkpoint on disk is whole
            ckpt = read_checkpoint(last)
            result.resumed_from.append((ckpt["epoch"], ckpt["step"], ckpt["batch_in_epoch"]))
    return result


def timed_run(args: list[str], out: Path, log: Path) -> tuple[float, float]:
    """Run to the end undisturbed; returns (seconds to the first checkpoint write, seconds in all)."""
    t0 = time.monotonic()
    proc, first = start(args, log), None
    while proc.poll() is None:
        if first is None and temp_checkpoints(out / "checkpoints"):
            first = time.monotonic() - t0
        time.sleep(0.001)
    wait(proc, log)
    return first if first is not None else 0.0, time.monotonic() - t0


def random_plan(rng: random.Random, n: int, first_write: float, total: float, write_every: int = 2) -> list[str | float]:
    """n kill moments: the first and every ``write_every``-th one after it during a checkpoint
    write, the others at a random time after start, from the first checkpoint on.

    Each restart only has the rest of the run to do, so the timed kills' windows together span
    the undisturbed run's training time once: on average they use half of it, and all kills,
    the write kills among them, land before the run is done. (Windows twice as wide used all of
    it on average: CI saw a run end with its last write kill unused.) A write kill comes first,
    while most of the run is still to come."""
    timed = n - (n + write_every - 1) // write_every
    span = (total - first_write) / max(timed, 1)
    return ["write" if i % write_every == 0 else round(first_write + rng.uniform(0, span), 2) for i in range(n)]


def same_run(a: Path, b: Path) -> None:
    """The two runs ended with equal weights, optimizer state, step and metrics (timings aside)."""
    ca, cb = read_checkpoint(a / "checkpoints" / "last.pt"), read_checkpoint(b / "checkpoints" / "last.pt")
    assert (ca["epoch"], ca["step"]) == (cb["epoch"], cb["step"])
    assert list(ca["model"]) == list(cb["model"])
    for key in ca["model"]:
        torch.testing.assert_close(ca["model"][key], cb["model"][key], rtol=0, atol=0, msg=key)
    # strict: a run with fewer momentum buffers than the other must fail, not compare the common prefix
    states = zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True)
    for sa, sb in states:
        torch.testing.assert_close(sa["momentum_buffer"], sb["momentum_buffer"], rtol=0, atol=0)
    timing = ("images_per_s", "epoch_time_s")
    rows = [[{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader((d / "metrics.csv").open())]
            for d in (a, b)]  # fmt: skip
    assert rows[0] == rows[1]
    assert not temp_checkpoints(b / "checkpoints"), "a half-written checkpoint was left behind"
