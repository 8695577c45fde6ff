"""Training speed against the tutorial pipeline, each in its own fresh process, and what each part buys.

Four pipelines, each a new process that builds its loader and model, trains ``--warmup-steps``
untimed steps, then times ``--timed-steps`` steps of the same epoch (one DataLoader iterator,
as in a tutorial's epoch loop), all from the same initial weights, float32, batch and size:

- tutorial: ``benchmarks/tutorial_alexnet.py`` as its users run it (torchvision's
  FashionMNIST, Resize + ToTensor + Normalize, a DataLoader with 2 workers, torch's LRN,
  contiguous tensors, SGD, the usual loop), nothing of this package, none of its settings;
- ours: the package's in-memory loader (random crops and flips included) and its engine
  (fused LRN, channels_last, fused SGD, ``train_one_epoch``, glibc keeping freed memory,
  subnormals flushed), as ``alexnet train`` runs them;
- tutorial loader + our model, our loader + tutorial model: the ratio decomposed.

Then, timed from outside as a user would, whole commands: ``alexnet train`` for one epoch of
``--epoch-subset`` images against the tutorial script for the same epoch (each also evaluates
the test images of the subset), and the issue's way of timing steps of the command line (wall
time of ``--max-steps 12`` less that of ``--max-steps 2``), for the fashion-mnist preset and
for the preset with SGD and no augmentation, to show where the command line's steps go.

    .venv/bin/python benchmarks/baseline.py --out benchmarks/results/baseline-227.json

Needs the 2 cores to itself: every figure is a rate over seconds of work.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class Ticker:
    """The first ``n`` batches of a loader, noting when each is in hand, and when batch ``n`` is."""

    def __init__(self, loader, n: int):
        self.loader, self.n, self.ticks = loader, n, []

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            self.ticks.append(time.perf_counter())
            if i == self.n:
                return
            yield batch
        raise SystemExit(f"the loader has {len(self.ticks)} batches; {self.n + 1} are needed")


def worker(args: argparse.Namespace) -> None:
    """One pipeline in this (fresh) process: time steps, print one JSON line."""
    import torch
    import torch.nn as nn

    sys.path.insert(0, str(HERE))
    import tutorial_alexnet as tutorial

    n = args.warmup_steps + args.timed_steps
    if args.loader == "tutorial":
        loader = tutorial.train_loader(args.root, args.image_size, args.batch_size, args.workers)
    else:
        from alexnet.data import DataConfig, build_loaders

        cfg = DataConfig(dataset="fashion-mnist", data_dir=args.data_dir, image_size=args.image_size, download=False,
                         val_split=0)  # fmt: skip
        loader, _, _ = build_loaders(cfg, device="cpu", batch_size=args.batch_size)
        loader.set_epoch(0)
    ticker = Ticker(loader, n)
    weights = torch.load(args.weights)
    if args.model == "tutorial":
        model = tutorial.build_model(args.weights)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        criterion = nn.CrossEntropyLoss()
        model.train()
        for images, labels in ticker:
            loss = criterion(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    else:
        from alexnet.engine.cpu import keep_freed_memory, subnormals_flushed
        from alexnet.engine.optim import LRSchedule, create_optimizer
        from alexnet.engine.train import StepOptions, train_one_epoch
        from alexnet.models import create_model

        with subnormals_flushed(True):
            keep_freed_memory()
            model = create_model("alexnet_paper", num_classes=10, in_channels=1, init="torch")
            with torch.no_grad():
                for p, w in zip(model.parameters(), weights, strict=True):
                    p.copy_(w)
            model = model.to(memory_format=torch.channels_last)
            optimizer = create_optimizer(model.parameters(), "sgd", lr=0.01, momentum=0.9, weight_decay=5e-4)
            schedule = LRSchedule(optimizer, "none", total_steps=n, steps_per_epoch=n)
            opts = StepOptions(channels_last=True, sync_every=1)
            train_one_epoch(model, ticker, optimizer, schedule, nn.CrossEntropyLoss(), step=0, opts=opts)
    t = ticker.ticks
    step_s = [b - a for a, b in zip(t[args.warmup_steps : -1], t[args.warmup_steps + 1 :])]
    print(json.dumps({"loader": args.loader, "model": args.model, "threads": torch.get_num_threads(),
                      "images_per_s": args.timed_steps * args.batch_size / (t[-1] - t[args.warmup_steps]),
                      "step_s": step_s}))  # fmt: skip


def find_fashion_mnist(data_dir: str | None) -> Path:
    for d in [data_dir, os.environ.get("ALEXNET_DATA"), "data", "/usr/share/datasets/fashion-mnist"]:
        if d and all((Path(d) / f"{f}.gz").is_file() for f in FILES):
            return Path(d)
    raise SystemExit("Fashion-MNIST's four .gz files were not found; give --data-dir")


def torchvision_root(source: Path, root: Path) -> Path:
    """``root/FashionMNIST/raw/``: the files decompressed, where torchvision's downloader leaves them."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        with gzip.open(source / f"{f}.gz") as src, open(raw / f, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


def run_json(cmd: list[str]) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def wall(cmd: list[str]) -> tuple[float, str]:
    """Seconds from the command's start to its exit, and its output's last line."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return took, done.stdout.strip().splitlines()[-1]


def machine() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = next((set(ln.split(":", 1)[1].split()) for ln in text.splitlines() if ln.startswith("flags")), set())
    return {"cpu": name or platform.processor(), "cores": os.cpu_count(),
            "avx512": sorted(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags),
            "load_average_at_start": os.getloadavg()}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=227)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="the tutorial DataLoader's worker processes")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--timed-steps", type=int, default=20)
    p.add_argument("--epoch-subset", type=int, default=2048, help="images in the whole-command epoch (0: skip)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="write the results here as JSON")
    # worker mode (one pipeline in a fresh process)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loader", choices=("tutorial", "ours"), help=argparse.SUPPRESS)
    p.add_argument("--model", choices=("tutorial", "ours"), help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    import torch

    sys.path.insert(0, str(HERE))
    import tutorial_alexnet as tutorial

    source = find_fashion_mnist(args.data_dir)
    result: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
                    "torch": torch.__version__, "image_size": args.image_size, "batch_size": args.batch_size,
                    "warmup_steps": args.warmup_steps, "timed_steps": args.timed_steps}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_root(source, Path(tmp) / "tv")
        torch.manual_seed(0)
        weights = Path(tmp) / "weights.pt"
        torch.save([p.detach().clone() for p in tutorial.AlexNet().parameters()], weights)
        common = ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
                  "--warmup-steps", str(args.warmup_steps)]  # fmt: skip
        steps = {}
        for loader, model in (("tutorial", "tutorial"), ("ours", "ours"), ("tutorial", "ours"), ("ours", "tutorial")):
            if (loader, model) == ("tutorial", "tutorial"):  # the tutorial's own script, nothing of ours
                cmd = [sys.executable, str(HERE / "tutorial_alexnet.py"), "--root", str(root), "--weights", str(weights),
                       "--workers", str(args.workers), "--timed-steps", str(args.timed_steps), *common]  # fmt: skip
            else:
                cmd = [sys.executable, __file__, "--worker", "--loader", loader, "--model", model, "--root", str(root),
                       "--weights", str(weights), "--workers", str(args.workers), "--data-dir", str(source),
                       "--timed-steps", str(args.timed_steps), *common]  # fmt: skip
            got = run_json(cmd)
            steps[f"{loader} loader + {model} model"] = got
            print(f"{loader} loader + {model} model: {got['images_per_s']:.1f} images/s "
                  f"(steps {min(got['step_s']):.2f}-{max(got['step_s']):.2f} s)", flush=True)  # fmt: skip
        result["steps"] = steps
        rate = {k: v["images_per_s"] for k, v in steps.items()}
        tt, oo = rate["tutorial loader + tutorial model"], rate["ours loader + ours model"]
        result["ratio"] = {
            "ours / tutorial": oo / tt,
            "our model and engine, with the tutorial loader": rate["tutorial loader + ours model"] / tt,
            "our loader, with the tutorial model": rate["ours loader + tutorial model"] / tt,
        }
        if args.epoch_subset:
            n, out = str(args.epoch_subset), Path(tmp) / "run"
            cli = [sys.executable, "-m", "alexnet", "train", "--preset", "fashion-mnist", "--batch-size",
                   str(args.batch_size), "--image-size", str(args.image_size), "--subset", n, "--data-dir", str(source),
                   "--val-split", "0", "--no-progress"]  # fmt: skip
            ours_s, ours_line = wall([*cli, "--epochs", "1", "--out", str(out / "epoch")])
            tut_s, tut_line = wall([sys.executable, str(HERE / "tutorial_alexnet.py"), "--root", str(root), "--subset", n,
                                    "--epochs", "1", "--workers", str(args.workers), "--image-size", str(args.image_size),
                                    "--batch-size", str(args.batch_size)])  # fmt: skip
            epoch = {"images": args.epoch_subset, "alexnet train (s)": ours_s, "alexnet train": ours_line,
                     "tutorial (s)": tut_s, "tutorial": tut_line, "ratio": tut_s / ours_s}  # fmt: skip
            print(f"one epoch of {n} images and the test, whole commands: alexnet train {ours_s:.1f} s, "
                  f"tutorial {tut_s:.1f} s: {tut_s / ours_s:.2f}x", flush=True)  # fmt: skip
            # The command line's steps, timed as the issue did: wall(12 steps) - wall(2 steps).
            variants = {"fashion-mnist preset (AdamW, crops, flips)": [],
                        "preset with SGD 0.01, no crops or flips": ["--optimizer", "sgd", "--lr", "0.01", "--no-crop",
                                                                    "--no-flip"]}  # fmt: skip
            cli_steps = {}
            for name, extra in variants.items():
                short, _ = wall([*cli, *extra, "--epochs", "1", "--max-steps", "2", "--out", str(out / "s2")])
                long, _ = wall([*cli, *extra, "--epochs", "1", "--max-steps", "12", "--out", str(out / "s12")])
                cli_steps[name] = {"max_steps_2_s": short, "max_steps_12_s": long,
                                   "images_per_s": 10 * args.batch_size / (long - short)}  # fmt: skip
                shutil.rmtree(out / "s2", ignore_errors=True), shutil.rmtree(out / "s12", ignore_errors=True)
                print(f"alexnet train steps 3-12, {name}: {cli_steps[name]['images_per_s']:.1f} images/s", flush=True)
            result["whole_epoch"], result["cli_steps"] = epoch, cli_steps
    result["machine"]["load_average_at_end"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratio"], indent=2))


if __name__ == "__main__":
    main()
