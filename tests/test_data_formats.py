"""On-disk formats and where they are found: IDX (gzipped and raw), CIFAR pickles, search order,
the offline error. Nothing here touches the network: sockets refuse to connect."""

from __future__ import annotations

import gzip
import os
import pickle
import socket
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from data_fixtures import CIFAR_NAMES, FASHION_FILES, idx_bytes, write_cifar10, write_fashion_mnist

from alexnet.data import DataConfig, build_loaders, load_cifar10, load_fashion_mnist, locate, read_idx
from alexnet.data.fashion_mnist import CLASS_NAMES
from alexnet.errors import AlexNetError

REAL_DOWNLOAD = locate.torchvision_download


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in the tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty working directory, no $ALEXNET_DATA, a system directory under tmp_path, and a
    downloader that fails the test if called. Returns tmp_path."""
    monkeypatch.delenv("ALEXNET_DATA", raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setitem(locate.SYSTEM_DIRS, "fashion-mnist", (str(tmp_path / "system"),))
    monkeypatch.setitem(locate.SYSTEM_DIRS, "cifar10", (str(tmp_path / "system-cifar"),))

    def forbidden(dataset, root):
        raise AssertionError(f"unexpected download of {dataset} into {root}")

    monkeypatch.setattr(locate, "torchvision_download", forbidden)
    return tmp_path


# ---------------------------------------------------------------- IDX


def test_idx_gzipped_and_raw_read_the_same(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(array)))
    for name in ("a", "a.gz"):
        got = read_idx(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == (7, 5, 3)
        np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"\x12\x34" + b[2:], "not an IDX file"),
        (lambda b: b[:-10], "truncated"),
        (lambda b: b + b"\x00\x01", "trailing bytes"),
        (lambda b: b[:6], "truncated"),
        (lambda b: b"", "not an IDX file"),
    ],
    ids=["bad-magic", "short-body", "trailing", "short-header", "empty"],
)
def test_idx_damage_is_an_error_naming_the_file(tmp_path, mutate, message):
    good = idx_bytes(np.zeros((4, 6, 6), dtype=np.uint8))
    path = tmp_path / "damaged-idx3-ubyte"
    path.write_bytes(mutate(good))
    with pytest.raises(AlexNetError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_idx_truncated_gzip_is_an_error(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8).reshape(2, 10, 10)))
    path = tmp_path / "x.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AlexNetError, match="corrupt or truncated gzip"):
        read_idx(path)


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_fashion_mnist_reads_images_labels_and_class_names(isolated, gz):
    written = write_fashion_mnist(isolated / "fm", n_train=30, n_val=12, gz=gz)
    data = load_fashion_mnist(str(isolated / "fm"), download=False)
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (30, 1, 28, 28)
    assert data.val_images.shape == (12, 1, 28, 28)
    assert data.train_labels.dtype == torch.int64
    np.testing.assert_array_equal(data.train_images[:, 0].numpy(), written["train"][0])
    np.testing.assert_array_equal(data.train_labels.numpy(), written["train"][1])
    np.testing.assert_array_equal(data.val_images[:, 0].numpy(), written["val"][0])
    np.testing.assert_array_equal(data.val_labels.numpy(), written["val"][1])
    assert data.class_names == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]  # fmt: skip


def test_fashion_mnist_torchvision_layout_is_found(isolated):
    write_fashion_mnist(isolated / "root" / "FashionMNIST" / "raw", n_train=10, n_val=10, gz=False)
    data = load_fashion_mnist(str(isolated / "root"), download=False)
    assert len(data.train_images) == 10
    assert "FashionMNIST" in data.source


def test_search_order_data_dir_env_local_system(isolated, monkeypatch):
    # A different training-set size in each place says which one was read.
    write_fashion_mnist(isolated / "given", n_train=11)
    write_fashion_mnist(isolated / "env", n_train=12)
    write_fashion_mnist(isolated / "cwd" / "data", n_train=13)
    write_fashion_mnist(isolated / "system", n_train=14)
    monkeypatch.setenv("ALEXNET_DATA", str(isolated / "env"))

    def train_size(data_dir):
        return len(load_fashion_mnist(data_dir, download=False).train_images)

    assert train_size(str(isolated / "given")) == 11
    (isolated / "empty").mkdir()
    assert train_size(str(isolated / "empty")) == 12  # a --data-dir without the files is passed over
    with pytest.raises(AlexNetError, match="--data-dir .*nowhere does not exist"):
        train_size(str(isolated / "nowhere"))  # one that is not there at all is a mistake
    assert train_size(None) == 12
    monkeypatch.delenv("ALEXNET_DATA")
    assert train_size(None) == 13
    os.rename(isolated / "cwd" / "data", isolated / "cwd" / "moved")
    assert train_size(None) == 14


def test_offline_error_with_downloads_disabled(isolated, monkeypatch):
    monkeypatch.setenv("ALEXNET_DATA", str(isolated / "env"))
    (isolated / "mine").mkdir()
    with pytest.raises(AlexNetError) as err:
        build_loaders(DataConfig(data_dir=str(isolated / "mine"), download=False), device="cpu", batch_size=4)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("Fashion-MNIST not found")
    for place in (isolated / "mine", isolated / "env", isolated / "cwd" / "data", isolated / "system"):
        assert str(place) in message
    assert message.index(str(isolated / "mine")) < message.index(str(isolated / "env"))
    assert message.index(str(isolated / "env")) < message.index(str(isolated / "cwd" / "data"))
    assert "downloads are disabled" in message
    assert "train-images-idx3-ubyte.gz" in message and "dataset-fashion-mnist" in message


def test_offline_error_when_the_downloader_fails(isolated, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    calls = []

    def unreachable(url, download_root, **kwargs):
        calls.append((url, download_root))
        raise URLError("no route to host")

    monkeypatch.setattr(locate, "torchvision_download", REAL_DOWNLOAD)
    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", unreachable)
    with pytest.raises(AlexNetError) as err:
        load_fashion_mnist(None, download=True)
    message = str(err.value)
    assert calls, "the downloader was not tried"
    assert all(Path(root) == isolated / "cwd" / "data" / "FashionMNIST" / "raw" for _, root in calls)
    assert "\n" not in message
    assert "download into ./data failed" in message and "no route to host" in message
    assert str(isolated / "system") in message


def test_download_is_used_when_it_works(isolated, monkeypatch):
    def fake_download(dataset, root):
        assert dataset == "fashion-mnist" and root == isolated / "cwd" / "data"
        write_fashion_mnist(root / "FashionMNIST" / "raw", n_train=9, n_val=10)

    monkeypatch.setattr(locate, "torchvision_download", fake_download)
    data = load_fashion_mnist(None, download=True)
    assert len(data.train_images) == 9 and "downloaded" in data.source


@pytest.mark.parametrize("problem", ["image-size", "count-mismatch", "label-range", "labels-2d"])
def test_fashion_mnist_wrong_contents_are_errors(isolated, problem):
    d = isolated / "fm"
    write_fashion_mnist(d, n_train=10, n_val=10, gz=False)
    images_stem, labels_stem = FASHION_FILES["train"]
    if problem == "image-size":
        (d / images_stem).write_bytes(idx_bytes(np.zeros((10, 27, 27), np.uint8)))
    elif problem == "count-mismatch":
        (d / labels_stem).write_bytes(idx_bytes(np.zeros(9, np.uint8)))
    elif problem == "label-range":
        (d / labels_stem).write_bytes(idx_bytes(np.full(10, 10, np.uint8)))
    else:
        (d / labels_stem).write_bytes(idx_bytes(np.zeros((10, 1), np.uint8)))
    with pytest.raises(AlexNetError, match="train-"):
        load_fashion_mnist(str(d), download=False)


def test_fashion_mnist_truncated_file_is_an_error_not_a_short_dataset(isolated):
    d = isolated / "fm"
    write_fashion_mnist(d, n_train=10, n_val=10, gz=True)
    path = d / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-784]))  # one image short, valid gzip
    with pytest.raises(AlexNetError, match="t10k-images-idx3-ubyte.gz is truncated"):
        load_fashion_mnist(str(d), download=False)


# ---------------------------------------------------------------- CIFAR-10


def test_cifar10_reads_pickle_batches(isolated):
    written = write_cifar10(isolated / "root" / "cifar-10-batches-py", per_batch=4, n_val=6)
    data = load_cifar10(str(isolated / "root"), download=False)
    assert data.train_images.shape == (20, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.val_images.shape == (6, 3, 32, 32)
    np.testing.assert_array_equal(data.train_images.permute(0, 2, 3, 1).numpy(), written["train"][0])
    np.testing.assert_array_equal(data.train_labels.numpy(), written["train"][1])
    np.testing.assert_array_equal(data.val_images.permute(0, 2, 3, 1).numpy(), written["val"][0])
    assert data.class_names == CIFAR_NAMES


def test_cifar10_files_directly_in_data_dir(isolated):
    write_cifar10(isolated / "flat", per_batch=2, n_val=3)
    assert len(load_cifar10(str(isolated / "flat"), download=False).val_images) == 3


def test_cifar10_truncated_pickle_is_an_error(isolated):
    d = isolated / "cifar-10-batches-py"
    write_cifar10(d, per_batch=3, n_val=3)
    blob = (d / "data_batch_3").read_bytes()
    (d / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(AlexNetError, match="data_batch_3 is not a readable CIFAR-10 pickle"):
        load_cifar10(str(isolated), download=False)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_cifar10_pickle_cannot_run_code(isolated):
    d = isolated / "cifar-10-batches-py"
    write_cifar10(d, per_batch=3, n_val=3)
    marker = isolated / "pwned"
    (d / "test_batch").write_bytes(pickle.dumps({"data": _Exploit(str(marker)), "labels": [0]}))
    with pytest.raises(AlexNetError, match="refusing to load"):
        load_cifar10(str(isolated), download=False)
    assert not marker.exists()


def test_cifar10_wrong_array_shape_is_an_error(isolated):
    d = isolated / "cifar-10-batches-py"
    write_cifar10(d, per_batch=3, n_val=3)
    batch = {"data": np.zeros((3, 1024), np.uint8), "labels": [0, 1, 2]}
    (d / "data_batch_1").write_bytes(pickle.dumps(batch))
    with pytest.raises(AlexNetError, match="data_batch_1.*shape"):
        load_cifar10(str(isolated), download=False)


def test_cifar10_offline_error(isolated, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    calls = []

    def unreachable(url, download_root, **kwargs):
        calls.append(url)
        raise URLError("name resolution failed")

    monkeypatch.setattr(locate, "torchvision_download", REAL_DOWNLOAD)
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", unreachable)
    with pytest.raises(AlexNetError) as err:
        build_loaders(DataConfig(dataset="cifar10"), device="cpu", batch_size=4)
    message = str(err.value)
    assert calls and "\n" not in message
    assert message.startswith("CIFAR-10 not found") and "name resolution failed" in message
    assert str(isolated / "cwd" / "data") in message and "cifar-10-batches-py" in message

    with pytest.raises(AlexNetError, match="downloads are disabled"):
        build_loaders(DataConfig(dataset="cifar10", download=False), device="cpu", batch_size=4)


def test_class_names_constant_matches_torchvision():
    from torchvision.datasets import FashionMNIST

    assert CLASS_NAMES == FashionMNIST.classes
