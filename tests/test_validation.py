"""The validation split (--val-split), the test split read once at the end, the paper's
10-crop test checked by hand, and flags that would be ignored refused."""

import importlib
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from alexnet.cli import main
from alexnet.data import DataConfig, build_loaders, build_test_loader, load_small_dataset
from alexnet.data.sampling import stratified_split
from alexnet.engine.evaluate import evaluate
from alexnet.errors import AlexNetError
from data_fixtures import write_bar_fashion_mnist

FAST = ["--model", "alexnet_owt", "--image-size", "63", "--batch-size", "16", "--init", "torch", "--no-progress",
        "--workers", "0", "--seed", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm-val")
    write_bar_fashion_mnist(root, n_train=200, n_val=40)
    return root


def test_stratified_split_keeps_each_class_share_apart_and_ignores_the_run_seed():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    torch.manual_seed(123)  # the run's seed must not move the split
    train, val = stratified_split(labels, 20)
    torch.manual_seed(7)
    train2, val2 = stratified_split(labels, 20)
    assert torch.equal(val, val2) and torch.equal(train, train2)
    assert len(val) == 20 and len(train) == 80
    assert set(val.tolist()).isdisjoint(train.tolist()) and sorted(val.tolist() + train.tolist()) == list(range(100))
    assert torch.bincount(labels[val], minlength=3).tolist() == [12, 6, 2]  # 60%, 30%, 10% of 20
    # 7 of 3 classes of 33, 33, 34: shares 2.31, 2.31, 2.38; the one left over goes to the largest remainder.
    uneven = torch.tensor([0] * 33 + [1] * 33 + [2] * 34)
    assert torch.bincount(uneven[stratified_split(uneven, 7)[1]], minlength=3).tolist() == [2, 2, 3]
    with pytest.raises(ValueError):
        stratified_split(labels, 100)


def test_the_val_split_is_carved_from_train_and_the_test_split_is_left_whole(fmnist_dir):
    cfg = DataConfig(dataset="fashion-mnist", data_dir=str(fmnist_dir), image_size=28, val_split=None)
    whole = load_small_dataset(cfg)
    train, val, info = build_loaders(cfg, device="cpu", batch_size=10)
    # The default: 5,000 images, at most a tenth of the training set (20 of this one's 200).
    assert (info.val_split, info.train_size, info.val_size, info.test_size) == (20, 180, 20, 40)
    carved = torch.cat([train.images, val.images])
    assert len(carved) == 200
    # The training and validation images together are the original training set, each once.
    as_rows = lambda t: sorted(map(bytes, t.flatten(1).numpy()))  # noqa: E731
    assert as_rows(carved) == as_rows(whole.train_images)
    assert torch.bincount(val.labels, minlength=10).tolist() == [2] * 10
    test, test_info = build_test_loader(cfg, device="cpu", batch_size=10)
    assert torch.equal(test.images.cpu(), whole.val_images) and test_info.val_split == 0
    # 0: the old behaviour, the held-out split validates.
    _, val0, info0 = build_loaders(DataConfig(dataset="fashion-mnist", data_dir=str(fmnist_dir), val_split=0),
                                   device="cpu", batch_size=10)  # fmt: skip
    assert info0.val_split == 0 and info0.train_size == 200 and torch.equal(val0.images.cpu(), whole.val_images)


@pytest.mark.parametrize("test_flag", [[], ["--no-test"]])
def test_a_run_validates_on_the_split_and_reads_the_test_split_once_at_the_end(fmnist_dir, tmp_path, capsys,
                                                                                monkeypatch, test_flag):  # fmt: skip
    """... or, with --no-test (tuning runs, ablations), never."""
    fit_module = importlib.import_module("alexnet.engine.fit")
    events = []
    real_evaluate, real_test_loader = fit_module.evaluate, fit_module.build_test_loader

    def logged_evaluate(model, loader, *a, **k):
        events.append(("evaluate", k.get("desc"), loader.num_samples))
        return real_evaluate(model, loader, *a, **k)

    def logged_test_loader(*a, **k):
        events.append(("test loader",))
        return real_test_loader(*a, **k)

    monkeypatch.setattr(fit_module, "evaluate", logged_evaluate)
    monkeypatch.setattr(fit_module, "build_test_loader", logged_test_loader)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--epochs", "2",
                 "--val-split", "30", "--out", str(out), *FAST, *test_flag]) == 0  # fmt: skip
    stdout = capsys.readouterr().out
    last = stdout.strip().splitlines()[-1]
    if test_flag:
        assert events == [("evaluate", "validate", 30), ("evaluate", "validate", 30)]
        assert not (out / "test.json").exists() and "the test split was not read (--no-test)" in last
        assert json.loads((out / "config.json").read_text())["test"] is False
        return
    assert events == [("evaluate", "validate", 30), ("evaluate", "validate", 30), ("test loader",),
                      ("evaluate", "test", 40)]  # fmt: skip
    assert last.startswith("validation top-1 ") and "on 30 training images kept apart); test accuracy: " in last
    assert "on 40 fashion-mnist test images, read once with best.pt" in last
    test = json.loads((out / "test.json").read_text())
    assert test["n"] == 40 and test["checkpoint"] == "best.pt"
    config = json.loads((out / "config.json").read_text())
    assert config["val_split"] == 30


def test_the_test_split_judges_best_pt_not_the_last_weights(fmnist_dir, tmp_path, capsys, monkeypatch):
    # Validation accuracy that falls after the first epoch: best.pt stays at epoch 1, and the
    # test split must be evaluated with epoch 1's weights.
    fit_module = importlib.import_module("alexnet.engine.fit")
    real_evaluate = fit_module.evaluate
    seen = []

    def scripted(model, loader, *a, **k):
        result = real_evaluate(model, loader, *a, **k)
        weights = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        if k.get("desc") == "validate":
            seen.append(weights)
            result = {**result, "top1": [0.9, 0.5][len(seen) - 1]}
        else:
            seen.append(("test", weights))
        return result

    monkeypatch.setattr(fit_module, "evaluate", scripted)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--epochs", "2",
                 "--lr", "0.01", "--out", str(out), *FAST]) == 0  # fmt: skip
    first, second, (_, tested) = seen
    assert not torch.equal(first, second)
    assert torch.equal(tested, first)
    assert "validation top-1 90.00% (best.pt, epoch 1" in capsys.readouterr().out
    assert json.loads((out / "test.json").read_text())["epoch"] == 1


def test_val_split_zero_keeps_the_old_behaviour_and_says_so(fmnist_dir, tmp_path, capsys):
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--epochs", "1",
                 "--max-steps", "2", "--val-split", "0", "--out", str(tmp_path / "run"), *FAST]) == 0  # fmt: skip
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("test accuracy: ") and "on 40 fashion-mnist test images" in last
    assert "with --val-split 0 this split also chose best.pt" in last
    assert not (tmp_path / "run" / "test.json").exists()


@pytest.mark.parametrize("value, message", [
    ("200", "--val-split 200 keeps every training image apart: there are 200; give fewer"),
    ("-1", "--val-split must not be negative"),
])  # fmt: skip
def test_a_val_split_that_cannot_be_is_one_line(fmnist_dir, tmp_path, capsys, value, message):
    code = main(["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--val-split", value,
                 "--out", str(tmp_path / "run"), *FAST])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


class Linear(nn.Module):
    """A fixed linear classifier on the flattened image: simple enough to compute by hand."""

    def __init__(self, pixels: int, classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(pixels, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_ten_crop_evaluation_equals_a_hand_computation():
    cfg = DataConfig(dataset="synthetic", synthetic_train=16, synthetic_val=6, synthetic_size=12, image_size=12,
                     in_channels=3, crop_padding=2)  # fmt: skip
    _, val, info = build_loaders(cfg, device="cpu", batch_size=4, tta="10crop")
    data = load_small_dataset(cfg)
    model = Linear(3 * 12 * 12, 10).eval()
    got = evaluate(model, val, 10)

    mean, std = torch.tensor(info.mean).view(3, 1, 1), torch.tensor(info.std).view(3, 1, 1)
    losses, right = [], 0
    for image, label in zip(data.val_images, data.val_labels, strict=True):
        padded = torch.zeros(3, 16, 16)
        padded[:, 2:14, 2:14] = image.float()
        crops = [padded[:, t : t + 12, s : s + 12] for t, s in [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]]
        crops += [c.flip(-1) for c in crops]
        probs = torch.stack([F.softmax(model(((c / 255 - mean) / std).unsqueeze(0)).squeeze(0), 0) for c in crops]).mean(0)
        losses.append(-probs[label].log())
        right += int(probs.argmax() == label)
    assert got["n"] == 6
    assert got["top1"] == pytest.approx(right / 6, abs=1e-9)
    assert got["loss"] == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)


def test_ten_crop_without_training_crops_is_refused():
    cfg = DataConfig(dataset="synthetic", synthetic_train=16, synthetic_val=6, image_size=12, crop=False)
    with pytest.raises(AlexNetError, match="with --no-crop .* they are one image five times"):
        build_loaders(cfg, device="cpu", batch_size=4, tta="10crop")


@pytest.mark.parametrize("args, message", [
    (["--scheduler", "onecycle", "--warmup-epochs", "1"], "--warmup-epochs does nothing with --scheduler onecycle"),
    (["--scheduler", "onecycle", "--min-lr", "1e-5"], "--scheduler onecycle does not use it"),
    (["--scheduler", "step", "--min-lr", "1e-5"], "--scheduler step does not use it"),
    (["--preset", "quick", "--tta", "10crop"], "--tta 10crop takes its five crops within the padding"),
])  # fmt: skip
def test_flags_that_would_be_ignored_are_refused(fmnist_dir, tmp_path, capsys, args, message):
    code = main(["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--out", str(tmp_path / "run"),
                 *FAST, *args])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ablate_has_no_time_budget_to_ignore(capsys):
    with pytest.raises(SystemExit) as e:
        main(["ablate", "--time-budget", "5"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: --time-budget 5" in err and err.count("\n") == 1
