"""The loader protocol on the in-memory path: shapes, dtypes, order, determinism, sharding,
channel conversion, the eval transform and its checkpoint spec, 10-crop; the real Fashion-MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import write_cifar10, write_fashion_mnist
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from alexnet.data import (
    DATASETS,
    DataConfig,
    DatasetInfo,
    build_loaders,
    build_preprocess,
    load_fashion_mnist,
    make_synthetic,
)
from alexnet.data import fashion_mnist as fm
from alexnet.data.sampling import EpochSampler
from alexnet.errors import AlexNetError

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def fmnist(tmp_path, monkeypatch):
    """A 40/20-image Fashion-MNIST in IDX .gz files; returns (data_dir, written arrays)."""
    monkeypatch.delenv("ALEXNET_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    written = write_fashion_mnist(tmp_path / "fm", n_train=40, n_val=20)
    return str(tmp_path / "fm"), written


def fm_loaders(data_dir, batch_size=8, **kw):
    opts = {k: kw.pop(k) for k in ("seed", "rank", "world_size", "tta", "eval_batch_size") if k in kw}
    size = kw.pop("image_size", 48)
    cfg = DataConfig(dataset="fashion-mnist", data_dir=data_dir, download=False, image_size=size, **kw)
    return build_loaders(cfg, device="cpu", batch_size=batch_size, **opts)


def test_datasets_are_the_four_of_the_interface():
    assert DATASETS == ("fashion-mnist", "cifar10", "imagefolder", "synthetic")


def test_train_and_val_batches_shapes_dtypes_and_order(fmnist):
    data_dir, written = fmnist
    train, val, info = fm_loaders(data_dir, batch_size=8)
    assert len(train) == 5 and train.num_samples == 40 and train.skipped == 0
    batches = list(train)
    assert len(batches) == 5
    for x, y in batches:
        assert x.shape == (8, 1, 48, 48) and x.dtype == torch.float32 and x.device.type == "cpu"
        assert y.shape == (8,) and y.dtype == torch.int64
    # shuffled: all training labels, each once, not in file order
    labels = torch.cat([y for _, y in batches]).numpy()
    np.testing.assert_array_equal(np.sort(labels), np.sort(written["train"][1]))
    assert not np.array_equal(labels, written["train"][1])  # (seeded: the same shuffle every run)
    assert len(val) == 3 and val.num_samples == 20
    val_batches = list(val)
    assert [len(y) for _, y in val_batches] == [8, 8, 4]  # no drop at evaluation
    np.testing.assert_array_equal(torch.cat([y for _, y in val_batches]).numpy(), written["val"][1])


def test_dataset_info(fmnist):
    data_dir, written = fmnist
    _, _, info = fm_loaders(data_dir, image_size=64)
    assert isinstance(info, DatasetInfo)
    assert info.name == "fashion-mnist" and info.num_classes == 10 and info.class_names[0] == "T-shirt/top"
    assert info.in_channels == 1 and info.image_size == 64
    # Fashion-MNIST's pixel statistics (test_real_fashion_mnist measures them on the real set), and
    # the val loader normalises with them: at 28 px (no resize) a pixel p comes out as (p/255 - mean)/std.
    assert info.mean == (0.2860,) and info.std == (0.3530,)
    x, _ = next(iter(fm_loaders(data_dir, image_size=28)[1]))
    np.testing.assert_allclose(x[:, 0].numpy(), (written["val"][0][:8] / 255 - 0.2860) / 0.3530, atol=1e-5)
    assert (info.train_size, info.val_size) == (40, 20)
    assert info.augment["crop_padding"] == 2 and info.augment["flip"] is True and info.augment["pca_color"] == 0.0
    spec = json.loads(json.dumps(info.preprocess))  # plain JSON
    assert spec == info.preprocess and spec["image_size"] == 64 and spec["in_channels"] == 1


def test_drop_last_but_never_zero_batches(fmnist):
    data_dir, _ = fmnist
    train, _, _ = fm_loaders(data_dir, batch_size=16)
    assert len(train) == 2 and train.num_samples == 32
    assert [len(y) for _, y in train] == [16, 16]
    train, _, _ = fm_loaders(data_dir, batch_size=64)  # larger than the dataset
    assert len(train) == 1 and train.num_samples == 40
    assert [len(y) for _, y in train] == [40]


def test_same_seed_same_batches_other_epoch_other_batches(fmnist):
    data_dir, _ = fmnist
    a, _, _ = fm_loaders(data_dir, seed=3)
    b, _, _ = fm_loaders(data_dir, seed=3)
    first = list(a)
    for (xa, ya), (xb, yb) in zip(first, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.set_epoch(1)
    second = list(a)
    assert not torch.equal(first[0][1], second[0][1]) or not torch.equal(first[0][0], second[0][0])
    a.set_epoch(0)
    again = list(a)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, again))
    c, _, _ = fm_loaders(data_dir, seed=4)
    assert not all(torch.equal(y1, y2) for (_, y1), (_, y2) in zip(first, c))


def test_start_batch_resumes_with_the_same_batches(fmnist):
    data_dir, _ = fmnist
    train, _, _ = fm_loaders(data_dir, seed=1)
    train.set_epoch(2)
    full = list(train)
    train.set_epoch(2, start_batch=3)
    rest = list(train)
    assert len(rest) == 2
    for (x1, y1), (x2, y2) in zip(full[3:], rest):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), world=st.integers(1, 5), batch=st.integers(1, 9), epoch=st.integers(0, 3))
def test_sharding_covers_every_sample(n, world, batch, epoch):
    trains = [EpochSampler(n, batch, train=True, seed=7, rank=r, world_size=world) for r in range(world)]
    shards = [s.indices(epoch) for s in trains]
    assert len({len(s) for s in shards}) == 1  # equal shares
    assert set(torch.cat(shards).tolist()) == set(range(n))  # padding repeats, never misses
    if n % world == 0:
        assert sorted(torch.cat(shards).tolist()) == list(range(n))
    for s in trains:
        assert len(s) >= 1 and sum(len(b) for b in s.batches(epoch)) == s.num_samples
    vals = [EpochSampler(n, batch, train=False, rank=r, world_size=world) for r in range(world)]
    assert sorted(torch.cat([v.indices(epoch) for v in vals]).tolist()) == list(range(n))  # exactly once
    assert sum(v.num_samples for v in vals) == n


def test_distributed_loaders_split_train_and_val(fmnist):
    data_dir, written = fmnist
    counts = np.zeros(10, dtype=int)
    train_labels = []
    for rank in range(3):
        train, val, _ = fm_loaders(data_dir, batch_size=4, seed=5, rank=rank, world_size=3)
        assert len(train) == 3 and train.num_samples == 12  # ceil(40 / 3) = 14 -> 3 batches of 4
        train_labels.append(torch.cat([y for _, y in train]))
        for _, y in val:
            counts += np.bincount(y.numpy(), minlength=10)
    np.testing.assert_array_equal(counts, np.bincount(written["val"][1], minlength=10))
    assert not torch.equal(train_labels[0], train_labels[1])


def test_one_channel_to_three_repeats(fmnist):
    data_dir, _ = fmnist
    _, val, info = fm_loaders(data_dir, in_channels=3)
    x, _ = next(iter(val))
    assert x.shape == (8, 3, 48, 48) and info.in_channels == 3
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert info.mean == (0.2860,) * 3 and info.std == (0.3530,) * 3


def test_three_channels_to_one_is_luma(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written = write_cifar10(tmp_path / "c", per_batch=2, n_val=5)
    cfg = DataConfig(dataset="cifar10", data_dir=str(tmp_path / "c"), download=False, image_size=32, in_channels=1,
                     normalize=False)  # fmt: skip
    _, val, info = build_loaders(cfg, device="cpu", batch_size=5)
    x, _ = next(iter(val))
    assert x.shape == (5, 1, 32, 32)
    rgb = written["val"][0].astype(np.float64) / 255  # (N, H, W, 3)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(x[:, 0].numpy(), luma, atol=1e-6)
    assert info.mean == (0.0,) and info.std == (1.0,)


def test_cifar_defaults_and_grey_stats(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar10(tmp_path / "c", per_batch=2, n_val=3)
    cfg = DataConfig(dataset="cifar10", data_dir=str(tmp_path / "c"), download=False, image_size=32)
    train, _, info = build_loaders(cfg, device="cpu", batch_size=4)
    assert info.mean == (0.4914, 0.4822, 0.4465) and info.std == (0.247, 0.2435, 0.2616)
    assert info.augment["crop_padding"] == 4 and info.augment["pca_color"] == 0.1
    assert next(iter(train))[0].shape == (4, 3, 32, 32)
    grey = build_loaders(DataConfig(**{**cfg.__dict__, "in_channels": 1}), device="cpu", batch_size=4)[2]
    assert grey.mean[0] == pytest.approx(0.299 * 0.4914 + 0.587 * 0.4822 + 0.114 * 0.4465, abs=1e-6)


def test_eval_transform_matches_build_preprocess(fmnist):
    data_dir, written = fmnist
    _, val, info = fm_loaders(data_dir, image_size=227, eval_batch_size=20)
    x, _ = next(iter(val))
    pre = build_preprocess(json.loads(json.dumps(info.preprocess)))
    images = written["val"][0]
    for i in (0, 7, 19):
        from_tensor = pre(torch.from_numpy(images[i]).unsqueeze(0))
        from_pil = pre(Image.fromarray(images[i], mode="L"))
        assert from_tensor.shape == (1, 227, 227) and from_tensor.dtype == torch.float32
        torch.testing.assert_close(from_tensor, x[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(from_pil, x[i], atol=1e-6, rtol=0)
    # an RGB photo of any size comes out in the model's shape
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8))
    assert pre(photo).shape == (1, 227, 227)


def test_fashion_mnist_is_upsampled_bilinearly(fmnist):
    data_dir, written = fmnist
    _, val, info = fm_loaders(data_dir, image_size=56, normalize=False, eval_batch_size=20)
    x, _ = next(iter(val))
    # exactly twice the size: bilinear (align_corners=False) puts each output pixel a quarter
    # pixel from a source centre: 3/4 of the near pixel and 1/4 of the far one, per axis
    src = torch.from_numpy(written["val"][0][3]).double() / 255
    expect = 0.75 * src[1, 1] * 0.75 + 0.25 * src[0, 1] * 0.75 + 0.75 * src[1, 0] * 0.25 + 0.25 * src[0, 0] * 0.25
    assert x[3, 0, 2, 2].item() == pytest.approx(expect.item(), abs=1e-6)


def test_ten_crop_is_corners_centre_and_mirrors(fmnist):
    data_dir, _ = fmnist
    _, val, info = fm_loaders(data_dir, tta="10crop", eval_batch_size=6)
    _, plain_val, _ = fm_loaders(data_dir, eval_batch_size=6)
    x, y = next(iter(val))
    plain, y2 = next(iter(plain_val))
    assert x.shape == (6, 10, 1, 48, 48) and torch.equal(y, y2)
    torch.testing.assert_close(x[:, 4], plain)  # the centre crop is the plain evaluation
    torch.testing.assert_close(x[:, 5:], x[:, :5].flip(-1))  # then the five mirrored
    assert not torch.allclose(x[:, 0], x[:, 4])  # corners are shifted by the crop padding


def test_subset_takes_the_first_images(fmnist):
    data_dir, written = fmnist
    train, val, info = fm_loaders(data_dir, subset=10, batch_size=4)
    assert (info.train_size, info.val_size) == (10, 10)
    np.testing.assert_array_equal(torch.cat([y for _, y in val]).numpy(), written["val"][1][:10])


def test_normalisation_off_gives_unit_range(fmnist):
    data_dir, written = fmnist
    _, val, info = fm_loaders(data_dir, normalize=False, image_size=28)
    x, _ = next(iter(val))
    np.testing.assert_allclose(x[:, 0].numpy(), written["val"][0][:8] / 255, atol=1e-6)


def test_synthetic_is_deterministic_and_configurable():
    cfg = DataConfig(dataset="synthetic", synthetic_train=30, synthetic_val=9, synthetic_classes=7, synthetic_size=20,
                     in_channels=1, image_size=24)  # fmt: skip
    train, val, info = build_loaders(cfg, device="cpu", batch_size=10)
    again = build_loaders(cfg, device="cpu", batch_size=10)[0]
    assert info.num_classes == 7 and info.in_channels == 1 and (info.train_size, info.val_size) == (30, 9)
    for (x1, y1), (x2, y2) in zip(train, again):
        assert x1.shape == (10, 1, 24, 24) and torch.equal(x1, x2) and torch.equal(y1, y2)
        assert int(y1.max()) < 7
    a = make_synthetic(train=5, val=5, num_classes=3, size=8, channels=3, seed=0)
    b = make_synthetic(train=5, val=5, num_classes=3, size=8, channels=3, seed=0)
    c = make_synthetic(train=5, val=5, num_classes=3, size=8, channels=3, seed=1)
    assert torch.equal(a.train_images, b.train_images) and not torch.equal(a.train_images, c.train_images)
    assert a.train_images.dtype == torch.uint8 and a.train_images.shape == (5, 3, 8, 8)


def test_synthetic_normalised_statistics_are_standard():
    cfg = DataConfig(dataset="synthetic", synthetic_train=400, synthetic_val=400, synthetic_size=16, image_size=16)
    _, val, info = build_loaders(cfg, device="cpu", batch_size=400)
    x, _ = next(iter(val))
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(dataset="mnist"), "unknown dataset"),
        (dict(image_size=0), "image size"),
        (dict(in_channels=2), "in_channels"),
        (dict(translate=1.5), "translate"),
        (dict(pca_color=-1.0), "pca_color"),
        (dict(subset=0), "subset"),
        (dict(mean=(0.5,)), "both mean and std"),
    ],
)
def test_bad_config_is_a_one_line_error(change, message):
    cfg = DataConfig(**{"dataset": "synthetic", **change})
    with pytest.raises(AlexNetError, match=message):
        build_loaders(cfg, device="cpu", batch_size=4)


def test_unknown_tta_is_an_error():
    with pytest.raises(AlexNetError, match="test-time"):
        build_loaders(DataConfig(dataset="synthetic"), device="cpu", batch_size=4, tta="5crop")


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    data = load_fashion_mnist(str(REAL_FASHION_MNIST), download=False)
    assert data.train_images.shape == (60000, 1, 28, 28) and data.val_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert torch.bincount(data.val_labels).tolist() == [1000] * 10
    pixels = data.train_images.double() / 255
    assert pixels.mean().item() == pytest.approx(fm.MEAN[0], abs=5e-5)
    assert pixels.std().item() == pytest.approx(fm.STD[0], abs=5e-5)
