"""A prepared image store: an ImageNet-style tree decoded once into pre-resized uint8 shards.

Decoding a JPEG and resizing it costs a few milliseconds of a core per image, every epoch;
reading a prepared image is a memory copy. ``prepare_store`` does the paper's preprocessing
once (Krizhevsky et al. 2012, section 2: shorter side to 256, the central 256x256 patch) and
writes the result where every later epoch, run and rank reads it:

    STORE/
      manifest.json             written last: format, size, classes, shards, skipped files
      train-00000.npy ...       uint8 (n, 3, S, S), NumPy's .npy format, memory-mapped to read
      train-00000-labels.npy    int64 (n,)
      val-00000.npy ...
      progress.json             while preparing: the shards done so far, for a resumed run

Training images are ordered by a hash of their path, so every shard mixes the classes and a
rank can read shards of its own (``StoreSampler``); validation keeps the sorted order.

Safety: each shard is written under a temporary name, flushed, then renamed, and recorded
in progress.json; the manifest is removed before the first write and written only when
every shard is in place, so a reader never sees a half-written store, and a killed prepare
resumes at the first shard it had not finished. A shard is reused when its source files
(path, size, modification time), the size and the format are unchanged, so a second run
on an unchanged tree does nothing. Unreadable files are skipped, named and counted in the
manifest, never dropped silently; so are train classes with no image in val (noted, not refused).

Raw uint8 rather than re-encoded JPEG: reading a raw image is a copy, decoding a 256 px
JPEG is not (benchmarks/decode.py measures both); a store at 256 px takes 192 KiB an image.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AlexNetError
from .imagefolder import ImageList, scan_train, scan_val

FORMAT = "alexnet-image-store"
VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
DEFAULT_SIZE = 256
DEFAULT_SHARD_IMAGES = 1024
# Below this a photo carries too little to be resized to the store's size honestly.
DEFAULT_MIN_SIDE = 16
SPLITS = ("train", "val")


# ---------------------------------------------------------------- reading a store


@dataclass
class Shard:
    file: str
    count: int
    fingerprint: str


@dataclass
class StoreSplit:
    """One split of a store: its shards memory-mapped, their labels concatenated."""

    images: list[np.ndarray]  # uint8 (n_i, 3, S, S) each, memory-mapped
    labels: np.ndarray  # int64 (N,)
    offsets: np.ndarray  # int64 (len(images) + 1,): where each shard starts

    def __len__(self) -> int:
        return len(self.labels)

    def shard_of(self, index: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, index, side="right") - 1


@dataclass
class ImageStore:
    root: Path
    size: int
    classes: list[str]
    splits: dict[str, StoreSplit]
    skipped: list[dict] = field(default_factory=list)
    source: str = ""


def is_store(path: str | Path | None) -> bool:
    """Whether ``path`` is a store directory (complete or not)."""
    if path is None:
        return False
    p = Path(path).expanduser()
    return (p / MANIFEST).is_file() or (p / PROGRESS).is_file()


def open_store(path: str | Path) -> ImageStore:
    """The store at ``path``, every shard checked against the manifest; an AlexNetError for an
    unfinished store, one from another format version, and a missing or truncated shard."""
    root = Path(path).expanduser()
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        if (root / PROGRESS).is_file():
            raise AlexNetError(f"the store {root} is not finished (its prepare was stopped); run the same "
                               "'alexnet prepare' again to complete it")  # fmt: skip
        raise AlexNetError(f"{root} is not an image store (no {MANIFEST}); make one with 'alexnet prepare'")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise AlexNetError(f"cannot read {manifest_path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise AlexNetError(f"{manifest_path} is not an alexnet image store manifest")
    if manifest.get("version") != VERSION:
        raise AlexNetError(f"the store {root} has format version {manifest.get('version')} (written by alexnet "
                           f"{manifest.get('written_by', '?')}); this alexnet reads version {VERSION}: prepare it again")  # fmt: skip
    size = int(manifest["size"])
    splits = {}
    for name, entry in manifest["splits"].items():
        shards = [Shard(**s) for s in entry["shards"]]
        images = [_open_shard(root, s, size) for s in shards]
        labels = [_open_labels(root, s) for s in shards]
        counts = [len(x) for x in images]
        splits[name] = StoreSplit(
            images=images,
            labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        )
    return ImageStore(root, size, list(manifest["classes"]), splits, manifest.get("skipped", []),
                      manifest.get("source", ""))  # fmt: skip


def _open_shard(root: Path, shard: Shard, size: int) -> np.ndarray:
    path = root / shard.file
    expected = (shard.count, 3, size, size)
    try:
        array = np.load(path, mmap_mode="r" if shard.count else None)
    except FileNotFoundError:
        raise AlexNetError(f"the store's shard {path} is missing: run 'alexnet prepare' again to rewrite it") from None
    except (OSError, ValueError) as e:  # numpy: "mmap length is greater than file size" for a cut file
        raise AlexNetError(f"the store's shard {path} is damaged or truncated ({e}): run 'alexnet prepare' "
                           "again to rewrite it") from None  # fmt: skip
    if array.dtype != np.uint8 or array.shape != expected:
        raise AlexNetError(f"the store's shard {path} holds {array.dtype} {array.shape}, the manifest says uint8 "
                           f"{expected}: run 'alexnet prepare' again")  # fmt: skip
    return array


def _open_labels(root: Path, shard: Shard) -> np.ndarray:
    path = root / _labels_name(shard.file)
    try:
        labels = np.load(path)
    except (OSError, ValueError) as e:
        raise AlexNetError(f"the store's labels {path} are missing or damaged ({e}): run 'alexnet prepare' again") from None
    if labels.shape != (shard.count,):
        raise AlexNetError(f"the store's labels {path} hold {labels.shape[0]} entries for {shard.count} images")
    return labels.astype(np.int64)


def _labels_name(shard_file: str) -> str:
    return shard_file.removesuffix(".npy") + "-labels.npy"


# ---------------------------------------------------------------- decoding one file, in a worker


def load_resized(path: str, size: int, min_side: int) -> tuple[np.ndarray | None, str]:
    """(uint8 (3, size, size), "") for a readable image: the shorter side resized to ``size``
    (antialiased bilinear), then the central square; (None, reason) for one to skip."""
    from .imagefolder import center_crop, decode_rgb, resize_shorter

    try:
        image = decode_rgb(path)
    except (OSError, RuntimeError, ValueError) as e:
        return None, " ".join(str(e).split())[:160] or type(e).__name__
    h, w = image.shape[1:]
    if min(h, w) < min_side:
        return None, f"{w}x{h} px, smaller than --min-side {min_side}"
    return center_crop(resize_shorter(image, size), size).contiguous().numpy(), ""


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one decode per process: the processes are the parallelism
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool


def _decode_job(job: tuple[str, int, int]):
    return load_resized(*job)


# ---------------------------------------------------------------- preparing a store


@dataclass
class PrepareReport:
    written: int  # shards written by this run
    reused: int  # shards kept from an earlier run
    images: dict[str, int]  # split -> images in the store
    skipped: list[dict]  # {"split", "path", "reason"} for every file left out
    up_to_date: bool  # nothing to do: the store matched the tree
    val_missing: list[str] = field(default_factory=list)  # train classes with no image in the store's val split


def _file_entry(root: Path, path: str) -> str:
    st = os.stat(path)
    return f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}"


def _fingerprint(parts: list[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()[:32]


def plan_shards(images: ImageList, split: str, shard_images: int, root: str | Path) -> list[ImageList]:
    """The split's files cut into shards; training files first ordered by a hash of their path
    in the tree ``root`` so that each shard mixes the classes, stably when files are added or
    removed and wherever the tree is (a moved or copied tree keeps its shards)."""
    order = range(len(images))
    if split == "train":
        key = lambda i: os.path.relpath(images.paths[i], root).encode("utf-8", "surrogateescape")  # noqa: E731
        order = sorted(order, key=lambda i: hashlib.blake2b(key(i), digest_size=8).digest())
    order = list(order)
    return [images.take(order[i : i + shard_images]) for i in range(0, len(order), shard_images)]


def classes_without(classes: list[str], labels) -> list[str]:
    """The classes none of ``labels`` (arrays of class indices) names, in class order."""
    present = {int(v) for array in labels for v in np.unique(array)}
    return [c for i, c in enumerate(classes) if i not in present]


def _progress(items, bar):
    for item in items:
        bar.update(1)
        yield item


def _write_atomic(path: Path, writer) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        writer(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def prepare_store(
    src: str | Path,
    out: str | Path,
    *,
    size: int = DEFAULT_SIZE,
    shard_images: int = DEFAULT_SHARD_IMAGES,
    workers: int | None = None,
    min_side: int = DEFAULT_MIN_SIDE,
    train_dir: str | None = None,
    val_dir: str | None = None,
    val_labels: str | None = None,
    progress: bool = True,
) -> PrepareReport:
    """Write (or bring up to date) the store of the tree ``src`` at ``out``; see the module doc."""
    from tqdm.auto import tqdm

    from .. import __version__

    if size < 8:
        raise AlexNetError(f"--size must be at least 8 px, got {size}")
    if shard_images < 1:
        raise AlexNetError(f"--shard-images must be at least 1, got {shard_images}")
    src = Path(src).expanduser().absolute()
    out = Path(out).expanduser().absolute()
    train = Path(train_dir).expanduser().absolute() if train_dir else src / "train"
    val = Path(val_dir).expanduser().absolute() if val_dir else src / "val"
    if not train.is_dir():
        raise AlexNetError(f"{train} does not exist: give a tree holding train/<class>/*.jpg (and val/)")
    if out in (src, train, val) or train in out.parents or val in out.parents:
        raise AlexNetError(f"the store {out} would be inside the tree's images; give another --out")
    classes, train_images = scan_train(train)
    splits = {"train": train_images}
    if val.is_dir():
        splits["val"] = scan_val(val, classes, train, val_labels)
    elif val_dir:
        raise AlexNetError(f"validation directory {val} does not exist")

    plans = {name: plan_shards(images, name, shard_images, src) for name, images in splits.items()}
    # One fingerprint per shard: its files, the size, the store format, the labels.
    keyed: dict[str, list[tuple[str, ImageList, str]]] = {}
    for name, shards in plans.items():
        keyed[name] = []
        for i, shard in enumerate(shards):
            parts = [f"{FORMAT} {VERSION} size={size} min_side={min_side}", *(
                f"{_file_entry(src, p)}\0{t}" for p, t in zip(shard.paths, shard.targets))]  # fmt: skip
            keyed[name].append((f"{name}-{i:05d}.npy", shard, _fingerprint(parts)))
    tree_fingerprint = _fingerprint([fp for entries in keyed.values() for _, _, fp in entries] + classes)

    out.mkdir(parents=True, exist_ok=True)
    manifest_path, progress_path = out / MANIFEST, out / PROGRESS
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("fingerprint") == tree_fingerprint and old.get("version") == VERSION:
            try:
                current = open_store(out)
            except AlexNetError:
                pass  # a shard was damaged since: rewrite what is needed below
            else:
                counts = {n: e["count"] for n, e in old["splits"].items()}
                missing = classes_without(classes, [current.splits["val"].labels]) if "val" in current.splits else []
                return PrepareReport(0, sum(len(e) for e in keyed.values()), counts, old.get("skipped", []), True,
                                     missing)  # fmt: skip
        done = {s["file"]: s for e in old.get("splits", {}).values() for s in e["shards"]}
        done_skipped = {s["file"]: s.get("skipped", []) for s in old.get("shard_skips", [])}
    else:
        done, done_skipped = {}, {}
    if progress_path.is_file():
        try:
            state = json.loads(progress_path.read_text())
            if state.get("version") == VERSION:
                done.update(state["done"])
                done_skipped.update(state.get("skipped", {}))
        except (OSError, ValueError, KeyError):
            pass
    def still_good(file: str, fp: str) -> bool:
        entry = done.get(file)
        if entry is None or entry.get("fingerprint") != fp:
            return False
        try:
            array = np.load(out / file, mmap_mode="r" if entry["count"] else None)
            labels = np.load(out / _labels_name(file))
        except (OSError, ValueError):
            return False
        return array.shape == (entry["count"], 3, size, size) and labels.shape == (entry["count"],)

    state = {"version": VERSION, "done": {}, "skipped": {}}
    todo = [(name, file, shard, fp) for name, entries in keyed.items() for file, shard, fp in entries]
    for _, file, _, fp in todo:
        if still_good(file, fp):
            state["done"][file] = done[file]
            state["skipped"][file] = done_skipped.get(file, [])
    reused = len(state["done"])
    # From here on the directory is being changed: the progress record first (it marks the
    # directory as an unfinished store), then no manifest until every shard is in place.
    _write_json(progress_path, state)
    manifest_path.unlink(missing_ok=True)
    pending = [t for t in todo if t[1] not in state["done"]]

    workers = workers or os.cpu_count() or 1
    total = sum(len(shard) for _, _, shard, _ in pending)
    bar = tqdm(total=total, desc="prepare", unit="img", disable=not progress or total == 0, dynamic_ncols=True)
    # An executor, not multiprocessing.Pool: a decoder that crashes its process (a segfault on a
    # damaged file) breaks the executor, which raises; a Pool would wait for that file forever.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init) if pending else None  # fmt: skip
    try:
        for name, file, shard, fp in pending:
            jobs = [(p, size, min_side) for p in shard.paths]
            kept, labels, skipped = [], [], []
            try:
                results = list(_progress(pool.map(_decode_job, jobs, chunksize=4), bar))
            except BrokenProcessPool:
                raise AlexNetError(f"a decoding process crashed on one of the {len(jobs)} files of shard {file} "
                                   f"({os.path.relpath(shard.paths[0], src)} ... {os.path.relpath(shard.paths[-1], src)}); "
                                   f"the {len(state['done'])} shards finished are kept: remove or repair the file, or "
                                   "prepare with --shard-images 1 --workers 1 to find it") from None  # fmt: skip
            for (image, reason), path, target in zip(results, shard.paths, shard.targets):
                if image is None:
                    skipped.append({"split": name, "path": os.path.relpath(path, src), "reason": reason})
                    continue
                kept.append(image)
                labels.append(target)
            array = np.stack(kept) if kept else np.zeros((0, 3, size, size), np.uint8)
            del results, kept
            _write_atomic(out / _labels_name(file), lambda f: np.save(f, np.asarray(labels, dtype=np.int64)))
            _write_atomic(out / file, lambda f: np.save(f, array))
            state["done"][file] = {"file": file, "count": len(labels), "fingerprint": fp}
            state["skipped"][file] = skipped
            _write_json(progress_path, state)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    # Every shard is in place: remove what no longer belongs, then the manifest, last.
    wanted = {f for entries in keyed.values() for f, _, _ in entries}
    for stale in out.glob("*.npy"):
        if stale.name not in wanted and stale.name.removesuffix("-labels.npy") + ".npy" not in wanted:
            stale.unlink()
    for partial in out.glob("*.partial"):
        partial.unlink()
    skipped_all = [s for name in keyed for f, _, _ in keyed[name] for s in state["skipped"][f]]
    # A train class no val image stands for (none in val/, or all of them unreadable): said, not silent.
    val_missing = classes_without(classes, [np.load(out / _labels_name(f)) for f, _, _ in keyed["val"]]) \
        if "val" in keyed else []  # fmt: skip
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "written_by": __version__,
        "size": size,
        "layout": "uint8 (n, 3, size, size) per shard, RGB",
        "preprocessing": f"decoded as RGB; shorter side resized to {size} (bilinear, antialiased); the central "
                         f"{size}x{size} square; images under {min_side} px on a side skipped",
        "source": str(src),
        "classes": classes,
        "fingerprint": tree_fingerprint,
        "splits": {name: {"count": sum(state["done"][f]["count"] for f, _, _ in entries),
                          "shards": [state["done"][f] for f, _, _ in entries]} for name, entries in keyed.items()},
        "shard_skips": [{"file": f, "skipped": state["skipped"][f]} for name in keyed for f, _, _ in keyed[name]],
        "skipped": skipped_all,
        "val_missing_classes": val_missing,
    }  # fmt: skip
    _write_json(manifest_path, manifest)
    progress_path.unlink(missing_ok=True)
    counts = {name: manifest["splits"][name]["count"] for name in keyed}
    return PrepareReport(len(pending), reused, counts, skipped_all, False, val_missing)
