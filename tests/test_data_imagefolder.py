"""ImageNet-style folders: JPEG and PNG, grey and RGB, a corrupt file, the flat ILSVRC val layout,
worker processes, and the errors a user can fix."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from data_fixtures import random_image, save_image, write_flat_val, write_image_tree
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from alexnet.data import DataConfig, UnreadableImageWarning, build_loaders, build_preprocess
from alexnet.data.imagefolder import random_resized_crop_box
from alexnet.errors import AlexNetError

WNIDS = ["n01440764", "n01443537", "n01484850"]


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """train/: cat 4, dog 3 (+ broken.jpg), fish 3; val/: cat 2, dog 2, fish 1."""
    monkeypatch.delenv("ALEXNET_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "imagenet"
    write_image_tree(root / "train", {"cat": 4, "dog": 3, "fish": 3}, corrupt="dog")
    write_image_tree(root / "val", {"cat": 2, "dog": 2, "fish": 1}, seed=1)
    return root


def folder_loaders(root, batch_size=4, **kw):
    opts = {k: kw.pop(k) for k in ("seed", "rank", "world_size", "tta", "eval_batch_size") if k in kw}
    cfg = DataConfig(dataset="imagefolder", data_dir=str(root), image_size=kw.pop("image_size", 32),
                     workers=kw.pop("workers", 0), **kw)  # fmt: skip
    return build_loaders(cfg, device="cpu", batch_size=batch_size, **opts)


def collect(loader):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    return batches, [str(w.message) for w in caught if issubclass(w.category, UnreadableImageWarning)]


def test_classes_shapes_and_val_labels(tree):
    train, val, info = folder_loaders(tree, batch_size=4)
    assert info.class_names == ["cat", "dog", "fish"] and info.num_classes == 3
    assert (info.train_size, info.val_size) == (11, 5) and info.in_channels == 3
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    assert info.preprocess["resize"] == round(32 / 0.875) and info.preprocess["resize_dtype"] == "uint8"
    assert len(train) == 2 and len(val) == 2
    batches, _ = collect(train)
    for x, y in batches:
        assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    val_batches, _ = collect(val)
    assert torch.cat([y for _, y in val_batches]).tolist() == [0, 0, 1, 1, 2]
    assert [x.shape[0] for x, _ in val_batches] == [4, 1]


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_file_is_skipped_named_and_counted(tree, workers):
    train, _, _ = folder_loaders(tree, batch_size=11, workers=workers)  # one batch holds every file
    batches, messages = collect(train)
    assert len(batches) == 1 and batches[0][0].shape[0] == 10  # 11 files, one unreadable
    assert train.skipped == 1
    assert any("broken.jpg" in m and "skipped unreadable image" in m for m in messages)
    assert any("epoch 0: skipped 1 unreadable image" in m for m in messages)
    assert sorted(batches[0][1].tolist()) == [0] * 4 + [1] * 3 + [2] * 3


def test_an_unreadable_batch_is_an_empty_one_under_ddp(tree):
    """Batch size 1, so one batch holds broken.jpg alone. One process skips it; each of 2 ranks
    yields all its batches (an empty one in its place), so neither waits for the other."""
    one, _, _ = folder_loaders(tree, batch_size=1, seed=2)
    batches, _ = collect(one)
    assert len(one) == 11 and len(batches) == 10 and min(x.shape[0] for x, _ in batches) == 1
    empties = 0
    for rank in (0, 1):
        train, _, _ = folder_loaders(tree, batch_size=1, seed=2, rank=rank, world_size=2)
        batches, _ = collect(train)
        assert len(batches) == len(train) == 6
        empty = [(x, y) for x, y in batches if x.shape[0] == 0]
        assert all(x.shape == (0, 3, 32, 32) and y.shape == (0,) for x, y in empty)
        empties += len(empty)
    assert empties == 1


def test_workers_do_not_change_the_batches(tree):
    a, _, _ = folder_loaders(tree, workers=0, seed=9)
    b, _, _ = folder_loaders(tree, workers=2, seed=9)
    for loader in (a, b):
        loader.set_epoch(3)
    (ba, _), (bb, _) = collect(a), collect(b)
    assert len(ba) == len(bb) == 2
    for (xa, ya), (xb, yb) in zip(ba, bb):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    a.set_epoch(4)
    bc, _ = collect(a)
    assert any(not torch.equal(x1, x2) for (x1, _), (x2, _) in zip(ba, bc))


def test_grey_model_and_ten_crop(tree):
    train, val, info = folder_loaders(tree, in_channels=1, tta="10crop", eval_batch_size=5)
    assert info.in_channels == 1 and len(info.mean) == 1
    x, _ = collect(train)[0][0]
    assert x.shape[1:] == (1, 32, 32)
    (x10, y), = collect(val)[0]
    assert x10.shape == (5, 10, 1, 32, 32)
    _, plain_val, _ = folder_loaders(tree, in_channels=1, eval_batch_size=5)
    (plain, y2), = collect(plain_val)[0]
    assert torch.equal(y, y2)
    torch.testing.assert_close(x10[:, 4], plain)  # the centre crop is the plain evaluation
    torch.testing.assert_close(x10[:, 5:], x10[:, :5].flip(-1))


def test_preprocess_matches_the_val_loader(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    arrays = {"a": random_image(rng, grey=False, h=45, w=70), "b": random_image(rng, grey=True, h=64, w=41)}
    for name, arr in arrays.items():
        save_image(tmp_path / "train" / name / "x.png", arr)
        save_image(tmp_path / "val" / name / "x.png", arr)
    _, val, info = folder_loaders(tmp_path, image_size=36, eval_batch_size=2)
    (x, y), = collect(val)[0]
    pre = build_preprocess(info.preprocess)
    for i, arr in enumerate(arrays.values()):
        torch.testing.assert_close(pre(Image.open(tmp_path / "val" / "ab"[i] / "x.png")), x[i], atol=1e-6, rtol=0)
        tensor = torch.from_numpy(arr).permute(2, 0, 1) if arr.ndim == 3 else torch.from_numpy(arr)
        torch.testing.assert_close(pre(tensor), x[i], atol=1e-6, rtol=0)


def test_paper_crop_and_no_crop(tree):
    for change in (dict(train_crop="paper"), dict(crop=False)):
        train, _, info = folder_loaders(tree, **change)
        x, _ = collect(train)[0][0]
        assert x.shape[1:] == (3, 32, 32)


def test_explicit_train_and_val_dirs(tree, tmp_path):
    cfg = DataConfig(dataset="imagefolder", train_dir=str(tree / "train"), val_dir=str(tree / "val"), workers=0,
                     image_size=32)  # fmt: skip
    _, val, info = build_loaders(cfg, device="cpu", batch_size=8)
    assert info.val_size == 5 and info.class_names == ["cat", "dog", "fish"]


def test_subset_keeps_every_class(tree):
    train, val, info = folder_loaders(tree, subset=3, batch_size=3)
    assert (info.train_size, info.val_size) == (3, 3)
    batches, _ = collect(val)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == [0, 1, 2]


def test_val_class_missing_from_train_is_named(tree):
    write_image_tree(tree / "val", {"zebra": 1, "yak": 1}, seed=4)
    with pytest.raises(AlexNetError, match="missing from .*train: yak, zebra"):
        folder_loaders(tree)


def test_empty_train_class_is_an_error(tree):
    (tree / "train" / "empty").mkdir()
    with pytest.raises(AlexNetError, match="no JPEG or PNG images: empty"):
        folder_loaders(tree)


def test_no_train_folder_names_the_places_searched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALEXNET_DATA", raising=False)
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(AlexNetError) as err:
        folder_loaders(tmp_path / "nothing-here")
    assert "no ImageNet-style train/ folder" in str(err.value) and str(tmp_path / "nothing-here") in str(err.value)


@pytest.fixture
def flat(tmp_path, monkeypatch):
    """train/<wnid>/ and a flat val/ of ILSVRC2012_val_*.JPEG with known labels."""
    monkeypatch.chdir(tmp_path)
    write_image_tree(tmp_path / "train", {w: 2 for w in WNIDS})
    labels = [WNIDS[i] for i in (2, 0, 1, 1, 0)]
    names = write_flat_val(tmp_path / "val", labels)
    return tmp_path, names, labels


def val_targets(root, labels_file=None):
    cfg = DataConfig(dataset="imagefolder", data_dir=str(root), val_labels=labels_file, workers=0, image_size=32)
    _, val, info = build_loaders(cfg, device="cpu", batch_size=16)
    (x, y), = collect(val)[0]
    assert x.shape == (info.val_size, 3, 32, 32)
    return y.tolist()


@pytest.mark.parametrize("style", ["name-wnid", "stem-index-comma", "kaggle-csv", "one-per-line"])
def test_flat_val_label_formats(flat, style):
    root, names, labels = flat
    expect = [WNIDS.index(w) for w in labels]
    if style == "name-wnid":
        text = "".join(f"{n} {w}\n" for n, w in zip(names, labels))
    elif style == "stem-index-comma":
        text = "".join(f"{n.rsplit('.', 1)[0]},{WNIDS.index(w)}\n" for n, w in zip(names, labels))
    elif style == "kaggle-csv":
        text = "ImageId,PredictionString\n" + "".join(
            f"{n.rsplit('.', 1)[0]},{w} 10 20 30 40 {w} 1 2 3 4\n" for n, w in zip(names, labels)
        )
    else:
        text = "".join(f"{w}\n" for w in labels)
    (root / "labels.txt").write_text(text)
    assert val_targets(root, str(root / "labels.txt")) == expect


def test_flat_val_labels_file_is_found_next_to_the_images(flat):
    root, names, labels = flat
    (root / "val" / "val_labels.txt").write_text("".join(f"{n}\t{w}\n" for n, w in reversed(list(zip(names, labels)))))
    assert val_targets(root) == [WNIDS.index(w) for w in labels]


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "no labels file was found"),
        ("ILSVRC2012_val_00000001.JPEG n01440764\n", "no label for 4 image"),
        ("".join(f"ILSVRC2012_val_{i:08d}.JPEG n99999999\n" for i in range(1, 6)), "not train class folders: n9999"),
        ("".join(f"{i}\n" for i in (1, 2, 3, 4, 5)), "numbers its classes"),
        ("n01440764\n", "one label per line but 1 lines for 5 images"),
    ],
)
def test_flat_val_label_errors(flat, text, message):
    root, _, _ = flat
    labels_file = None
    if text is not None:
        labels_file = str(root / "labels.txt")
        (root / "labels.txt").write_text(text)
    with pytest.raises(AlexNetError, match=message):
        val_targets(root, labels_file)


def test_every_image_unreadable_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            (tmp_path / split / name / "x.jpg").write_bytes(b"nope")
    train, _, _ = folder_loaders(tmp_path)
    with pytest.raises(AlexNetError, match="unreadable"):
        collect(train)


@settings(max_examples=80, deadline=None)
@given(h=st.integers(1, 400), w=st.integers(1, 400), seed=st.integers(0, 2**32 - 1), smin=st.floats(0.05, 1.0))
def test_random_resized_crop_box_is_inside_and_in_range(h, w, seed, smin):
    top, left, ch, cw = random_resized_crop_box(np.random.default_rng(seed), h, w, (smin, 1.0))
    assert 0 <= top and 0 <= left and 1 <= ch and 1 <= cw and top + ch <= h and left + cw <= w


def test_random_resized_crop_area_and_ratio_statistics():
    rng = np.random.default_rng(0)
    boxes = np.array([random_resized_crop_box(rng, 300, 400, (0.08, 1.0)) for _ in range(3000)])
    area = boxes[:, 2] * boxes[:, 3] / (300 * 400)
    ratio = boxes[:, 3] / boxes[:, 2]
    assert area.min() > 0.07 and area.max() <= 1.0 and np.median(area) < 0.6
    assert ratio.min() > 0.7 and ratio.max() < 1.4
