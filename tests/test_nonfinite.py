"""Numerical faults: a NaN or infinite loss stops the run (or is skipped with --skip-nonfinite)
before it reaches the weights, and the last good checkpoint is kept."""

import re

import pytest
import torch
import torch.nn as nn

from alexnet.cli import main
from alexnet.engine.checkpoint import read_checkpoint
from alexnet.engine.optim import LRSchedule, create_optimizer
from alexnet.engine.train import EpochProgress, NonFiniteLoss, StepOptions, train_one_epoch

from test_cli_e2e import FAST


def batches(bad: set[int], n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = torch.randn(8, 5, generator=g)
        if i in bad:
            x[3, 1] = float("nan")
        out.append((x, torch.randint(0, 3, (8,), generator=g)))
    return out


def train(data, skip: int) -> tuple[nn.Module, EpochProgress]:
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    opt = create_optimizer(model.parameters(), "sgd", lr=0.1)
    schedule = LRSchedule(opt, "none", total_steps=len(data), steps_per_epoch=len(data))
    trained, step = train_one_epoch(model, data, opt, schedule, nn.CrossEntropyLoss(), step=0,
                                    opts=StepOptions(skip_nonfinite=skip))  # fmt: skip
    assert trained.progress.step == step
    return model, trained.progress


def test_skipped_batches_never_touch_the_weights():
    model, m = train(batches(bad={1, 4}), skip=2)
    assert m.nonfinite_skipped == 2 and m.batches == 6 and m.step == 6 and m.complete
    assert m.sums.seen == 4 * 8  # the bad batches are not counted in loss or accuracy
    clean, _ = train([b for i, b in enumerate(batches(bad={1, 4})) if i not in (1, 4)], skip=0)
    for a, b in zip(model.parameters(), clean.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_more_bad_batches_than_allowed_stops_with_where_and_what_to_try():
    with pytest.raises(NonFiniteLoss) as e:
        train(batches(bad={1, 4}), skip=1)
    message = str(e.value)
    assert "at step 5" in message and "lr 0.1" in message and "--skip-nonfinite" in message and "--lr" in message


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(fmnist_dir, tmp_path, capsys):
    """SGD at a learning rate of 1e4 diverges within a few steps; the run stops at the first
    non-finite loss, exits non-zero and last.pt holds the last step whose weights were finite."""
    out = tmp_path / "diverge"
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--out", out, "--epochs", "2",
            "--save-every", "1", "--optimizer", "sgd", "--momentum", "0", "--weight-decay", "0",
            *FAST[:FAST.index("--lr")], "--lr", "1e4", *FAST[FAST.index("--lr") + 2:]]  # fmt: skip
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("alexnet train: error: ") and "at step" in line and "last good checkpoint is kept" in line
    failed_at = int(re.search(r"(?:at|by) step (\d+)", line).group(1))
    ckpt = read_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == failed_at - 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_resume_with_a_new_learning_rate_uses_it(fmnist_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--out", str(out), "--epochs", "2",
            "--subset", "32", "--max-steps", "2", "--model", "alexnet_owt", "--image-size", "63", "--batch-size", "16",
            "--optimizer", "sgd", "--lr", "0.01", "--scheduler", "none", "--no-progress", "--val-split", "0"]  # fmt: skip
    assert main(args) == 0
    assert main(["train", "--resume", str(out), "--lr", "0.003", "--max-steps", "3", "--no-progress"]) == 0
    ckpt = read_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.003)
    assert ckpt["config"]["lr"] == pytest.approx(0.003)
