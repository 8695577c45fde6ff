"""Every bad input of issue 7 through the real command line: one clear line on stderr, a
non-zero exit, no traceback, and nothing already saved is lost."""

import gzip
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.engine import checkpoint as checkpoint_module
from alexnet.engine.checkpoint import read_checkpoint
from data_fixtures import FASHION_FILES, write_cifar10, write_fashion_mnist, write_image_tree

FAST = ["--no-progress", "--epochs", "1", "--max-steps", "1", "--image-size", "63", "--batch-size", "4",
        "--model", "alexnet_owt", "--init", "torch", "--workers", "0"]  # fmt: skip


def fails_with(args, capsys, message: str, code: int = 2) -> str:
    """Run the command in this process; it must return ``code`` with exactly ``message`` in one stderr line."""
    try:
        got = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own errors
        got = e.code
    err = capsys.readouterr().err
    assert got == code, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert message in err, err
    assert "Traceback" not in err and "internal error" not in err, err
    return err


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm")
    write_fashion_mnist(root, n_train=16, n_val=8)
    return root


def corrupt_copy(src, dst, edit):
    """A copy of the IDX data set whose train images file is passed (decompressed) through ``edit``."""
    shutil.copytree(src, dst)
    path = dst / (FASHION_FILES["train"][0] + ".gz")
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes()))))
    return dst


def test_missing_data_directory(tmp_path, capsys):
    fails_with(["train", "--data-dir", tmp_path / "nope", "--out", tmp_path / "run", *FAST], capsys,
               f"--data-dir {tmp_path / 'nope'} does not exist")  # fmt: skip


def test_truncated_idx_file(fmnist, tmp_path, capsys):
    data = corrupt_copy(fmnist, tmp_path / "d", lambda raw: raw[: len(raw) // 2])
    fails_with(["train", "--data-dir", data, "--out", tmp_path / "run", *FAST], capsys, "is truncated: its header says 16 x 28 x 28")


def test_truncated_gzip_file(fmnist, tmp_path, capsys):
    shutil.copytree(fmnist, tmp_path / "d")
    path = tmp_path / "d" / (FASHION_FILES["train"][0] + ".gz")
    path.write_bytes(path.read_bytes()[:100])
    fails_with(["train", "--data-dir", tmp_path / "d", "--out", tmp_path / "run", *FAST], capsys, "corrupt or truncated gzip file")


def test_wrong_magic_number(fmnist, tmp_path, capsys):
    data = corrupt_copy(fmnist, tmp_path / "d", lambda raw: b"\x1f\x8b" + raw[2:])
    fails_with(["train", "--data-dir", data, "--out", tmp_path / "run", *FAST], capsys, "is not an IDX file (magic number 0x1f8b0803)")


def test_cifar_batch_of_the_wrong_shape(tmp_path, capsys):
    write_cifar10(tmp_path / "c")
    path = tmp_path / "c" / "data_batch_1"
    batch = pickle.loads(path.read_bytes())
    batch["data"] = batch["data"][:, :1000]
    path.write_bytes(pickle.dumps(batch))
    fails_with(["train", "--dataset", "cifar10", "--data-dir", tmp_path / "c", "--out", tmp_path / "run", *FAST],
               capsys, "'data' must be a uint8 array of shape (n, 3072), found (6, 1000)")  # fmt: skip


def folder_args(root, tmp_path):
    return ["train", "--dataset", "imagefolder", "--train-dir", root / "train", "--val-dir", root / "val",
            "--out", tmp_path / "run", *FAST]  # fmt: skip


def test_image_folder_with_no_images(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / "f" / "train" / name).mkdir(parents=True)
    write_image_tree(tmp_path / "f" / "val", {"a": 1, "b": 1})
    fails_with(folder_args(tmp_path / "f", tmp_path), capsys, "with no JPEG or PNG images: a, b")


def test_image_folder_with_one_class(tmp_path, capsys):
    write_image_tree(tmp_path / "f" / "train", {"a": 3})
    write_image_tree(tmp_path / "f" / "val", {"a": 2})
    fails_with(folder_args(tmp_path / "f", tmp_path), capsys, "has one class folder (a); a classifier needs at least two")


def test_val_class_missing_from_train(tmp_path, capsys):
    write_image_tree(tmp_path / "f" / "train", {"a": 3, "b": 3})
    write_image_tree(tmp_path / "f" / "val", {"a": 2, "c": 2})
    fails_with(folder_args(tmp_path / "f", tmp_path), capsys, "missing from")


def test_output_directory_that_cannot_be_written(fmnist, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    fails_with(["train", "--data-dir", fmnist, "--out", tmp_path / "a-file" / "run", *FAST], capsys,
               "cannot write to the output directory")  # fmt: skip


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_output_directory_without_write_permission(fmnist, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    fails_with(["train", "--data-dir", fmnist, "--out", locked / "run", *FAST], capsys, "Permission denied")


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(fmnist, tmp_path, capsys, monkeypatch):
    """The second write of last.pt goes to /dev/full: the kernel's own ENOSPC, mid-write."""
    out = tmp_path / "run"
    real_mkstemp, writes = checkpoint_module.tempfile.mkstemp, []

    def mkstemp(prefix, suffix, dir):
        fd, path = real_mkstemp(prefix=prefix, suffix=suffix, dir=dir)
        if prefix == ".last.pt.":
            writes.append(path)
            if len(writes) == 2:
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)
        return fd, path

    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", mkstemp)
    args = ["train", "--data-dir", fmnist, "--out", out, *FAST]
    args[args.index("--epochs") + 1], args[args.index("--max-steps") + 1] = "2", "100"
    fails_with(args, capsys, "No space left on device; the previous one is kept")
    assert len(writes) == 2
    kept = read_checkpoint(out / "checkpoints" / "last.pt")
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values())
    assert not list((out / "checkpoints").glob(".*.tmp"))  # the half-written file is removed


@pytest.fixture(scope="module")
def checkpoint(fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data-dir", str(fmnist), "--out", str(out), *FAST]) == 0
    return out / "checkpoints" / "last.pt"


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("notes.txt", b"these are not pixels\n", "not an image file this program can read"),
        ("empty.png", b"", "the file is empty"),
        ("huge.png", png_header(100_000, 100_000), "the image is too large to classify"),
        ("cut.png", png_header(64, 64), "cannot decode the image"),
    ],
    ids=["text", "empty", "huge", "no-pixels"],
)
def test_predict_bad_image_files(checkpoint, tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    fails_with(["predict", "--checkpoint", checkpoint, path], capsys, f"{path}: {message}")


def test_predict_missing_image(checkpoint, tmp_path, capsys):
    fails_with(["predict", "--checkpoint", checkpoint, tmp_path / "gone.jpg"], capsys, "no such file")


def test_a_real_process_prints_no_traceback(fmnist, tmp_path):
    """The in-process checks above, once as a user runs it: a separate process and its exit status."""
    bad = corrupt_copy(fmnist, tmp_path / "d", lambda raw: raw[:-5])
    done = subprocess.run([sys.executable, "-m", "alexnet", "train", "--data-dir", str(bad), "--out",
                           str(tmp_path / "run"), *FAST], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "is truncated" in done.stderr and "Traceback" not in done.stderr


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["eval", "predict", "export", "report", "resume", "init-from"])
def test_a_checkpoint_that_runs_code_is_refused_everywhere(fmnist, checkpoint, tmp_path, capsys, command):
    marker = tmp_path / "the-code-ran"
    run_dir = tmp_path / "evil-run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for name in ("metrics.csv", "config.json"):
        shutil.copy(checkpoint.parent.parent / name, run_dir / name)
    evil = run_dir / "checkpoints" / "last.pt"
    torch.save({"config": read_checkpoint(checkpoint)["config"], "extra": RunsCode(marker)}, evil)
    shutil.copy(evil, run_dir / "checkpoints" / "best.pt")
    image = tmp_path / "x.png"
    Image.new("L", (20, 20)).save(image)
    args = {
        "eval": ["eval", "--checkpoint", evil],
        "predict": ["predict", "--checkpoint", evil, image],
        "export": ["export", "--checkpoint", evil, "--format", "torchscript", "--out", tmp_path / "m.pt"],
        "report": ["report", run_dir, "--out", tmp_path / "r.html"],
        "resume": ["train", "--resume", run_dir, "--no-progress"],
        "init-from": ["train", "--data-dir", fmnist, "--out", tmp_path / "ft", *FAST, "--init-from", evil],
    }[command]
    fails_with(args, capsys, "refusing to load")
    assert not marker.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (["--model", "alexnet_paper"], "does not fit AlexNet: missing keys: features.conv1.weight"),
        (["--num-classes", "12"], "shape mismatch: classifier.6.weight (10, 4096) vs (12, 4096)"),
    ],
    ids=["other-model", "other-class-count"],
)
def test_resume_into_another_model_names_the_keys(checkpoint, tmp_path, capsys, change, message):
    run_dir = tmp_path / "run"
    shutil.copytree(checkpoint.parent.parent, run_dir, copy_function=os.link)  # refused before anything is written
    fails_with(["train", "--resume", run_dir, "--no-progress", "--max-steps", "3", *change], capsys, message)


def test_the_crafted_checkpoint_really_runs_code_when_loaded_unsafely(checkpoint, tmp_path):
    """So the refusals above mean something: an unsafe load of the same file does run it."""
    marker = tmp_path / "the-code-ran"
    state = read_checkpoint(checkpoint)
    state["extra"] = RunsCode(marker)
    torch.save(state, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_a_torchscript_export_is_not_taken_for_a_checkpoint(checkpoint, tmp_path, capsys):
    exported = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(exported)]) == 0
    capsys.readouterr()
    fails_with(["eval", "--checkpoint", exported], capsys, "is a TorchScript export (alexnet export), not a training checkpoint")


@pytest.mark.parametrize("args", [["--dataset", "fashion-mnist", "--val-split", "0"], ["--dataset", "imagefolder"]])
def test_no_test_without_a_validation_split_is_refused(args, capsys):
    # Without a validation split the held-out split validates every epoch: --no-test would be ignored.
    fails_with(["train", *args, "--no-test", "--data-dir", "/nonexistent"], capsys, "--no-test needs a validation split")


# --- bench -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--amp"], ["--compile"], ["--amp", "--compile"]])
def test_bench_refuses_a_one_sided_precision_or_compiler_change_in_the_comparison(flags, capsys):
    # The usual pipeline stays float32 and eager; a ratio against ours with --amp or --compile
    # would credit the pipeline with a precision or compiler change.
    err = fails_with(["bench", "--image-size", "63", *flags], capsys, "change our pipeline only")
    assert " and ".join(flags) in err and "add --only ours" in err


# --- devices ---------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda(fmnist, tmp_path, capsys):
    fails_with(["train", "--data-dir", fmnist, "--out", tmp_path / "run", *FAST, "--device", "cuda"], capsys,
               "--device cuda was asked for, but no CUDA device is available")  # fmt: skip
    fails_with(["bench", "--device", "cuda", "--only", "ours", "--data", "synthetic"], capsys,
               "--device cuda was asked for, but no CUDA device is available")  # fmt: skip


@pytest.mark.skipif(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                    reason="this machine has MPS")  # fmt: skip
def test_mps_asked_for_without_mps(fmnist, tmp_path, capsys):
    fails_with(["train", "--data-dir", fmnist, "--out", tmp_path / "run", *FAST, "--device", "mps"], capsys,
               "--device mps was asked for, but MPS is not available")  # fmt: skip


def pretend_gpus(monkeypatch, count: int) -> None:
    """CUDA with ``count`` devices, as far as choosing a device goes (nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_a_gpu_that_is_not_there(fmnist, tmp_path, capsys, monkeypatch):
    pretend_gpus(monkeypatch, 2)
    fails_with(["train", "--data-dir", fmnist, "--out", tmp_path / "run", *FAST, "--device", "cuda:2"], capsys,
               "--device cuda:2: this machine has 2 GPUs (cuda:0 to cuda:1)")  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_torchrun_with_more_processes_than_gpus(fmnist, tmp_path, capsys, monkeypatch):
    """What each of the processes torchrun starts sees (its environment), on a machine with 1 GPU:
    one line, before it joins the process group (which would wait for the others)."""
    pretend_gpus(monkeypatch, 1)
    for name, value in dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2").items():
        monkeypatch.setenv(name, value)
    fails_with(["train", "--data-dir", fmnist, "--out", tmp_path / "run", *FAST, "--device", "cuda"], capsys,
               "torchrun started 2 processes on this machine but it has 1 GPU; use --nproc_per_node=1 or fewer")  # fmt: skip


def test_a_checkpoint_written_on_a_gpu_works_on_a_machine_without_one(fmnist, tmp_path, capsys, monkeypatch):
    """A checkpoint whose tensors are recorded as CUDA ones (as one saved on a GPU is): plain
    torch.load refuses it here, and every command that reads checkpoints takes it onto the CPU."""
    run = tmp_path / "run"
    assert main(["train", "--data-dir", str(fmnist), "--out", str(run), *FAST]) == 0
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    image = tmp_path / "shirt.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(image)
    for args in (["eval", "--checkpoint", path, "--data-dir", fmnist, "--device", "cpu"],
                 ["predict", "--checkpoint", path, image],
                 ["export", "--checkpoint", path, "--format", "torchscript", "--out", tmp_path / "m.pt"],
                 ["train", "--resume", run, "--max-steps", "2", "--device", "cpu"]):  # fmt: skip
        assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    assert read_checkpoint(path)["step"] == 2
