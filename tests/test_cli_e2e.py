"""End to end through the command line on tiny Fashion-MNIST-format data: train, eval, predict, export, resume."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image


from alexnet.cli import main
from alexnet.engine.checkpoint import read_checkpoint

FAST = ["--model", "alexnet_owt", "--image-size", "63", "--batch-size", "16", "--lr", "0.01", "--init", "torch",
        "--no-progress", "--scheduler", "cosine", "--workers", "0"]  # fmt: skip


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(fmnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "e2e"
    code = main(["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--epochs", "2",
                 "--out", str(out), "--seed", "1", *FAST])  # fmt: skip
    assert code == 0
    return out


def test_run_directory_layout(trained):
    for name in ("config.json", "metrics.csv", "test.json", "checkpoints/last.pt", "checkpoints/best.pt", "plots/curves.png",
                 "plots/confusion.png", "plots/confusion.json", "plots/misclassified.png", "plots/samples.png"):  # fmt: skip
        assert (trained / name).is_file(), name
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5",
                             "images_per_s", "epoch_time_s"]  # fmt: skip
    config = json.loads((trained / "config.json").read_text())
    assert config["model"] == "alexnet_owt" and config["epochs"] == 2 and config["resolved"]["in_channels"] == 1
    ckpt = read_checkpoint(trained / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "schedule", "scaler", "epoch", "step", "rng", "config"} <= set(ckpt)
    # 16 of the 160 training images are kept apart to validate (a tenth, under the default 5,000).
    assert config["resolved"]["val_split"] == 16 if "val_split" in config["resolved"] else True
    assert ckpt["epoch"] == 2 and ckpt["step"] == 2 * (144 // 16)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])


def test_eval_json_matches_training_metrics(trained, capsys):
    # eval reads the test split, as training did once at the end with best.pt (test.json).
    code, out, _ = run_cli(["eval", "--checkpoint", trained / "checkpoints" / "best.pt", "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert set(result) == {"top1", "top5", "loss", "n", "per_class"}
    test = json.loads((trained / "test.json").read_text())
    assert result["n"] == test["n"] == 40
    assert result["top1"] == pytest.approx(test["top1"], abs=1e-6)
    assert result["loss"] == pytest.approx(test["loss"], rel=1e-4)
    assert len(result["per_class"]) == 10 and "Trouser" in result["per_class"]
    assert (trained / "eval" / "confusion.png").is_file() and (trained / "eval" / "confusion.json").is_file()


def test_eval_human_readable_and_10crop(trained, capsys):
    code, out, _ = run_cli(["eval", "--checkpoint", trained / "checkpoints" / "best.pt", "--tta", "10crop"], capsys)
    assert code == 0
    assert "(10-crop)" in out and "top-1" in out and "Ankle boot" in out


def test_predict_on_images_of_any_size_and_mode(trained, tmp_path, capsys):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8), mode="L").save(tmp_path / "grey.png")
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8), mode="RGB").save(tmp_path / "rgb.jpg")
    code, out, _ = run_cli(["predict", "--checkpoint", trained / "checkpoints" / "best.pt", "--topk", "3",
                            tmp_path / "grey.png", tmp_path / "rgb.jpg"], capsys)  # fmt: skip
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(tmp_path / "grey.png"))
    percents = [float(part.rsplit(" ", 1)[1].rstrip("%")) for part in lines[0].split(": ", 1)[1].split(", ")]
    assert len(percents) == 3 and percents == sorted(percents, reverse=True)


def test_load_checkpoint_api(trained):
    import alexnet

    model, names, preprocess = alexnet.load_checkpoint(trained / "checkpoints" / "best.pt")
    assert names[0] == "T-shirt/top" and len(names) == 10
    x = preprocess(Image.new("L", (28, 28), 128))
    assert x.shape == (1, 63, 63) and x.dtype == torch.float32
    assert not model.training
    assert model(x.unsqueeze(0)).shape == (1, 10)


@pytest.mark.parametrize("fmt, suffix", [("torchscript", ".pt"), ("onnx", ".onnx")])
def test_export_gives_the_same_logits(trained, tmp_path, capsys, fmt, suffix):
    target = tmp_path / f"model{suffix}"
    code, out, err = run_cli(["export", "--checkpoint", trained / "checkpoints" / "best.pt", "--format", fmt,
                              "--out", target], capsys)  # fmt: skip
    assert code == 0, err
    assert target.is_file() and "max |logit difference|" in out
    model = read_checkpoint(trained / "checkpoints" / "best.pt")
    x = torch.randn(3, 1, 63, 63)
    import alexnet

    reference = alexnet.load_checkpoint(trained / "checkpoints" / "best.pt")[0]
    with torch.no_grad():
        expected = reference(x)
    if fmt == "torchscript":
        got = torch.jit.load(str(target))(x)
    else:
        import onnxruntime as ort

        got = torch.from_numpy(ort.InferenceSession(str(target)).run(None, {"images": x.numpy()})[0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert model["model_args"]["name"] == "alexnet_owt"


def test_resume_equals_uninterrupted(fmnist_dir, tmp_path, monkeypatch):
    # 64 images in batches of 16: 4 steps an epoch.
    common = ["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--subset", "64", "--deterministic",
              "--seed", "5", "--dropout", "0.5", "--val-split", "0", *FAST]  # fmt: skip
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(common + ["--epochs", "2", "--out", str(whole)]) == 0
    # The same run, stopped after its first epoch (its schedule is still planned for 2 epochs).
    assert main(common + ["--epochs", "2", "--max-steps", "4", "--out", str(parts)]) == 0
    from alexnet.engine import checkpoint

    loads = []
    real_load = checkpoint.torch.load
    monkeypatch.setattr(checkpoint.torch, "load", lambda path, *a, **k: loads.append(str(path)) or real_load(path, *a, **k))
    assert main(["train", "--resume", str(parts), "--max-steps", "8", "--no-progress"]) == 0
    monkeypatch.undo()
    # last.pt is read once: the configuration and the training state come from the same read.
    assert [p for p in loads if p.endswith("last.pt")] == [str(parts / "checkpoints" / "last.pt")]
    a = read_checkpoint(whole / "checkpoints" / "last.pt")
    b = read_checkpoint(parts / "checkpoints" / "last.pt")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 8)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    rows_a = list(csv.DictReader((whole / "metrics.csv").open()))
    rows_b = list(csv.DictReader((parts / "metrics.csv").open()))
    strip = ("images_per_s", "epoch_time_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in strip} for r in rows_b
    ]


def test_init_from_torchvision_weights(fmnist_dir, tmp_path, capsys):
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None)
    weights = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(tv.state_dict(), weights)
    out = tmp_path / "ft"
    code, stdout, err = run_cli(["train", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--epochs", "1",
                                 "--max-steps", "1", "--lr", "1e-9", "--init-from", weights, "--out", out,
                                 *[a for a in FAST if a not in ("--lr", "0.01")]], capsys)  # fmt: skip
    assert code == 0, err
    assert "conv1 summed over RGB" in stdout and "1000 -> 10 classes" in stdout
    state = read_checkpoint(out / "checkpoints" / "last.pt")["model"]
    # conv2 onwards is torchvision's (a step at lr 1e-9 moves nothing measurable); conv1 is the RGB sum.
    torch.testing.assert_close(state["features.3.weight"], tv.state_dict()["features.3.weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(state["features.0.weight"], tv.state_dict()["features.0.weight"].sum(1, keepdim=True),
                               atol=1e-6, rtol=0)  # fmt: skip
    assert state["classifier.6.weight"].shape == (10, 4096)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "resnet50"], "unknown model 'resnet50'"),
        (["train", "--lr", "-0.1"], "--lr must be positive"),
        (["train", "--batch-size", "0"], "--batch-size must be positive"),
        (["train", "--dataset", "mnist"], "invalid choice: 'mnist'"),
        (["train", "--image-size", "20", "--max-steps", "1"], "too small"),
        (["eval", "--checkpoint", "/nonexistent/last.pt"], "checkpoint not found"),
        (["predict", "--checkpoint", "/nonexistent/last.pt", "x.png"], "checkpoint not found"),
    ],
)
def test_bad_input_is_one_line(fmnist_dir, args, message):
    if args[0] == "train":
        args = args + ["--data-dir", str(fmnist_dir), "--no-progress", "--out", "/tmp/alexnet-test-bad-input"]
    done = subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert message in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_invalid_checkpoint_file(tmp_path, capsys):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"\x00garbage")
    code, _, err = run_cli(["predict", "--checkpoint", bad, "x.png"], capsys)
    assert code == 2 and "not a readable checkpoint" in err and err.count("\n") == 1


@pytest.mark.parametrize("native", [True, False])
def test_amp_on_the_cpu(fmnist_dir, tmp_path, capsys, monkeypatch, native):
    """--amp: bfloat16 autocast where the CPU has native bfloat16 kernels (forced here, so the
    path runs on any machine), float32 with a one-line notice where it has not; the weights
    stay float32 and finite either way."""
    from alexnet.engine import runtime

    monkeypatch.setattr(runtime, "has_fast_bfloat16", lambda: native)
    out = tmp_path / "amp"
    code, stdout, err = run_cli(["train", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--epochs", "1",
                                 "--subset", "16", "--amp", "--model", "alexnet_paper", "--out", out, *FAST[2:]],
                                capsys)  # fmt: skip
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["amp"] is True
    assert config["resolved"]["precision"] == ("bfloat16" if native else "float32")
    assert ("training in float32" in stdout) is not native
    ckpt = read_checkpoint(out / "checkpoints" / "last.pt")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in ckpt["model"].values())
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert float(rows[0]["train_loss"]) > 0 and 0 <= float(rows[0]["val_top1"]) <= 1
