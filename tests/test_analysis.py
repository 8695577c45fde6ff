"""The paper's pictures and ablations: filters, feature-space neighbors, feature maps, the ablation table."""

import csv
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data_fixtures import write_bar_fashion_mnist, write_image_tree

import alexnet
from alexnet.paper import analysis
from alexnet.paper.analysis import filter_grid, first_layer_kernels, kernels_as_images, nearest_neighbors, tile
from alexnet.cli import main
from alexnet.config import TrainConfig
from alexnet.data import build_loaders, build_test_loader
from alexnet.data.eval_split import open_eval_split
from alexnet.engine.checkpoint import read_checkpoint

# Validation images 0 and 1 are exact copies of training images 7 and 23.
COPIES = {0: 7, 1: 23}
# The paper network without LRN and with 2/2 pooling: training it here also checks that
# these builder arguments reach the checkpoint.
SMALL = ["--model", "alexnet_paper", "--image-size", "47", "--batch-size", "20", "--optimizer", "sgd", "--lr", "0.01",
         "--momentum", "0", "--init", "torch", "--no-progress", "--scheduler", "none", "--workers", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def bars(tmp_path_factory):
    root = tmp_path_factory.mktemp("bars")
    write_bar_fashion_mnist(root, n_train=60, n_val=20, val_copies=COPIES)
    return root


@pytest.fixture(scope="module")
def trained(bars, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "variant"
    code = main(["train", "--dataset", "fashion-mnist", "--data-dir", str(bars), "--epochs", "1", "--out", str(out),
                 "--no-lrn", "--pool-kernel", "2", "--pool-stride", "2", *SMALL])  # fmt: skip
    assert code == 0
    return out / "checkpoints" / "last.pt"


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    "name, kernels, groups, height",
    [
        ("alexnet_paper", 96, 1, 6 * 11 + 7),  # 6 rows of 16 kernels, 1 px between and around
        ("alexnet_paper_grouped", 96, 2, 2 * (3 * 11 + 4) + 4),  # two blocks of 3 rows, 4 px apart
        ("alexnet_owt", 64, 1, 4 * 11 + 5),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_filter_grid_shape_for_each_model(name, kernels, groups, height, channels):
    model = alexnet.create_model(name, num_classes=10, in_channels=channels)
    weight, found_groups = first_layer_kernels(model)
    assert weight.shape == (kernels, channels, 11, 11) and found_groups == groups
    grid = filter_grid(weight, found_groups)
    assert grid.shape == (channels, height, 16 * 11 + 17)
    assert grid.min() >= 0 and grid.max() <= 1
    # Each kernel is scaled to its own range: every tile spans exactly [0, 1].
    first = grid[:, 1:12, 1:12]
    assert first.min() == 0 and first.max() == 1
    torch.testing.assert_close(first, kernels_as_images(weight)[0])


def test_grouped_blocks_are_the_two_halves_of_conv1():
    model = alexnet.create_model("alexnet_paper_grouped", num_classes=10, in_channels=3)
    weight, groups = first_layer_kernels(model)
    grid = filter_grid(weight, groups)
    images = kernels_as_images(weight)
    torch.testing.assert_close(grid[:, :37], tile(images[:48], 16))
    torch.testing.assert_close(grid[:, 41:], tile(images[48:], 16))
    assert (grid[:, 37:41] == 1).all()  # the gap between the blocks


def test_filters_command(trained, tmp_path, capsys):
    code, out, err = run_cli(["filters", "--checkpoint", trained], capsys)
    assert code == 0, err
    png = trained.parent.parent / "plots" / "filters.png"
    assert "96 first-layer kernels of alexnet_paper (1 block)" in out and png.is_file()
    assert Image.open(png).size[0] > 0
    # A grouped RGB model: two labelled blocks.
    model = alexnet.create_model("alexnet_paper_grouped", num_classes=10, in_channels=3)
    ckpt = tmp_path / "grouped.pt"
    torch.save({"model": model.state_dict(), "model_args": dict(name="alexnet_paper_grouped", num_classes=10,
                                                                in_channels=3, dropout=0.5)}, ckpt)  # fmt: skip
    code, out, err = run_cli(["filters", "--checkpoint", ckpt, "--out", tmp_path / "g.png"], capsys)
    assert code == 0, err
    assert "(2 blocks)" in out and (tmp_path / "g.png").is_file()


# ---------------------------------------------------------------------------- architecture kwargs


def test_variant_checkpoint_rebuilds_the_variant(trained):
    ckpt = read_checkpoint(trained)
    assert ckpt["model_args"] == dict(name="alexnet_paper", num_classes=10, in_channels=1, dropout=0.5, lrn=False,
                                      pool_kernel=2, pool_stride=2)  # fmt: skip
    model, _, _ = alexnet.load_checkpoint(trained)
    assert isinstance(model.features.norm1, torch.nn.Identity) and model.features.pool1.kernel_size == 2
    x = torch.randn(2, 1, 47, 47)
    same = alexnet.create_model("alexnet_paper", num_classes=10, in_channels=1, lrn=False, pool_kernel=2, pool_stride=2)
    paper = alexnet.create_model("alexnet_paper", num_classes=10, in_channels=1)
    for m in (same, paper):
        m.load_state_dict(ckpt["model"])
        m.eval()
    with torch.no_grad():
        got = model(x)
        torch.testing.assert_close(got, same(x), rtol=0, atol=0)
        # The weights alone do not say which network they belong to: the paper's layout gives other logits.
        assert not torch.allclose(got, paper(x), atol=1e-4)


# ---------------------------------------------------------------------------- neighbors


def test_nearest_neighbors_equals_brute_force():
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(1000, 64, generator=gen).to(torch.float16)
    queries = torch.randn(5, 64, generator=gen)
    dist, rows = nearest_neighbors(queries, bank, k=4, chunk=128)
    expected = torch.cdist(queries, bank.float()).topk(4, dim=1, largest=False)
    assert torch.equal(rows, expected.indices)
    torch.testing.assert_close(dist, expected.values, rtol=1e-5, atol=1e-5)


def splits(checkpoint):
    ckpt = read_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(ckpt["config"])
    cfg.in_channels = ckpt["model_args"]["in_channels"]
    return ckpt, cfg.data_config()


def test_copy_of_a_training_image_is_its_own_nearest_neighbor(trained, tmp_path):
    model, _, _ = alexnet.load_checkpoint(trained)
    ckpt, dcfg = splits(trained)
    train = open_eval_split(dcfg, "train", ckpt["preprocess"])
    val = open_eval_split(dcfg, "val", ckpt["preprocess"])
    bank, _ = analysis.cached_features(model, trained, train, tmp_path / "cache", batch_size=16, log=lambda _: None)
    assert bank.features.dtype == torch.float16 and bank.features.shape == (60, 4096)
    dist, found = analysis.neighbors(analysis.query_features(model, val.images([0, 1, 2])), bank, k=3)
    assert found[0, 0] == 7 and found[1, 0] == 23
    # Distance 0, up to the last bit of a float16 feature (a batch of 16 and one of 3 may round
    # differently): at least 100 times closer than any other image, after a few steps of training.
    for q in (0, 1):
        assert dist[q, 0] < 1e-2 * dist[q, 1] and dist[q, 0] < 1e-2 * dist[2, 0]
    assert (dist[:, 1:] >= dist[:, :-1]).all()


def test_feature_cache_is_written_once_and_invalidated_by_a_new_checkpoint(trained, tmp_path, monkeypatch):
    model, _, _ = alexnet.load_checkpoint(trained)
    ckpt, dcfg = splits(trained)
    train = open_eval_split(dcfg, "train", ckpt["preprocess"])
    # The cache key is the checkpoint file's identity; its content is not read, so a stand-in will do.
    copy = tmp_path / "checkpoints" / "last.pt"
    copy.parent.mkdir()
    copy.write_bytes(b"stands in for the weights")
    cache = tmp_path / "cache"
    first, cached = analysis.cached_features(model, copy, train, cache, log=lambda _: None)
    files = list(cache.glob("features-train-last-*.pt"))
    assert not cached and len(files) == 1
    stamp = files[0].stat().st_mtime_ns

    def no_recompute(*a, **k):
        raise AssertionError("features recomputed although cached")

    monkeypatch.setattr(analysis, "extract_features", no_recompute)
    again, cached = analysis.cached_features(model, copy, train, cache, log=lambda _: None)
    assert cached and torch.equal(again.features, first.features) and files[0].stat().st_mtime_ns == stamp
    monkeypatch.undo()
    # A new checkpoint in the same place (another modification time): computed anew, the old cache removed.
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))
    _, cached = analysis.cached_features(model, copy, train, cache, log=lambda _: None)
    files_now = list(cache.glob("features-train-last-*.pt"))
    assert not cached and len(files_now) == 1 and files_now != files


def test_neighbors_command(trained, capsys):
    code, out, err = run_cli(["neighbors", "--checkpoint", trained, "--index", "0", "1", "5", "--k", "3"], capsys)
    assert code == 0, err
    computing, *lines = out.strip().splitlines()
    assert computing.startswith("computing last-hidden-layer features of 60 train images")
    assert lines[0].startswith("val #0 ") and ": train #7 " in lines[0] and len(lines) == 4
    assert lines[1].startswith("val #1 ") and ": train #23 " in lines[1]
    # Distances with three significant digits of the typical one: the copy prints as 0.
    first, second = (float(d) for d in re.findall(r"\(([0-9.]+)\)", lines[0])[:2])
    assert first == 0 and second > 0
    assert (trained.parent.parent / "plots" / "neighbors.png").is_file()
    assert len(list((trained.parent.parent / "cache").glob("features-train-last-*.pt"))) == 1
    # A training image finds itself; an image file is a query too.
    code, out, err = run_cli(["neighbors", "--checkpoint", trained, "--split", "train", "--index", "3", "--k", "1"], capsys)
    assert code == 0 and out.startswith("train #3 ") and ": train #3 " in out
    assert float(re.search(r"\(([0-9.]+)\)", out).group(1)) == 0
    assert "computing" not in out  # the cache was reused


def test_eval_split_matches_the_validation_loader(bars, tmp_path):
    # The "val" split of the pictures is the dataset's held-out split: the test split of a run.
    dcfg = TrainConfig(dataset="fashion-mnist", data_dir=str(bars), image_size=47, workers=0).data_config()
    val_loader, info = build_test_loader(dcfg, device="cpu", batch_size=8)
    val = open_eval_split(dcfg, "val", info.preprocess)
    for (idx, x), (y, labels) in zip(val.batches(8), val_loader):
        assert torch.equal(x, y) and torch.equal(val.labels[idx], labels)
    # Image folders: decoded and cropped as the validation workers do.
    write_image_tree(tmp_path / "train", {"cat": 3, "dog": 2})
    write_image_tree(tmp_path / "val", {"cat": 2, "dog": 2}, seed=1)
    dcfg = TrainConfig(dataset="imagefolder", data_dir=str(tmp_path), image_size=47, workers=0).data_config()
    _, val_loader, info = build_loaders(dcfg, device="cpu", batch_size=8)
    val = open_eval_split(dcfg, "val", info.preprocess)
    (idx, x), (y, labels) = next(iter(val.batches(8))), next(iter(val_loader))
    assert torch.equal(x, y) and torch.equal(val.labels[idx], labels)
    assert len(open_eval_split(dcfg, "train", info.preprocess)) == 5


# ---------------------------------------------------------------------------- feature maps


def test_feature_maps_are_each_convolution_after_its_relu():
    model = alexnet.create_model("alexnet_paper", num_classes=10, in_channels=1).eval()
    x = torch.randn(1, 47, 47)
    maps = analysis.feature_maps(model, x)
    assert [name for name, _ in maps] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert [m.shape[0] for _, m in maps] == [96, 256, 384, 384, 256]
    with torch.no_grad():
        torch.testing.assert_close(maps[0][1], F.relu(model.features.conv1(x[None]))[0])
    owt = analysis.feature_maps(alexnet.create_model("alexnet_owt", num_classes=10, in_channels=3), torch.randn(3, 63, 63))
    assert [m.shape[0] for _, m in owt] == [64, 192, 384, 256, 256]


def test_activations_command(trained, tmp_path, capsys):
    image = tmp_path / "shirt.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30), dtype=np.uint8), mode="L").save(image)
    code, out, err = run_cli(["activations", "--checkpoint", trained, "--image", image, "--channels", "16"], capsys)
    assert code == 0, err
    assert "conv1: 96 maps of 10x10, first 16" in out and "conv5: 256 maps" in out
    assert (trained.parent.parent / "plots" / "activations-shirt.png").is_file()


# ---------------------------------------------------------------------------- ablation


def test_ablation_runs_variants_writes_the_table_and_reuses_finished_runs(bars, tmp_path, capsys):
    out = tmp_path / "ablation"
    # At 103 px both poolings leave a 3x3 last feature map (at 47 they differ, and are refused);
    # 5 of the 20 training images validate.
    small = [a for a in SMALL if a not in ("--init", "torch")]
    small[small.index("--image-size") + 1] = "103"
    args = ["ablate", "--dataset", "fashion-mnist", "--data-dir", bars, "--subset", "20", "--epochs", "1",
            "--variants", "baseline", "no-overlap", "--seeds", "1", "--out", out, "--val-split", "5", *small]  # fmt: skip
    at_47 = [*args[: -len(small)], *[a for a in SMALL if a not in ("--init", "torch")]]
    code, _, err = run_cli(at_47, capsys)
    assert code == 2 and "the variants' last feature maps are baseline 1x1, no-overlap 2x2" in err, err
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert "last feature map (what fc6 sees): baseline 3x3, no-overlap 3x3" in stdout
    rows = list(csv.DictReader((out / "ablation.csv").open()))
    assert [r["variant"] for r in rows] == ["baseline", "no-overlap"]
    assert all(r["runs"] == "1" for r in rows)
    runs = list(csv.DictReader((out / "ablation-runs.csv").open()))
    # The table's error, counted here by hand: each run's final weights on the split it validated on.
    for row, run in zip(rows, runs, strict=True):
        last = out / row["variant"] / "seed-0" / "checkpoints" / "last.pt"
        model, _, _ = alexnet.load_checkpoint(last)
        _, val, _ = build_loaders(splits(last)[1], device="cpu", batch_size=8)
        wrong = seen = 0
        with torch.no_grad():
            for x, y in val:
                wrong += int((model.eval()(x).argmax(1) != y).sum())
                seen += len(y)
        assert seen > 0 and float(run["top1_error"]) == pytest.approx(wrong / seen, abs=1e-6), (run, wrong, seen)
        assert float(row["top1_error_mean"]) == pytest.approx(wrong / seen, abs=1e-6), (row, wrong, seen)
    assert [(r["variant"], r["seed"], r["status"]) for r in runs] == [("baseline", "0", "trained"), ("no-overlap", "0", "trained")]
    table = (out / "ablation.md").read_text()
    assert "| baseline |" in table and "| no-overlap |" in table and (out / "ablation.png").is_file()
    assert all(r["final_map"] == "3x3" for r in rows)
    # Each run is an ordinary run directory of the variant, with the paper's values for the rest.
    ckpt = out / "no-overlap" / "seed-0" / "checkpoints" / "last.pt"
    assert read_checkpoint(ckpt)["model_args"] == dict(name="alexnet_paper", num_classes=10, in_channels=1,
                                                             dropout=0.5, lrn=True, pool_kernel=2, pool_stride=2)  # fmt: skip
    assert read_checkpoint(ckpt)["config"]["init"] == "paper"

    stamp = ckpt.stat().st_mtime_ns
    code, stdout, err = run_cli(args, capsys)
    assert code == 0 and stdout.count("reusing the finished run") == 2 and ckpt.stat().st_mtime_ns == stamp
    # A run whose result was not recorded (killed after its last checkpoint) is resumed, not retrained.
    (out / "baseline" / "seed-0" / "result.json").unlink()
    code, stdout, err = run_cli(args, capsys)
    assert code == 0 and "baseline, seed 0: resuming" in stdout and (out / "baseline" / "seed-0" / "result.json").is_file()
    assert list(csv.DictReader((out / "ablation.csv").open())) == rows
    code, _, err = run_cli([*args, "--lr", "0.02"], capsys)
    assert code == 2 and "holds a run with other settings (lr)" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, message",
    [
        (["filters", "--checkpoint", "/nonexistent/last.pt"], "checkpoint not found"),
        (["neighbors", "--checkpoint", "/nonexistent/last.pt", "--index", "0"], "checkpoint not found"),
        (["activations", "--checkpoint", "/nonexistent/last.pt", "--image", "IMAGE"], "checkpoint not found"),
        (["activations", "--checkpoint", "CKPT", "--image", "/nonexistent/x.png"], "/nonexistent/x.png: no such file"),
        (["neighbors", "--checkpoint", "CKPT", "--index", "3", "20"], "index 20 is out of range: the val split has 20"),
        (["neighbors", "--checkpoint", "CKPT", "--split", "train", "--index", "-1"], "index -1 is out of range"),
        (["neighbors", "--checkpoint", "CKPT", "--index", "0", "--k", "0"], "--k must be at least 1"),
        (["neighbors", "--checkpoint", "CKPT", "--image", "/nonexistent/x.png"], "no such file"),
        (["ablate", "--variants", "baseline", "no-relu"], "unknown variant 'no-relu'"),
        (["ablate", "--seeds", "0"], "--seeds must be at least 1"),
        (["ablate", "--model", "alexnet_owt", "--max-steps", "1"], "varies the paper models only"),
    ],
)
def test_bad_input_is_one_line(trained, tmp_path, capsys, args, message):
    image = tmp_path / "x.png"
    Image.new("L", (28, 28), 100).save(image)
    args = [str(trained) if a == "CKPT" else str(image) if a == "IMAGE" else a for a in args]
    code, _, err = run_cli(args, capsys)
    assert code != 0
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_ablation_variants_train_for_the_same_epochs_even_from_a_budgeted_preset(tmp_path):
    from alexnet.config import resolve_config
    from alexnet.paper.ablation import VARIANTS, variant_config

    base = resolve_config("quick", {"epochs": 2})
    assert base.time_budget == 15.0  # the quick preset plans its epochs on this machine's speed ...
    configs = [variant_config(base, v, 0, tmp_path / v) for v in VARIANTS]
    assert {(c.epochs, c.time_budget) for c in configs} == {(2, 0.0)}  # ... an ablation must not
    assert base.test and not any(c.test for c in configs)  # and it compares on validation, never reading the test split
