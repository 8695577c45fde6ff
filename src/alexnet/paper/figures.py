"""The paper's Figure 3 (first-layer kernels) and Figure 4 (feature-space neighbors) of a checkpoint.

One function per figure, shared by ``alexnet filters``, ``alexnet neighbors``, the HTML report
and the notebook: each takes a checkpoint (its path and the dictionary read from it) and
writes a PNG, returning what it found so the caller can print or caption it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import plots
from ..config import TrainConfig
from ..data import build_preprocess, open_image
from ..data.eval_split import open_eval_split
from ..engine.checkpoint import build_model
from ..engine.runtime import select_device
from ..errors import AlexNetError
from ..run_dir import RunDirectory
from .analysis import bank_features, cached_features, feature_scale, filter_blocks, first_layer_kernels
from .analysis import neighbors, query_features


def draw_filters(ckpt: dict, checkpoint: str | os.PathLike, out: str | os.PathLike, *, columns: int = 16) -> str:
    """conv1's kernels as a grid in ``out`` (two labelled blocks for a grouped model); returns a one-line description."""
    if columns < 1:
        raise AlexNetError(f"--columns must be positive, got {columns}")
    model = build_model(ckpt, checkpoint)
    weight, groups = first_layer_kernels(model)
    blocks = filter_blocks(weight, groups, ncols=columns)
    n, c, k = weight.shape[0], weight.shape[1], weight.shape[-1]
    per = n // groups
    if groups == 1:
        titles = [f"{n} kernels"]
    else:
        titles = [f"group {g + 1}: kernels {g * per}-{(g + 1) * per - 1}, which feed conv2's group {g + 1}"
                  for g in range(groups)]  # fmt: skip
    colour = {1: "grey", 3: "RGB"}.get(c, f"mean of {c} channels")
    name = ckpt["model_args"]["name"]
    plots.plot_filters(blocks, titles, out,
                       suptitle=f"{name}: conv1, {n} kernels of {k}x{k}x{c} ({colour}), each scaled to its own range")  # fmt: skip
    return f"{n} first-layer kernels of {name} ({groups} block{'s' if groups > 1 else ''})"


@dataclass
class Neighbors:
    """What ``draw_neighbors`` found: per query, its caption and its (split index, class, distance) hits."""

    queries: list[str]
    hits: list[list[tuple[int, str, float]]]
    digits: int  # decimals that show four significant digits of the features' scale

    def lines(self) -> list[str]:
        return [q.replace("\n", " ") + ": " + ", ".join(f"train #{j} {c} ({d:.{self.digits}f})" for j, c, d in h)
                for q, h in zip(self.queries, self.hits)]  # fmt: skip


def draw_neighbors(
    ckpt: dict,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    index: Sequence[int] | None = None,
    images: Sequence[str] | None = None,
    k: int = 6,
    split: str = "val",
    data_dir: str | None = None,
    subset: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> Neighbors:
    """For query images (``index`` into ``split``, or image files), the ``k`` training images
    nearest in the last hidden layer, drawn as one row per query in ``out``.

    The training split's features are computed once and cached (float16) in <run>/cache/.
    """
    if k < 1:
        raise AlexNetError(f"--k must be at least 1, got {k}")
    if batch_size < 1:
        raise AlexNetError(f"--batch-size must be positive, got {batch_size}")
    if (index is None) == (images is None):
        raise AlexNetError("give query images either by index or as files")
    for path in images or ():
        if not Path(path).is_file():
            raise AlexNetError(f"{path}: no such file")
    model = build_model(ckpt, checkpoint).eval()
    spec = ckpt.get("preprocess")
    if not isinstance(spec, dict):
        raise AlexNetError(f"{checkpoint} holds no preprocessing; it is not a training checkpoint of this package")
    cfg = TrainConfig.from_dict(ckpt.get("config") or {})
    if cfg.data_dir and not Path(cfg.data_dir).expanduser().is_dir():
        cfg.data_dir = None  # the training machine's folder is not here: search the usual places
    if data_dir is not None:
        cfg.data_dir = data_dir
    if subset is not None:
        cfg.subset = subset
    cfg.in_channels = ckpt["model_args"]["in_channels"]
    names = list(ckpt.get("class_names") or [])
    names += [str(i) for i in range(len(names), ckpt["model_args"]["num_classes"])]
    dev = select_device(device)
    model.to(dev)

    dcfg = cfg.data_config()
    train = open_eval_split(dcfg, "train", spec)
    queried = train if split == "train" else open_eval_split(dcfg, "val", spec)
    for i in index or ():
        queried.check_index(i)
    bank, _ = cached_features(model, checkpoint, train, RunDirectory.of_checkpoint(checkpoint).cache_dir,
                              batch_size=batch_size, device=dev, log=log)  # fmt: skip
    if index is not None:
        # (picture, caption) per query; training images take their features from the bank.
        queries = [(queried.picture(i), f"{queried.name} #{i}\n{names[int(queried.labels[i])]}") for i in index]
        feats = bank_features(bank, index) if queried is train else None
        if feats is None:
            feats = query_features(model, queried.images(list(index)), dev)
    else:
        preprocess = build_preprocess(spec)
        inputs = [preprocess(open_image(path)) for path in images]
        queries = [(x, Path(path).name) for x, path in zip(inputs, images)]
        feats = query_features(model, torch.stack(inputs), dev)

    dist, found = neighbors(feats, bank, k)
    scale = feature_scale(bank)
    digits = max(0, 3 - math.floor(math.log10(scale))) if scale > 0 else 4
    rows, hits = [], []
    for (picture, caption), ds, js in zip(queries, dist.tolist(), found.tolist()):
        row = [(j, names[int(train.labels[j])], d) for d, j in zip(ds, js)]
        hits.append(row)
        rows.append((picture, caption, [(train.picture(j), f"train #{j}\n{c}\nd = {d:.{digits}f}") for j, c, d in row]))
    plots.plot_neighbors(rows, out, mean=spec["mean"], std=spec["std"],
                         suptitle=f"{ckpt['model_args']['name']}: nearest training images\n"
                                  "in the last hidden layer (Euclidean distance d)")  # fmt: skip
    return Neighbors([q for _, q in queries], hits, digits)
