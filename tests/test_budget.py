"""--time-budget: the run is planned for the whole epochs that fit, measured without changing
what the run computes."""

import csv
import importlib
import json
import time

import pytest
import torch

from alexnet.cli import main
from alexnet.config import resolve_config
from alexnet.engine.budget import Speed, measure_speed, plan_within
from alexnet.engine.checkpoint import read_checkpoint, rng_state
from alexnet.engine.train import StepOptions

budget_module = importlib.import_module("alexnet.engine.budget")

TINY = ["--model", "alexnet_owt", "--image-size", "63", "--batch-size", "16", "--lr", "0.01", "--init", "torch",
        "--no-progress", "--scheduler", "onecycle", "--workers", "0", "--deterministic", "--seed", "2"]  # fmt: skip


def test_plan_within_fills_the_budget_with_whole_epochs_then_part_of_one():
    speed = Speed(step_s=1.0, eval_batch_s=0.5)  # 10 steps + 4 batches = 12 s an epoch
    # 60 s less 10% is 54 s: 4 whole epochs (48 s), then 6 s: the last one's evaluation (2 s)
    # and 4 of its steps.
    assert plan_within(60.0, 0.0, speed, 10, 4, max_epochs=100) == (5, 44)
    assert plan_within(60.0, 10.0, speed, 10, 4, max_epochs=100) == (4, 36)  # what setup took is spent
    assert plan_within(60.0, 0.0, speed, 10, 4, max_epochs=2) == (2, 20)  # never more than --epochs
    assert plan_within(54.0, 0.0, speed, 10, 4, max_epochs=9) == (4, 40)  # 0.6 s left: no evaluation fits
    # Less than an epoch: one shorter epoch, its evaluation paid for (4.5 s - 2 s: 2 steps); one step at least.
    assert plan_within(5.0, 0.0, speed, 10, 4, max_epochs=9) == (1, 2)
    assert plan_within(1.0, 0.0, speed, 10, 4, max_epochs=9) == (1, 1)
    assert plan_within(10.0, 20.0, speed, 10, 4, max_epochs=9) == (1, 1)  # set-up spent more than the budget
    # A last epoch shorter than a tenth of one is not worth its row: 100-step epochs, no evaluation.
    assert plan_within(205.5 / 0.9, 0.0, speed, 100, 0, max_epochs=9) == (2, 200)
    assert plan_within(215.5 / 0.9, 0.0, speed, 100, 0, max_epochs=9) == (3, 215)


def test_measuring_changes_neither_the_model_nor_the_random_state(fmnist_dir):
    from alexnet.data import build_loaders
    from alexnet.models import create_model

    cfg = resolve_config(None, {"dataset": "fashion-mnist", "data_dir": str(fmnist_dir), "image_size": 63,
                                "batch_size": 16, "optimizer": "adamw", "lr": 1e-3})  # fmt: skip
    train, val, info = build_loaders(cfg.data_config(), device=torch.device("cpu"), batch_size=16, seed=0)
    model = create_model("alexnet_owt", num_classes=10, in_channels=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(11)
    rng = rng_state()
    speed = measure_speed(model, cfg, train, val, torch.nn.CrossEntropyLoss(), StepOptions())
    assert speed.step_s > 0 and speed.eval_batch_s > 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(torch.get_rng_state(), rng["torch"])
    assert [x for x, _ in train][0].shape == (16, 1, 63, 63)  # the loader still starts at its first batch


class SlowStart:
    """A loader whose iterator takes a second to start (worker start-up, a first prefetch) and
    whose first three steps are a second slower each (oneDNN's first primitives)."""

    def __init__(self, loader, delay=1.0, slow_batches=4):
        self.loader, self.delay, self.slow_batches, self.starts = loader, delay, slow_batches, 0

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch, start_batch=0):
        self.loader.set_epoch(epoch, start_batch)

    def __iter__(self):
        self.starts += 1
        for i, batch in enumerate(self.loader):
            if i < self.slow_batches:  # before batch i: the start-up, then steps 0..i-1 run long
                time.sleep(self.delay)
            yield batch


def test_the_step_estimate_is_a_steps_time_without_start_up_or_warm_up(fmnist_dir):
    from alexnet.data import build_loaders
    from alexnet.models import create_model

    cfg = resolve_config(None, {"dataset": "fashion-mnist", "data_dir": str(fmnist_dir), "image_size": 63, "subset": 160,
                                "batch_size": 16, "optimizer": "sgd", "momentum": 0.0, "lr": 1e-3})  # fmt: skip
    train, val, info = build_loaders(cfg.data_config(), device=torch.device("cpu"), batch_size=16, seed=0)
    assert len(train) >= budget_module.WARMUP_STEPS + budget_module.TIMED_STEPS + 1
    model = create_model("alexnet_owt", num_classes=10, in_channels=1)
    loss_fn = torch.nn.CrossEntropyLoss()
    plain = measure_speed(model, cfg, train, val, loss_fn, StepOptions()).step_s
    # A second of start-up and three slow first steps: all of it outside the counted steps, in
    # one pass. (Timing two steps in a new iterator, as before, counted 4 s over 2 steps.)
    slow_start = SlowStart(train, delay=1.0, slow_batches=budget_module.WARMUP_STEPS + 1)
    estimate = measure_speed(model, cfg, slow_start, val, loss_fn, StepOptions()).step_s
    assert 0 < estimate < plain + 0.5, (estimate, plain)
    assert slow_start.starts == 1
    # Every step 0.5 s slower: the estimate must see that.
    slow_steps = SlowStart(train, delay=0.5, slow_batches=len(train))
    estimate = measure_speed(model, cfg, slow_steps, val, loss_fn, StepOptions()).step_s
    assert estimate > plain + 0.25, (estimate, plain)


def test_a_budget_that_fits_every_epoch_changes_nothing(fmnist_dir, tmp_path):
    common = ["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--subset", "64", "--epochs", "2", *TINY]
    plain, budgeted = tmp_path / "plain", tmp_path / "budgeted"
    assert main(common + ["--out", str(plain)]) == 0
    assert main(common + ["--out", str(budgeted), "--time-budget", "600"]) == 0
    a = read_checkpoint(plain / "checkpoints" / "last.pt")["model"]
    b = read_checkpoint(budgeted / "checkpoints" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    config = json.loads((budgeted / "config.json").read_text())
    assert config["epochs"] == 2 and config["resolved"]["time_budget"]["epochs"] == 2
    assert config["train_steps"] is None  # no epoch was cut


def test_a_tight_budget_plans_fewer_steps_and_resume_keeps_them(fmnist_dir, tmp_path, capsys, monkeypatch):
    # A machine where a step takes 10 s and a validation batch 5 s: 10 steps and 3 batches an epoch.
    monkeypatch.setattr(budget_module, "measure_speed", lambda *a, **k: Speed(step_s=10.0, eval_batch_s=5.0))
    # and set-up takes no time, so the plan does not depend on how fast this machine loads the data.
    plan_within = budget_module.plan_within
    monkeypatch.setattr(budget_module, "plan_within", lambda budget, elapsed, *a: plan_within(budget, 0.0, *a))
    out = tmp_path / "run"
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--epochs", "5", "--out", str(out),
            "--time-budget", "6", "--val-split", "0", *TINY]  # fmt: skip
    assert main(args) == 0
    stdout = capsys.readouterr().out
    # 6 minutes less 10% is 324 s; an epoch is 115 s: 2 fit, and 94 s are left: a third
    # epoch's evaluation (15 s) and 7 of its steps.
    assert ("time budget 6 min: a training step takes 10.00 s and a validation pass 15 s here, so 2.70 of 5 epochs "
            "fit (2 whole and 7 of the next 10 steps)") in stdout  # fmt: skip
    assert "(stopped at step 27, the time budget's last step)" in stdout
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    # One-cycle planned on 27 steps ends at 1% of its peak of 0.01; planned on 5 epochs it would be near the peak now.
    assert float(rows[-1]["lr"]) < 2e-4
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 3 and config["train_steps"] == 27
    assert read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 27
    monkeypatch.setattr(budget_module, "measure_speed", lambda *a, **k: pytest.fail("a resumed run measured again"))
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "nothing to train: the run is at epoch 2, step 27, of --epochs 3 and the time budget's 27 steps" in \
        capsys.readouterr().out
    # Asking for more epochs lifts the cut: epoch 3 goes on from its 8th batch, then epoch 4.
    assert main(["train", "--resume", str(out), "--no-progress", "--epochs", "4"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 40


def test_less_than_an_epoch_of_budget_trains_part_of_one(fmnist_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(budget_module, "measure_speed", lambda *a, **k: Speed(step_s=100.0, eval_batch_s=1.0))
    out = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--epochs", "3", "--subset", "32",
                 "--out", str(out), "--time-budget", "1", "--val-split", "0", *TINY]) == 0  # fmt: skip
    # 54 s cannot buy a 100 s step: one step of the 2 an epoch, the budget spent as little as can be.
    assert "so 0.50 of 3 epochs fit (1 of its 2 steps); even that is more than the budget" in capsys.readouterr().out
    assert len(list(csv.DictReader((out / "metrics.csv").open()))) == 1
    assert read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 1


def test_negative_budget_is_refused():
    from alexnet.errors import AlexNetError

    with pytest.raises(AlexNetError, match="--time-budget must not be negative"):
        resolve_config("quick", {"time_budget": -1.0})
    assert resolve_config("quick", {}).time_budget == 15.0 and resolve_config("quick", {"time_budget": 0.0}).time_budget == 0


class SlowSteps:
    """A loader whose every batch comes ``delay`` seconds late: steps slower than planned."""

    def __init__(self, loader, delay):
        self.loader, self.delay = loader, delay
        self.skipped = 0

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch, start_batch=0):
        self.loader.set_epoch(epoch, start_batch)

    def __iter__(self):
        for batch in self.loader:
            time.sleep(self.delay)
            yield batch


def test_steps_that_turn_slower_after_planning_still_end_within_the_budget(fmnist_dir, tmp_path, capsys, monkeypatch):
    # Planned at 0.05 s a step (9 steps and an evaluation an epoch): all 40 epochs fit in 20 s,
    # less the 10% margin. Then every step takes 0.3 s or more, 6x the plan: the 40 epochs would
    # take 110 s; the keeper must end the run, its schedule annealed and a checkpoint saved, in time.
    monkeypatch.setattr(budget_module, "measure_speed", lambda *a, **k: Speed(step_s=0.05, eval_batch_s=0.01))
    fit_module = importlib.import_module("alexnet.engine.fit")
    real_train = fit_module.train_one_epoch
    monkeypatch.setattr(fit_module, "train_one_epoch", lambda model, loader, *a, **k: real_train(model, SlowSteps(loader, 0.3), *a, **k))
    out, budget_s, margin_s = tmp_path / "run", 24.0, 3.0
    started = time.perf_counter()
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--epochs", "40",
                 "--out", str(out), "--time-budget", str(budget_s / 60), *TINY]) == 0  # fmt: skip
    took = time.perf_counter() - started
    stdout = capsys.readouterr().out
    assert "so 40 of 40 epochs fit" in stdout, stdout
    assert "steps ran slower than planned" in stdout, stdout
    assert took <= budget_s + margin_s, (took, stdout)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert 1 <= len(rows) < 40
    ckpt = read_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] < 40 * 9 and ckpt["config"]["epochs"] == len(rows)
    # The one-cycle schedule was fitted into the steps that were left: it ends near its floor
    # (1/25e4 of the 0.01 peak), not midway (where the 40-epoch plan would have it).
    assert float(rows[-1]["lr"]) < 2e-4, (rows[-1], stdout)
    assert "test accuracy:" in stdout and (out / "test.json").is_file()
