"""Pictures of a run: learning curves, the confusion matrix, misclassified images, predictions.

Each function draws one figure and saves it as PNG; matplotlib's Agg backend, so no
screen is needed. The notebook calls the same functions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import torch  # noqa: E402

from .errors import AlexNetError  # noqa: E402


def plot_curves(rows: Sequence[dict], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train against validation, from metrics.csv rows."""
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [float(r["train_loss"]) for r in rows], "o-", label="train")
    ax_loss.plot(epochs, [float(r["val_loss"]) for r in rows], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.plot(epochs, [100 * float(r["train_acc"]) for r in rows], "o-", label="train")
    ax_acc.plot(epochs, [100 * float(r["val_top1"]) for r in rows], "o-", label="validation top-1")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), counts written in."""
    m = torch.as_tensor(matrix, dtype=torch.float64)
    norm = m / m.sum(1, keepdim=True).clamp(min=1)
    n = len(class_names)
    size = max(5.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    return _save(fig, path)


def plot_images(
    images: Sequence[torch.Tensor],
    titles: Sequence[str],
    path: str | Path,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    suptitle: str | None = None,
) -> Path:
    """A grid of images (C, H, W), undoing the normalisation when mean and std are given."""
    count = max(1, len(images))
    cols = min(8, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles):
        ax.imshow(to_displayable(img, mean, std), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, path)


def plot_predictions(
    images: Sequence[torch.Tensor],
    probs: Sequence[torch.Tensor],
    class_names: Sequence[str],
    path: str | Path,
    *,
    true_labels: Sequence[int] | None = None,
    topk: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    suptitle: str | None = None,
) -> Path:
    """Each image beside a bar chart of its ``topk`` class probabilities.

    With ``true_labels`` the image is titled with its true class and the true class's bar is
    green (any other bar red when it is the top one, grey otherwise).
    """
    count = max(1, len(images))
    cols = min(4, count)
    rows = math.ceil(count / cols)
    k = min(topk, len(class_names))
    fig, axes = plt.subplots(
        rows, 2 * cols, figsize=(3.8 * cols, 1.8 * rows), squeeze=False,
        gridspec_kw={"width_ratios": [1, 1.4] * cols},
    )  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    for n, (img, p) in enumerate(zip(images, probs)):
        ax_img, ax_bar = axes[n // cols, 2 * (n % cols)], axes[n // cols, 2 * (n % cols) + 1]
        ax_img.imshow(to_displayable(img, mean, std), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
        true = None if true_labels is None else int(true_labels[n])
        if true is not None:
            ax_img.set_title(f"true {class_names[true]}", fontsize=7)
        values, indices = torch.as_tensor(p, dtype=torch.float32).topk(k)
        colors = []
        for rank, i in enumerate(indices.tolist()):
            colors.append("tab:green" if i == true else "tab:red" if rank == 0 and true is not None else "tab:gray")
        ax_bar.axis("on")
        ax_bar.barh(range(k), (100 * values).tolist(), color=colors)
        ax_bar.set_yticks(range(k), [class_names[i] for i in indices.tolist()], fontsize=7)
        ax_bar.invert_yaxis()
        ax_bar.set_xlim(0, 100)
        ax_bar.tick_params(axis="x", labelsize=6)
        ax_bar.set_xlabel("probability (%)", fontsize=6)
        for rank, v in enumerate(values.tolist()):
            ax_bar.text(min(100 * v + 2, 70), rank, f"{100 * v:.1f}%", va="center", fontsize=6)
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, path)


def plot_filters(blocks: Sequence[torch.Tensor], titles: Sequence[str], path: str | Path, *, suptitle: str) -> Path:
    """Grids of first-layer kernels (C, H, W) in [0, 1] (analysis.filter_blocks), one labelled block each."""
    height = sum(b.shape[1] for b in blocks)
    width = max(b.shape[2] for b in blocks)
    scale = 10.0 / width  # inches per grid pixel: the figure is 10 inches wide
    fig, axes = plt.subplots(
        len(blocks), 1, figsize=(10, scale * height + 0.5 + 0.35 * len(blocks)), squeeze=False,
        gridspec_kw={"height_ratios": [b.shape[1] for b in blocks]},
    )  # fmt: skip
    for ax, block, title in zip(axes[:, 0], blocks, titles):
        ax.imshow(_hwc(block), cmap="gray" if block.shape[0] == 1 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


def plot_neighbors(
    rows: Sequence[tuple[torch.Tensor, str, Sequence[tuple[torch.Tensor, str]]]],
    path: str | Path,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    suptitle: str | None = None,
) -> Path:
    """One row per query: the query image, then its neighbors, each with a caption (the paper's Figure 4).

    Images are uint8 as stored, or normalised floats that ``mean``/``std`` undo.
    """
    cols = 1 + max(len(found) for _, _, found in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(max(1.6 * cols, 5.0), 2.3 * len(rows) + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (query, caption, found) in enumerate(rows):
        for c, (img, text) in enumerate([(query, caption), *found]):
            ax = axes[r, c]
            ax.imshow(to_displayable(img, mean, std), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
            ax.set_title(text, fontsize=7, color="tab:blue" if c == 0 else "black")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return _save(fig, path)


def plot_feature_maps(
    picture: torch.Tensor,
    panels: Sequence[tuple[str, torch.Tensor]],
    path: str | Path,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    suptitle: str | None = None,
) -> Path:
    """The input image, then one panel per layer: a grey grid (1, H, W) of its feature maps."""
    n = 1 + len(panels)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(to_displayable(picture, mean, std), cmap="gray" if picture.shape[0] == 1 else None, vmin=0, vmax=1)
    axes.flat[0].set_title("input", fontsize=9)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="white")  # NaN: the padding between maps
    for ax, (title, grid) in zip(list(axes.flat)[1:], panels):
        ax.imshow(grid[0].numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


def plot_ablation(summary: Sequence[dict], path: str | Path, *, title: str) -> Path:
    """Mean top-1 error per variant with error bars (the std over seeds) and a dot per seed.

    ``summary`` rows need: variant, top1_errors (list of fractions), top1_error_mean, top1_error_std.
    """
    names = [row["variant"] for row in summary]
    means = [100 * row["top1_error_mean"] for row in summary]
    stds = [100 * row["top1_error_std"] if row["top1_error_std"] == row["top1_error_std"] else 0.0 for row in summary]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2.5, 4))
    x = list(range(len(names)))
    ax.bar(x, means, yerr=stds, capsize=6, color="tab:blue", alpha=0.7, label="mean over seeds (+/- std)")
    for i, row in enumerate(summary):
        errors = [100 * e for e in row["top1_errors"]]
        ax.plot([i] * len(errors), errors, "o", color="black", markersize=4, label="one seed" if i == 0 else None)
        ax.annotate(f"{means[i]:.2f}", (i, means[i] + stds[i]), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontsize=8)  # fmt: skip
    ax.set_xticks(x, names)
    ax.set(ylabel="top-1 error (%)", title=title)
    top = max((m + s for m, s in zip(means, stds)), default=1.0)
    ax.set_ylim(0, top * 1.3 + 0.5)  # headroom for the values and the legend
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    return _save(fig, path)


def _hwc(img: torch.Tensor):
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, C) array for imshow."""
    x = img.detach().float().cpu().clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def to_displayable(img: torch.Tensor, mean=None, std=None):
    """(C, H, W) float or uint8 -> (H, W) or (H, W, 3) float array in [0, 1] for imshow."""
    x = img.detach().float().cpu()
    if img.dtype == torch.uint8:
        x = x / 255
    elif mean is not None and std is not None:
        x = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    x = x.clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise AlexNetError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return path
