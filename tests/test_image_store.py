"""The prepared image store (``alexnet prepare``): bad files in the tree, an unchanged tree and a
changed one, a prepare killed and resumed, the store's errors through the command line, and the
loader that reads it (crops, ten crops, shard sampling under DDP, --subset and --val-split).

Two trees are prepared once per module: ``tree``/``store`` (3 classes x 16 JPEGs of 120-200 px,
val 2 per class; 64 px, 4 images a shard: 12 train shards and 2 val ones) and ``bad`` (every
kind of bad file, a flat ILSVRC val/ with val_labels.txt, 32 px). Expected pixels come from
PIL, not from the package's decoder.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.data import DataConfig, build_loaders
from alexnet.data.image_store import load_resized, open_store, prepare_store
from alexnet.data.imagefolder import random_resized_crop_box
from alexnet.data.sampling import EpochSampler
from alexnet.data.store_loader import (
    ShardSampler,
    StoreLoader,
    StoreTrainTransform,
    crop_at,
    random_resized_boxes,
    resized_crop,
)
from alexnet.engine.checkpoint import read_checkpoint
from alexnet.errors import AlexNetError
from data_fixtures import save_image, write_flat_val, write_image_tree
from test_bad_input import fails_with

SIZE, SHARD = 64, 4  # the module store: 48 train images in 12 shards, 6 val in 2
CLASSES = ["a", "b", "c"]
PREPARE = ["--size", str(SIZE), "--shard-images", str(SHARD), "--workers", "1", "--no-progress"]
TRAIN = ["--no-progress", "--epochs", "1", "--max-steps", "2", "--image-size", "63", "--batch-size", "4",
         "--model", "alexnet_owt", "--init", "torch"]  # fmt: skip


# ---------------------------------------------------------------- files made byte by byte


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose IHDR claims width x height RGB pixels, with one pixel of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + bytes(3))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_with_damaged_idat(array: np.ndarray) -> bytes:
    """A PNG of ``array`` whose IDAT's zlib header is wrong (its CRC right): libpng's error, which
    crashed torchvision 0.29's decoder (SIGSEGV) and so hung a prepare's pool for ever."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    data = buffer.getvalue()
    at = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[at : at + 4])[0]
    payload = bytearray(data[at + 8 : at + 8 + length])
    payload[0] ^= 0x0F  # the compression method/window byte: "incorrect header check"
    return data[:at] + png_chunk(b"IDAT", bytes(payload)) + data[at + 12 + length :]


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header is patched to claim width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 40)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    at = 2
    while data[at + 1] != 0xC0:  # walk the segments: marker, 2-byte length
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)  # after marker, length and precision
    return bytes(data)


def smooth(h: int, w: int, base: tuple[int, int, int], seed: int) -> np.ndarray:
    """An RGB image of ``base`` colour with gradients and a little noise: resampling shows in it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    ramp = (np.stack([x / w, y / h, (x + y) / (h + w)], -1) * 40 - 20) + rng.normal(0, 4, (h, w, 3))
    return np.clip(np.asarray(base, dtype=np.float64) + ramp, 0, 255).astype(np.uint8)


def pil_prepared(path: Path, size: int) -> np.ndarray:
    """The store's preprocessing done by PIL: RGB, shorter side to ``size`` (bilinear), central
    square; uint8 (3, size, size). The longer side is truncated, as torchvision's resize does."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    w, h = rgb.size
    nw, nh = (size, size * h // w) if w <= h else (size * w // h, size)
    rgb = rgb.resize((nw, nh), Image.BILINEAR)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(rgb.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


def store_images(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image and label of a split, read straight from the .npy files the manifest lists."""
    manifest = json.loads((root / "manifest.json").read_text())
    shards = [s["file"] for s in manifest["splits"][split]["shards"]]
    images = np.concatenate([np.load(root / f) for f in shards])
    labels = np.concatenate([np.load(root / f.replace(".npy", "-labels.npy")) for f in shards])
    return images, labels


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


# ---------------------------------------------------------------- the module's trees and stores


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 2)):
        for c in CLASSES:
            for k in range(n):
                h, w = int(rng.integers(120, 200)), int(rng.integers(120, 200))
                colour = tuple(int(v) for v in rng.integers(40, 216, 3))
                save_image(root / split / c / f"img_{k:02d}.jpg", smooth(h, w, colour, int(rng.integers(1 << 30))))
    return root


@pytest.fixture(scope="module")
def store(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "store"
    report = prepare_store(tree, out, size=SIZE, shard_images=SHARD, workers=1, progress=False)
    assert (report.written, report.reused, report.images, report.skipped) == (14, 0, {"train": 48, "val": 6}, [])
    return out


BAD_FILES = {  # file -> what the skip's reason says
    "train/a/cut.jpg": "truncated",
    "train/a/corrupt.jpg": "",
    "train/a/x.jpg": "not an image file",
    "train/b/tiny.png": "1x1 px, smaller than --min-side 16",
    "train/c/huge.png": "header claims",
    "train/c/huge.jpg": "header claims",
    "train/c/damaged-idat.png": "",
}
KEPT_ODD = {"train/b/cmyk.jpg": "CMYK", "train/b/grey.jpg": "L", "train/b/alpha.png": "RGBA"}
FLAT_LABELS = ["b", "a", "a", "b", "a"]  # val/: ILSVRC2012_val_00000001..5.JPEG; no "c"


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """A tree with every kind of bad file and a flat val/ labelled by val_labels.txt, prepared at
    32 px by a real ``alexnet prepare`` process (one that hangs fails here, not for ever)."""
    root = tmp_path_factory.mktemp("bad") / "tree"
    write_image_tree(root / "train", {"a": 3, "b": 3, "c": 2})
    rng = np.random.default_rng(5)
    whole = root / "train" / "a" / "whole.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(whole, quality=95)
    data = whole.read_bytes()
    whole.unlink()
    (root / "train/a/cut.jpg").write_bytes(data[: len(data) // 2])
    (root / "train/a/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (root / "train/a/x.jpg").write_text("this is a text file with a .jpg name\n")
    (root / "train/a/notes.txt").write_text("not an image, and not named like one\n")
    Image.fromarray(smooth(48, 60, (220, 40, 50), 1)).convert("CMYK").save(root / "train/b/cmyk.jpg", quality=95)
    Image.fromarray(smooth(48, 72, (120, 120, 120), 2)).convert("L").save(root / "train/b/grey.jpg", quality=95)
    alpha = np.dstack([smooth(64, 48, (30, 60, 200), 3), np.tile(np.linspace(0, 255, 48).astype(np.uint8), (64, 1))])
    Image.fromarray(alpha, "RGBA").save(root / "train/b/alpha.png")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(root / "train/b/tiny.png")
    (root / "train/c/huge.png").write_bytes(png_claiming(100_000, 100_000))
    (root / "train/c/huge.jpg").write_bytes(jpeg_claiming(65_000, 65_000))
    (root / "train/c/damaged-idat.png").write_bytes(png_with_damaged_idat(smooth(40, 40, (90, 90, 90), 4)))
    names = write_flat_val(root / "val", FLAT_LABELS)
    (root / "val" / "val_labels.txt").write_text("".join(f"{n} {c}\n" for n, c in zip(names, FLAT_LABELS)))

    out = root.parent / "store"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "alexnet", "prepare", str(root), "--out", str(out), "--size", "32",
                           "--workers", "1", "--no-progress"], capture_output=True, text=True, timeout=120)  # fmt: skip
    seconds = time.perf_counter() - started
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else None
    return SimpleNamespace(root=root, out=out, done=done, seconds=seconds, manifest=manifest, names=names)


# ---------------------------------------------------------------- 1. bad input in the tree


def test_bad_files_are_skipped_counted_and_named(bad):
    assert bad.done.returncode == 0, bad.done.stderr
    assert "Traceback" not in bad.done.stderr
    skipped = {s["path"]: s for s in bad.manifest["skipped"]}
    assert set(skipped) == set(BAD_FILES)
    for path, reason in BAD_FILES.items():
        assert skipped[path]["split"] == "train" and reason in skipped[path]["reason"] and skipped[path]["reason"]
    # 8 good images, and the CMYK, grey and alpha ones kept; notes.txt is not an image by its name.
    assert bad.manifest["splits"]["train"]["count"] == 8 + 3 and bad.manifest["splits"]["val"]["count"] == 5
    assert "notes.txt" not in json.dumps(bad.manifest) and "notes.txt" not in bad.done.stderr
    assert f"skipped {len(BAD_FILES)} unreadable file(s)" in bad.done.stderr
    assert all(f"  {path}: " in bad.done.stderr for path in BAD_FILES)


def test_huge_headers_are_refused_without_decoding(bad, monkeypatch):
    with monkeypatch.context() as m:  # what the crafted files claim, read by PIL with its own guard off
        m.setattr(Image, "MAX_IMAGE_PIXELS", None)
        for name, size in (("huge.png", (100_000, 100_000)), ("huge.jpg", (65_000, 65_000))):
            with Image.open(bad.root / "train" / "c" / name) as image:
                assert image.size == size
    load_resized(str(bad.root / "train/a/img_0.jpg"), 32, 16)  # the decoders loaded before the clock starts
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name in ("huge.png", "huge.jpg"):
        started = time.perf_counter()
        image, reason = load_resized(str(bad.root / "train" / "c" / name), 32, 16)
        assert image is None and "claims" in reason and time.perf_counter() - started < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KiB: nothing like 12 GiB touched
    assert bad.seconds < 30  # the whole prepare, process start and decoding pool included


@pytest.mark.parametrize("name, mode", list(KEPT_ODD.items()))
def test_cmyk_grey_and_alpha_are_kept_as_pils_rgb(bad, name, mode):
    with Image.open(bad.root / name) as image:
        assert image.mode == mode
    expected = pil_prepared(bad.root / name, 32).astype(np.int16)
    images, labels = store_images(bad.out, "train")
    distance = np.abs(images.astype(np.int16) - expected).mean(axis=(1, 2, 3))
    best = int(np.argmin(distance))
    assert distance[best] < 2.0 and np.sort(distance)[1] > 20  # found, and nothing else is close
    assert labels[best] == 1  # class b
    r, g, b = images[best].reshape(3, -1).mean(1)
    if mode == "CMYK":
        assert r > 180 and g < 90 and b < 90  # still red
    elif mode == "L":
        assert np.array_equal(images[best][0], images[best][1]) and np.array_equal(images[best][0], images[best][2])
    else:  # alpha dropped, not composited: the colours as they are under it
        assert b > 160 and r < 90


def test_an_empty_train_class_is_a_one_line_error(tmp_path, capsys):
    write_image_tree(tmp_path / "t" / "train", {"a": 2, "b": 2})
    (tmp_path / "t" / "train" / "empty").mkdir()
    fails_with(["prepare", tmp_path / "t", "--out", tmp_path / "s"], capsys, "with no JPEG or PNG images: empty")
    assert not (tmp_path / "s").exists()


def test_a_val_class_missing_from_train_is_a_one_line_error(tmp_path, capsys):
    write_image_tree(tmp_path / "t" / "train", {"a": 2, "b": 2})
    write_image_tree(tmp_path / "t" / "val", {"a": 1, "zebra": 1})
    fails_with(["prepare", tmp_path / "t", "--out", tmp_path / "s"], capsys, "missing from")
    assert not (tmp_path / "s").exists()


def test_a_train_class_without_val_images_is_noted(bad):
    assert bad.manifest["val_missing_classes"] == ["c"]
    notes = [line for line in bad.done.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "1 of the train classes have no validation image" in notes[0]
    assert notes[0].split("measure them: ")[1].startswith("c (")


# ---------------------------------------------------------------- 4. the flat ILSVRC val layout


def test_flat_val_labels_come_from_the_labels_file(bad):
    images, labels = store_images(bad.out, "val")
    assert labels.tolist() == [CLASSES.index(c) for c in FLAT_LABELS]
    for name, image in zip(sorted(bad.names), images):  # in the sorted order of the file names
        assert np.abs(image.astype(np.int16) - pil_prepared(bad.root / "val" / name, 32)).mean() < 2.0


# ---------------------------------------------------------------- 2. an unchanged tree, a changed file


def test_an_unchanged_tree_is_up_to_date_and_a_changed_file_rewrites_its_shard_only(tree, store, tmp_path, capsys):
    src, out = tmp_path / "tree", tmp_path / "store"
    shutil.copytree(tree, src)  # copy2: sizes and modification times as they were
    shutil.copytree(store, out)
    before = snapshot(out)
    assert main(["prepare", str(src), "--out", str(out), *PREPARE]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert snapshot(out) == before

    old_images, old_labels = store_images(out, "train")
    changed = src / "train" / "b" / "img_03.jpg"
    with Image.open(changed) as image:
        w, h = image.size
    save_image(changed, np.random.default_rng(99).integers(0, 256, (h, w, 3), dtype=np.uint8))
    assert main(["prepare", str(src), "--out", str(out), *PREPARE]) == 0
    assert "1 shard(s) written, 13 kept from an earlier run" in capsys.readouterr().out
    after = snapshot(out)
    rewritten = sorted(n for n in before if n != "manifest.json" and after[n] != before[n])
    assert len(rewritten) == 2 and rewritten[0].startswith("train-") and rewritten[0].endswith("-labels.npy")
    assert rewritten[1] == rewritten[0].replace("-labels", "")

    new_images, new_labels = store_images(out, "train")
    assert np.array_equal(new_labels, old_labels) and len(open_store(out).splits["train"]) == 48
    differs = np.flatnonzero((new_images != old_images).any(axis=(1, 2, 3)))
    assert len(differs) == 1 and new_labels[differs[0]] == 1
    assert np.abs(new_images[differs[0]].astype(np.int16) - pil_prepared(changed, SIZE)).mean() < 2.0


# ---------------------------------------------------------------- 3. killed, then resumed


def test_a_killed_prepare_resumes_and_ends_as_one_uninterrupted_run(tree, store, tmp_path, capsys):
    out = tmp_path / "store"
    process = subprocess.Popen([sys.executable, "-m", "alexnet", "prepare", str(tree), "--out", str(out), *PREPARE],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    done_at_kill = None
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            try:
                done = json.loads((out / "progress.json").read_text())["done"]
            except (OSError, ValueError, KeyError):
                done = {}
            if done and not (out / "manifest.json").exists():
                os.killpg(process.pid, signal.SIGKILL)  # the prepare and its decoding process, mid-run
                done_at_kill = set(done)
                break
            time.sleep(0.002)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert done_at_kill, "the prepare finished before a shard was seen done: give it more or larger images"
    assert not (out / "manifest.json").exists() and len(done_at_kill) < 14
    kept_mtimes = {f: (out / f).stat().st_mtime_ns for f in done_at_kill}

    with pytest.raises(AlexNetError, match="is not finished"):
        open_store(out)
    fails_with(["train", "--dataset", "imagefolder", "--data-dir", out, "--out", tmp_path / "run", *TRAIN], capsys,
               "is not finished (its prepare was stopped); run the same 'alexnet prepare' again")  # fmt: skip

    assert main(["prepare", str(tree), "--out", str(out), *PREPARE]) == 0
    said = re.search(r"(\d+) shard\(s\) written, (\d+) kept from an earlier run", capsys.readouterr().out)
    assert said and int(said[2]) == len(done_at_kill) >= 1 and int(said[1]) + int(said[2]) == 14
    assert {f: (out / f).stat().st_mtime_ns for f in done_at_kill} == kept_mtimes
    assert not (out / "progress.json").exists() and not list(out.glob("*.partial"))
    for split in ("train", "val"):
        (a, la), (b, lb) = store_images(out, split), store_images(store, split)
        assert np.array_equal(a, b) and np.array_equal(la, lb)
    ours, reference = (json.loads((d / "manifest.json").read_text()) for d in (out, store))
    assert ours["splits"] == reference["splits"] and ours["fingerprint"] == reference["fingerprint"]


# ---------------------------------------------------------------- 5. a damaged store through the CLI


def damage_version(store_dir: Path) -> None:
    manifest = json.loads((store_dir / "manifest.json").read_text())
    manifest["version"] = 99
    (store_dir / "manifest.json").write_text(json.dumps(manifest))


def damage_shard(store_dir: Path) -> None:
    path = store_dir / "train-00003.npy"
    path.write_bytes(path.read_bytes()[:-1000])


def damage_labels(store_dir: Path) -> None:
    (store_dir / "val-00001-labels.npy").unlink()


def unfinished(store_dir: Path) -> None:
    for path in store_dir.iterdir():
        path.unlink()
    (store_dir / "progress.json").write_text(json.dumps({"version": 1, "done": {}, "skipped": {}}))


@pytest.mark.parametrize(
    "damage, message",
    [
        (damage_version, "has format version 99 (written by alexnet"),
        (damage_shard, "train-00003.npy is damaged or truncated"),
        (damage_labels, "val-00001-labels.npy are missing or damaged"),
        (unfinished, "is not finished (its prepare was stopped)"),
    ],
    ids=["version-99", "truncated-shard", "labels-deleted", "only-progress"],
)
def test_a_damaged_store_is_one_line_and_left_as_it_is(store, tmp_path, capsys, damage, message):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    damage(copy)
    before = snapshot(copy)
    fails_with(["train", "--dataset", "imagefolder", "--data-dir", copy, "--out", tmp_path / "run", *TRAIN], capsys,
               message)  # fmt: skip
    assert snapshot(copy) == before and not (tmp_path / "run").exists()


def test_a_store_smaller_than_the_model_input_names_both_sizes(bad, tmp_path, capsys):
    before = snapshot(bad.out)
    fails_with(["train", "--dataset", "imagefolder", "--data-dir", bad.out, "--out", tmp_path / "run", *TRAIN],
               capsys, "holds 32 px images, smaller than --image-size 63: prepare it again with --size 256")  # fmt: skip
    assert snapshot(bad.out) == before


# ---------------------------------------------------------------- 6. the loader


def loaders(store, *, batch_size=8, eval_batch_size=None, image_size=56, seed=0, rank=0, world_size=1, tta=None,
            **cfg):  # fmt: skip
    config = DataConfig(dataset="imagefolder", data_dir=str(store), image_size=image_size, workers=0, **cfg)
    return build_loaders(config, device="cpu", batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
                         rank=rank, world_size=world_size, tta=tta)  # fmt: skip


def positions_of(loader, epoch: int) -> list[np.ndarray]:
    """The split positions of each batch the loader yields in ``epoch``."""
    return [loader.positions[idx.numpy()] for idx in loader.sampler.batches(epoch)]


@pytest.mark.parametrize("augment", [dict(flip=False, pca_color=0.0), dict(flip=True, pca_color=0.1)], ids=["plain", "flip-pca"])
@pytest.mark.parametrize("crop", [dict(train_crop="paper"), dict(train_crop="random-resized"), dict(crop=False)],
                         ids=["paper", "random-resized", "none"])  # fmt: skip
def test_train_batches_have_the_model_shape(store, crop, augment):
    train, val, info = loaders(store, **crop, **augment)
    assert isinstance(train, StoreLoader) and isinstance(val, StoreLoader)
    assert (info.train_size, info.val_size, info.num_classes, len(train), len(val)) == (48, 6, 3, 6, 1)
    batches = list(train)
    assert len(batches) == 6
    for x, y in batches:
        assert x.shape == (8, 3, 56, 56) and x.dtype == torch.float32 and x.device.type == "cpu"
        assert y.shape == (8,) and y.dtype == torch.int64 and torch.isfinite(x).all()
    labels = np.concatenate([open_store(store).splits["train"].labels[p] for p in positions_of(train, 0)])
    assert torch.cat([y for _, y in batches]).tolist() == labels.tolist()


def find_patch(image: np.ndarray, patch: np.ndarray) -> list[tuple[int, int, bool]]:
    """Every (top, left, mirrored) at which ``patch`` is an exact window of ``image``."""
    s = patch.shape[-1]
    found = []
    for t in range(image.shape[1] - s + 1):
        for left in range(image.shape[2] - s + 1):
            window = image[:, t : t + s, left : left + s]
            found += [(t, left, m) for m, w in ((False, window), (True, window[:, :, ::-1])) if np.array_equal(w, patch)]
    return found


@pytest.mark.parametrize("flip", [False, True])
def test_the_paper_crop_is_a_window_of_the_stored_image(store, flip):
    train, _, _ = loaders(store, train_crop="paper", flip=flip, pca_color=0.0, normalize=False, seed=4)
    where, mirrored = [], 0
    for (x, _), positions in zip(train, positions_of(train, 0)):
        for image, source, p in zip(x, stored(store, "train", positions), positions):
            found = find_patch(source, np.rint(image.numpy() * 255).astype(np.uint8))
            assert found, f"sample at position {p} is no 56 px window of its image"
            where.append(found[0][:2])
            mirrored += found[0][2]
    assert len(set(where)) > 10  # the windows move: 81 places to choose from
    assert (0 < mirrored < 48) if flip else mirrored == 0


def stored(store, split_name: str, positions) -> np.ndarray:
    split = open_store(store).splits[split_name]
    return np.stack([split.images[s][p - split.offsets[s]] for p, s in zip(positions, split.shard_of(np.asarray(positions)))])


def test_no_crop_trains_on_the_central_patch(store):
    train, _, _ = loaders(store, crop=False, flip=False, pca_color=0.0, normalize=False)
    (x, _), positions = next(iter(train)), positions_of(train, 0)[0]
    expected = stored(store, "train", positions)[:, :, 4:60, 4:60]  # 64 px is the eval resize of 56: no resampling
    assert np.array_equal(np.rint(x.numpy() * 255).astype(np.uint8), expected)


def test_pca_noise_adds_one_colour_per_image(store):
    plain, _, _ = loaders(store, train_crop="paper", flip=True, pca_color=0.0, seed=6)
    noisy, _, _ = loaders(store, train_crop="paper", flip=True, pca_color=0.1, seed=6)
    (a, _), (b, _) = next(iter(plain)), next(iter(noisy))
    offset = b - a  # the same crops and flips: only the colour noise differs
    per_image = offset.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(offset, per_image.expand_as(offset), atol=1e-4, rtol=0)
    assert per_image.abs().amax(dim=1).min() > 1e-3  # every image got some


@pytest.mark.parametrize("crop", ["paper", "random-resized"])
def test_the_same_seed_gives_the_same_batches_and_another_epoch_others(store, crop):
    runs = []
    for _ in range(2):
        train, _, _ = loaders(store, train_crop=crop, seed=7)
        train.set_epoch(1)
        runs.append(list(train))
    for (x1, y1), (x2, y2) in zip(*runs):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    train.set_epoch(2)
    other = list(train)
    assert not torch.equal(torch.cat([y for _, y in other]), torch.cat([y for _, y in runs[0]]))
    assert all(not torch.equal(a, b) for (a, _), (b, _) in zip(other, runs[0]))


def test_random_resized_boxes_stay_inside_with_the_allowed_area_and_ratio():
    gen = torch.Generator().manual_seed(0)
    boxes = random_resized_boxes(4000, 256, 256, (0.08, 1.0), gen).numpy()
    top, left, h, w = boxes.T
    assert (boxes == np.round(boxes)).all() and (h >= 1).all() and (w >= 1).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 256).all() and (left + w <= 256).all()
    area, ratio = h * w / 256**2, w / h
    # Rounding each side to whole pixels moves the figures by under 2% at these sizes.
    assert area.min() >= 0.08 * 0.98 and area.max() <= 1.0 and area.min() < 0.1 and area.max() > 0.9
    assert ratio.min() >= 0.75 * 0.98 and ratio.max() <= 4 / 3 * 1.02 and ratio.min() < 0.78 and ratio.max() > 1.28
    # Drawn as the folder loader's RandomResizedCrop draws them: the same distribution.
    rng = np.random.default_rng(0)
    reference = np.array([random_resized_crop_box(rng, 256, 256, (0.08, 1.0)) for _ in range(4000)])
    ref_area = reference[:, 2] * reference[:, 3] / 256**2
    assert abs(np.mean(area) - np.mean(ref_area)) < 0.02 and abs(np.median(area) - np.median(ref_area)) < 0.03
    # Top and left spread over every place the box fits.
    slack = (256 - h) / 2
    assert abs(np.mean(top - slack) / np.mean(slack)) < 0.1 and abs(np.mean(left - slack) / np.mean(slack)) < 0.1


def test_random_resized_boxes_that_never_fit_fall_back_as_torchvision_does():
    gen = torch.Generator().manual_seed(1)
    full = random_resized_boxes(50, 64, 64, (1.0, 1.0), gen)
    assert (full == torch.tensor([0.0, 0.0, 64.0, 64.0], dtype=torch.float64)).all()
    wide = random_resized_boxes(5, 32, 128, (1.0, 1.0), gen)  # no 4096 px box of ratio <= 4/3 fits 32 px high
    assert (wide == torch.tensor([0.0, 42.0, 32.0, 43.0], dtype=torch.float64)).all()
    assert random_resized_crop_box(np.random.default_rng(0), 32, 128, (1.0, 1.0)) == (0, 42, 32, 43)


def test_resized_crop_of_a_whole_pixel_box_is_that_patch():
    x = torch.rand(3, 3, 64, 64, dtype=torch.float64) * 255
    boxes = torch.tensor([[3, 5, 56, 56], [0, 0, 64, 64], [8, 0, 56, 56]], dtype=torch.float64)
    out = resized_crop(x.float(), boxes, 56)
    torch.testing.assert_close(out[0], x[0, :, 3:59, 5:61].float(), atol=1e-3, rtol=0)
    torch.testing.assert_close(out[2], x[2, :, 8:64, 0:56].float(), atol=1e-3, rtol=0)
    whole = resized_crop(x.float(), boxes[1:2].expand(3, 4), 64)
    torch.testing.assert_close(whole, x.float(), atol=1e-3, rtol=0)


def test_the_cpu_crops_agree_with_the_batched_gpu_path(store):
    """On the CPU the crops are cut per sample (uint8 resize); on a GPU by one gather or
    grid_sample: the same boxes and flips (drawn first, documented order) give the same patch."""
    x = torch.from_numpy(stored(store, "train", range(16)))
    for crop in ("paper", "random-resized"):
        tf = StoreTrainTransform(crop=crop, image_size=56, scale_min=0.35, flip=True, eval_resize=64, in_channels=3)
        cpu = tf(x, torch.Generator().manual_seed(3))
        gen = torch.Generator().manual_seed(3)
        flips = torch.rand(16, generator=gen) < 0.5
        if crop == "paper":
            top, left = torch.randint(0, 9, (16,), generator=gen), torch.randint(0, 9, (16,), generator=gen)
            batched = crop_at(x, top, left, 56).float()
        else:
            batched = resized_crop(x.float(), random_resized_boxes(16, 64, 64, (0.35, 1.0), gen), 56)
        batched = torch.where(flips[:, None, None, None], batched.flip(-1), batched) / 255
        if crop == "paper":
            torch.testing.assert_close(cpu, batched, atol=1e-6, rtol=0)
        else:  # the uint8 resize rounds, and antialiases where it shrinks; grid_sample does neither
            assert (cpu - batched).abs().mean() < 2 / 255


def test_ten_crops_are_the_corners_the_centre_and_their_mirrors(store):
    _, ten, _ = loaders(store, tta="10crop", normalize=False, eval_batch_size=6)
    _, plain, _ = loaders(store, normalize=False, eval_batch_size=6)
    (x10, y10), = list(ten)
    (x, y), = list(plain)
    assert x10.shape == (6, 10, 3, 56, 56) and torch.equal(y10, y)
    torch.testing.assert_close(x10[:, 4], x, atol=1e-6, rtol=0)  # the centre crop is the plain evaluation
    torch.testing.assert_close(x10[:, 5:], x10[:, :5].flip(-1), atol=0, rtol=0)
    images = torch.from_numpy(stored(store, "val", range(6))).float() / 255  # 64 px: the eval resize of 56
    for k, (t, left) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]):
        torch.testing.assert_close(x10[:, k], images[:, :, t : t + 56, left : left + 56], atol=1e-6, rtol=0)


@pytest.mark.parametrize("image_size, mean_error, max_error", [(56, 0, 0), (48, 1.5, 10)])
def test_the_store_evaluates_an_image_as_the_folder_loader_does(tree, store, image_size, mean_error, max_error,
                                                                monkeypatch):  # fmt: skip
    """Both take the shorter side to the eval resize and the centre crop: at 56 px the resize is
    the store's 64 (the same pixels), at 48 px it is 55 (the store's 64 px image resized again:
    0.5 and 4 of 255 measured, mean and largest)."""
    monkeypatch.chdir(tree.parent)
    _, from_store, _ = loaders(store, image_size=image_size, eval_batch_size=6)
    _, from_folder, info = loaders(tree, image_size=image_size, eval_batch_size=6)
    assert info.preprocess["resize"] == round(image_size / 0.875)
    (a, ya), = list(from_store)
    (b, yb), = list(from_folder)
    assert torch.equal(ya, yb) and a.shape == b.shape == (6, 3, image_size, image_size)
    std = torch.tensor(info.std)[:, None, None]
    error = ((a - b) * std).abs() * 255  # in pixel levels
    assert error.mean() <= mean_error + 1e-4 and error.max() <= max_error + 1e-4


def test_train_then_ten_crop_eval_end_to_end(store, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(store), "--out", str(run), *TRAIN,
                 "--train-crop", "paper"]) == 0, capsys.readouterr().err  # fmt: skip
    checkpoint = run / "checkpoints" / "last.pt"
    state = read_checkpoint(checkpoint)
    assert state["step"] == 2 and state["config"]["train_crop"] == "paper"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), "--tta", "10crop", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 6 and 0.0 <= result["top1"] <= 1.0 and math.isfinite(result["loss"])


# ---------------------------------------------------------------- 7. shards of its own per rank


def test_each_rank_reads_its_own_shards(store):
    split = open_store(store).splits["train"]
    seen = {}
    for rank in (0, 1):
        train, _, _ = loaders(store, batch_size=4, seed=3, rank=rank, world_size=2)
        assert isinstance(train.sampler, ShardSampler) and len(train) == 6  # 6 shards of 4 each
        for epoch in (0, 1):
            positions = np.concatenate(positions_of(train, epoch))
            assert len(set(positions.tolist())) == 24
            assert (split.shard_of(positions) % 2 == rank).all()
            seen[rank, epoch] = positions
        train.set_epoch(1)
        assert torch.cat([y for _, y in train]).tolist() == split.labels[seen[rank, 1]].tolist()
    for epoch in (0, 1):
        assert not set(seen[0, epoch].tolist()) & set(seen[1, epoch].tolist())
        assert sorted(np.concatenate([seen[0, epoch], seen[1, epoch]]).tolist()) == list(range(48))
    assert not np.array_equal(seen[0, 0], seen[0, 1])  # reshuffled each epoch


def test_too_few_or_uneven_shards_fall_back_to_the_epoch_sampler(store):
    train, _, _ = loaders(store, batch_size=2, rank=3, world_size=16)  # 12 shards for 16 ranks
    assert type(train.sampler) is EpochSampler
    split = open_store(store).splits["train"]
    tf = lambda x, gen: x  # noqa: E731
    # Shards 0 and 2 only: both belong to rank 0 of 2, rank 1 would have none.
    even_only = np.concatenate([np.arange(0, 4), np.arange(8, 12)])
    # 4 images of shard 0 and 1 of shard 1: rank 1 would take 1 image an epoch, and so rank 0.
    lopsided = np.arange(0, 5)
    for positions in (even_only, lopsided):
        got = []
        for rank in (0, 1):
            loader = StoreLoader(split, positions, batch_size=1, train=True, transform=tf, rank=rank, world_size=2)
            assert type(loader.sampler) is EpochSampler
            got += positions[loader.sampler.indices(0).numpy()].tolist()
        assert set(got) == set(positions.tolist())  # every image in every epoch


# ---------------------------------------------------------------- 8. --subset and --val-split


def test_subset_keeps_every_class(store):
    train, val, info = loaders(store, subset=6, batch_size=6)
    assert (info.train_size, info.val_size, info.test_size) == (6, 6, 6)
    assert sorted(torch.cat([y for _, y in train]).tolist()) == [0, 0, 1, 1, 2, 2]
    assert sorted(torch.cat([y for _, y in val]).tolist()) == [0, 0, 1, 1, 2, 2]


def test_val_split_keeps_training_images_apart_by_class(store):
    train, val, info = loaders(store, val_split=6, batch_size=6)
    assert (info.train_size, info.val_size, info.val_split, info.test_size) == (42, 6, 6, 6)
    split = open_store(store).splits["train"]
    assert len(val.split) == len(train.split) == 48  # both read the store's train split
    assert sorted(split.labels[val.positions].tolist()) == [0, 0, 1, 1, 2, 2]
    assert not set(val.positions.tolist()) & set(train.positions.tolist())
    assert sorted([*val.positions.tolist(), *train.positions.tolist()]) == list(range(48))
    assert sorted(torch.cat([y for _, y in val]).tolist()) == [0, 0, 1, 1, 2, 2]
