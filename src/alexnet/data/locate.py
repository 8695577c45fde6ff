"""Where dataset files are looked for, offline first, and the one-line error when they are nowhere.

Search order: ``--data-dir``, ``$ALEXNET_DATA``, ``./data``, then the system copies
(Debian's ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``).
Only when all of those come up empty is torchvision's downloader tried, into ``./data``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..errors import AlexNetError

ENV_VAR = "ALEXNET_DATA"
LOCAL_DIR = "data"  # relative to the working directory, read at call time

# System-wide copies, per dataset; module-level so tests can point them elsewhere.
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist",),
    "cifar10": (),
    "imagefolder": (),
}


@dataclass(frozen=True)
class SearchRoot:
    label: str  # how the error message names it: "--data-dir", "$ALEXNET_DATA", "./data", "system"
    path: Path

    def describe(self) -> str:
        if self.label == "system":
            return str(self.path)
        return f"{self.label} ({self.path})"


def search_roots(dataset: str, data_dir: str | None) -> list[SearchRoot]:
    """The places to look, in order, without duplicates (a later equal path is dropped)."""
    roots: list[SearchRoot] = []
    if data_dir:
        # Given explicitly, a directory that is not there is a mistake, not a reason to look elsewhere.
        if not Path(data_dir).expanduser().is_dir():
            raise AlexNetError(f"--data-dir {data_dir} does not exist or is not a directory")
        roots.append(SearchRoot("--data-dir", Path(data_dir).expanduser().absolute()))
    env = os.environ.get(ENV_VAR)
    if env:
        roots.append(SearchRoot(f"${ENV_VAR}", Path(env).expanduser().absolute()))
    roots.append(SearchRoot(f"./{LOCAL_DIR}", Path.cwd() / LOCAL_DIR))
    roots.extend(SearchRoot("system", Path(d)) for d in SYSTEM_DIRS.get(dataset, ()))
    seen: set[Path] = set()
    unique = []
    for root in roots:
        if root.path not in seen:
            seen.add(root.path)
            unique.append(root)
    return unique


def find_in_roots(
    roots: Iterable[SearchRoot], match: Callable[[Path], Path | None]
) -> tuple[SearchRoot, Path] | None:
    """The first root for which ``match(root)`` returns a directory holding the dataset."""
    for root in roots:
        if root.path.is_dir():
            found = match(root.path)
            if found is not None:
                return root, found
    return None


def one_line(error: BaseException, limit: int = 160) -> str:
    """An exception as one short line: its type and its message with whitespace folded."""
    text = " ".join(str(error).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def torchvision_download(dataset: str, root: Path) -> None:
    """Fetch ``dataset`` with torchvision into ``root`` (its own layout under ``root``)."""
    from torchvision import datasets  # only when nothing was found offline: torchvision.datasets is slow to import

    cls = {"fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[dataset]
    root.mkdir(parents=True, exist_ok=True)
    cls(root=str(root), train=True, download=True)


def locate_or_download(
    dataset: str,
    *,
    title: str,
    data_dir: str | None,
    download: bool,
    match: Callable[[Path], Path | None],
    how_to_get: str,
) -> tuple[Path, str]:
    """Find ``dataset``'s directory, downloading it into ./data as the last resort.

    Returns ``(directory, source)``, where source says which search root it came from.
    Raises AlexNetError naming every place searched when there is no copy to be had.
    """
    roots = search_roots(dataset, data_dir)
    found = find_in_roots(roots, match)
    if found is not None:
        root, directory = found
        return directory, f"{directory} (from {root.label})"

    searched = ", ".join(r.describe() for r in roots)
    if not download:
        reason = "downloads are disabled"
    else:
        target = Path.cwd() / LOCAL_DIR
        try:
            torchvision_download(dataset, target)
        except Exception as e:  # any failure of the downloader means: no data, say why
            reason = f"the download into ./{LOCAL_DIR} failed ({one_line(e)})"
        else:
            directory = match(target)
            if directory is not None:
                return directory, f"{directory} (downloaded)"
            reason = f"the download into ./{LOCAL_DIR} left no usable files"
    raise AlexNetError(f"{title} not found; searched {searched}; {reason}. {how_to_get}")
