"""Training and inference throughput: the usual PyTorch AlexNet pipeline against this package's.

(a) usual: what AlexNet tutorials do. Fashion-MNIST through a Dataset that does what
    ``torchvision.datasets.FashionMNIST.__getitem__`` does (a PIL image per sample), then
    per-sample ``Resize(S)`` + ``ToTensor()``, a shuffling DataLoader with 2 worker
    processes, the paper's network with ``torch.nn.LocalResponseNorm``, float32,
    contiguous tensors, SGD.
(b) ours: ``alexnet.data.build_loaders`` (the split as one uint8 tensor on the device, a
    batch by indexing, crop/flip/resize/normalise on the whole batch), the fused LRN,
    channels_last, the engine's ``train_one_epoch``; bfloat16 autocast with ``--amp``.

Both train the same network from the same weights with the same optimizer. Rounds
alternate (a) and (b) in one process after a warm-up, so both see the same machine; the
figure is the median over rounds. Peak memory on the CPU is the peak resident set size of
a separate process that builds one pipeline alone and trains 2 steps (the DataLoader
workers' own memory is not included); on CUDA, ``torch.cuda.max_memory_allocated``.

    alexnet bench --model alexnet_paper --image-size 227 --batch-size 128
    python benchmarks/throughput.py ...        (the same)

``--only ours --data synthetic`` times this package's pipeline alone on generated images of
any channel and class count (ImageNet's shape: ``--in-channels 3 --num-classes 1000``), where
Fashion-MNIST is not at hand or the tutorial pipeline is beside the point (a GPU's throughput:
``make gpu-check``); ``--compile`` wraps our model in ``torch.compile``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .data import DataConfig, build_loaders, load_fashion_mnist
from .engine.cpu import keep_freed_memory
from .engine.runtime import amp_context, amp_dtype, precision_name, select_device
from .engine.optim import LRSchedule, create_optimizer
from .engine.train import StepOptions, train_one_epoch
from .errors import AlexNetError
from .models import LocalResponseNorm, create_model


class PILFashionMNIST(Dataset):
    """``torchvision.datasets.FashionMNIST.__getitem__`` over arrays already read: a PIL image per sample."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform):
        self.data, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index].numpy(), mode="L")
        return self.transform(img), int(self.targets[index])


def with_torch_lrn(model: nn.Module) -> nn.Module:
    """The same network and weights with ``torch.nn.LocalResponseNorm`` in place of ours."""
    model = copy.deepcopy(model)
    for name, child in list(model.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, LocalResponseNorm):
                if sub.groups != 1:
                    raise AlexNetError("the usual pipeline has no grouped LRN; benchmark alexnet_paper or alexnet_owt")
                setattr(child, attr, nn.LocalResponseNorm(sub.size, sub.alpha, sub.beta, sub.k))
    return model


class PeakRSS:
    """Peak CUDA memory allocated while the block runs (on the CPU: sampled RSS, which the
    caller replaces by a per-pipeline child process's peak, see ``peak_memory``)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.005)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()


class FirstBatches:
    """The first ``n`` batches of a loader, as a loader (for ``train_one_epoch``)."""

    def __init__(self, loader, n: int):
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.n:
                return
            yield batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def usual_train_phase(model, optimizer, loader_factory, steps: int, device: torch.device) -> tuple[float, int]:
    """A tutorial's loop: fresh DataLoader iterator, one untimed batch, then ``steps`` timed steps."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    it = iter(loader_factory())
    next(it)  # worker start-up is a per-epoch cost; leave it out, as for ours
    with PeakRSS(device) as mem:
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            images, labels = next(it)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            optimizer.zero_grad()
            loss_fn(model(images), labels).backward()
            optimizer.step()
        sync(device)
        elapsed = time.perf_counter() - start
    del it
    return steps * loader_factory.batch_size / elapsed, mem.peak


def our_train_phase(model, optimizer, loader, steps: int, epoch: int, device, opts: StepOptions) -> tuple[float, int]:
    schedule = LRSchedule(optimizer, "none", total_steps=10**9, steps_per_epoch=len(loader))
    loader.set_epoch(epoch)
    first = FirstBatches(loader, steps + 1)
    it = iter(first)
    next(it)  # same treatment as the usual pipeline: the first batch is untimed
    rest = FirstBatches(_Resume(it), steps)
    with PeakRSS(device) as mem:
        sync(device)
        start = time.perf_counter()
        trained, _ = train_one_epoch(model, rest, optimizer, schedule, nn.CrossEntropyLoss(), step=0, opts=opts)
        sync(device)
        elapsed = time.perf_counter() - start
    return trained.progress.sums.seen / elapsed, mem.peak


class _Resume:
    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return self.it


@torch.inference_mode()
def inference_rate(model, x: torch.Tensor, iters: int, device) -> float:
    model.eval()
    model(x)
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        model(x)
    sync(device)
    return iters * x.shape[0] / (time.perf_counter() - start)


def machine_info(device: torch.device) -> dict:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    model_name = ""
    try:
        model_name = next(
            (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
            "",
        )
    except OSError:
        pass
    info = {
        "cpu": model_name or platform.processor(),
        "cores": os.cpu_count(),
        "cpu_flags": sorted(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def fashion_mnist_arrays(cfg: DataConfig):
    ds = load_fashion_mnist(cfg.data_dir, download=cfg.download)
    return ds.train_images[:, 0], ds.train_labels


def build(args: argparse.Namespace, device: torch.device, which: tuple[str, ...] = ("usual", "ours")):
    """The pipelines asked for, from the same initial weights: {name: (model, optimizer, loader)}, opts, autocast."""
    torch.manual_seed(0)
    channels = in_channels(args)
    base = create_model(args.model, num_classes=args.num_classes, in_channels=channels, init="torch")
    sgd = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)
    if args.data == "synthetic":  # enough images for every timed step, the warm-up's and the rounds'
        n = args.batch_size * (args.steps + 1) * 2
        data_cfg = DataConfig(dataset="synthetic", image_size=args.image_size, in_channels=channels, synthetic_train=n,
                              synthetic_val=args.batch_size, synthetic_classes=args.num_classes)  # fmt: skip
    else:
        data_cfg = DataConfig(dataset="fashion-mnist", data_dir=args.data_dir, image_size=args.image_size, download=False)
    pipelines = {}
    if "usual" in which:
        from torchvision import transforms  # the usual pipeline's alone: not loaded for --only ours

        model = with_torch_lrn(base).to(device)
        images, labels = fashion_mnist_arrays(data_cfg)
        dataset = PILFashionMNIST(images, labels, transforms.Compose([transforms.Resize(args.image_size), transforms.ToTensor()]))

        def usual_loader():
            return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                              pin_memory=device.type == "cuda", drop_last=True)  # fmt: skip

        usual_loader.batch_size = args.batch_size
        pipelines["usual"] = (model, torch.optim.SGD(model.parameters(), **sgd), usual_loader)
    if "ours" in which:
        model = base.to(device).to(memory_format=torch.channels_last)
        loader, _, _ = build_loaders(data_cfg, device=device, batch_size=args.batch_size)
        optimizer = create_optimizer(model.parameters(), "sgd", **sgd)
        pipelines["ours"] = (torch.compile(model) if args.compile else model, optimizer, loader)
    del base
    autocast, scaler = amp_context(device, args.amp)
    opts = StepOptions(autocast=autocast, scaler=scaler, channels_last=True, sync_every=1 if device.type == "cpu" else 20)
    return pipelines, opts, autocast


def in_channels(args: argparse.Namespace) -> int:
    return args.in_channels or (3 if args.data == "synthetic" else 1)


def _peak_rss_child(kind: str, args: argparse.Namespace) -> int:
    """In a fresh process: build one pipeline, train 2 steps, return the process's peak RSS in bytes."""
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    if not args.no_keep_memory:
        keep_freed_memory()
    pipelines, opts, _ = build(args, device, which=(kind,))
    if kind == "usual":
        usual_train_phase(*pipelines["usual"], 2, device)
    else:
        our_train_phase(*pipelines["ours"], 2, 0, device, opts)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the (large) parent across exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AlexNetError("cannot read the peak memory (/proc/self/status has no VmHWM)")


def peak_memory(kind: str, args: argparse.Namespace) -> int:
    """Peak memory of one pipeline on its own, in a child process (RSS is per process)."""
    import subprocess
    import sys

    params = {k: v for k, v in vars(args).items() if k not in ("run",)} | {"threads": torch.get_num_threads()}
    code = (
        "import argparse, json, sys; from alexnet.bench import _peak_rss_child; "
        "print(_peak_rss_child(sys.argv[1], argparse.Namespace(**json.loads(sys.argv[2]))))"
    )
    done = subprocess.run([sys.executable, "-c", code, kind, json.dumps(params)], capture_output=True, text=True)
    if done.returncode != 0:
        raise AlexNetError(f"the {kind} memory measurement failed: {done.stderr.strip().splitlines()[-1:]}")
    return int(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    device = select_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif not args.no_keep_memory:
        keep_freed_memory()  # process-wide: the usual pipeline, in the same process, gains from it too
    if min(args.batch_size, args.rounds, args.steps, args.num_classes, *(args.infer_batch_sizes or [1])) < 1:
        raise AlexNetError("--batch-size, --rounds, --steps, --num-classes and --infer-batch-sizes must be positive")
    if args.data == "synthetic" and args.only != "ours":
        raise AlexNetError("--data synthetic times our pipeline alone: add --only ours")
    one_sided = [flag for flag, on in (("--amp", args.amp), ("--compile", args.compile)) if on]
    if one_sided and args.only != "ours":
        # The usual pipeline is float32 and eager as its users run it; a ratio against ours with these
        # would mix a precision or compiler change into the pipeline comparison.
        raise AlexNetError(f"{' and '.join(one_sided)} change our pipeline only, so the ratio would not compare "
                           "like with like: add --only ours")  # fmt: skip
    kinds = ("ours",) if args.only == "ours" else ("usual", "ours")
    pipelines, opts, autocast = build(args, device, which=kinds)
    phases = {"usual": lambda steps, r: usual_train_phase(*pipelines["usual"], steps, device),
              "ours": lambda steps, r: our_train_phase(*pipelines["ours"], steps, r, device, opts)}  # fmt: skip

    # Warm-up: one short phase each (allocator, oneDNN primitive caches, worker start-up, compilation).
    for kind in kinds:
        phases[kind](1, 0)
    rows: dict[str, list] = {f"{k}_{m}": [] for k in kinds for m in ("train", "mem")}
    for r in range(args.rounds):
        for kind in kinds:
            rate, mem = phases[kind](args.steps, r + 1)
            rows[f"{kind}_train"].append(rate)
            rows[f"{kind}_mem"].append(mem)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {rows[f'{k}_train'][-1]:.1f} img/s" for k in kinds), flush=True)

    infer = {}
    for batch in args.infer_batch_sizes or (1, args.batch_size):
        x = torch.randn(batch, in_channels(args), args.image_size, args.image_size, device=device)
        xl = x.contiguous(memory_format=torch.channels_last)
        iters = max(args.infer_iters, 20) if batch == 1 else args.infer_iters
        rates: dict[str, list] = {k: [] for k in kinds}
        for _ in range(args.rounds):
            if "usual" in rates:
                rates["usual"].append(inference_rate(pipelines["usual"][0], x, iters, device))
            with autocast:
                rates["ours"].append(inference_rate(pipelines["ours"][0], xl, iters, device))
        infer[batch] = {k: statistics.median(v) for k, v in rates.items()}

    med = {k: statistics.median(v) for k, v in rows.items()}
    if device.type == "cpu":  # in-process RSS mixes both pipelines; measure each alone
        del pipelines, phases
        for kind in kinds:
            rows[f"{kind}_mem"] = [peak_memory(kind, args)]
    result = {
        "command": "alexnet bench " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                               if k not in ("json", "run", "command") and v not in (None, False)),  # fmt: skip
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "amp": args.amp,
        "precision": precision_name(amp_dtype(device, args.amp)),
        "machine": machine_info(device),
        "compile": args.compile,
        "channels": in_channels(args),
        "num_classes": args.num_classes,
        "data": args.data,
        "train_images_per_s": {k: med[f"{k}_train"] for k in kinds},
        "train_rounds": {k: rows[f"{k}_train"] for k in kinds},
        "peak_memory_mib": {k: max(rows[f"{k}_mem"]) / 2**20 for k in kinds},
        "inference_images_per_s": {str(b): rates for b, rates in infer.items()},
    }
    if "usual" in kinds:
        result["train_images_per_s"]["ratio"] = med["ours_train"] / med["usual_train"]
        for rates in result["inference_images_per_s"].values():
            rates["ratio"] = rates["ours"] / rates["usual"]
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_table(r: dict) -> None:
    m = r["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cores']} cores ({', '.join(m['cpu_flags']) or 'no AVX-512'})"
    print(f"\n{r['model']}, {r['channels']}x{r['image_size']}x{r['image_size']}, batch {r['batch_size']}, "
          f"{r['precision']}{' (--amp)' if r['amp'] else ''}{', compiled' if r['compile'] else ''}; {where}, "
          f"torch {m['torch']}, {m['threads']} threads, {m['device']}")  # fmt: skip
    kinds = [k for k in ("usual", "ours") if k in r["train_images_per_s"]]
    both = len(kinds) == 2
    print(f"{'':28}" + "".join(f"{k:>12}" for k in kinds) + (f"{'ratio':>9}" if both else ""))
    rows = [("train images/s", r["train_images_per_s"])]
    rows += [(f"inference images/s, batch {b}", v) for b, v in r["inference_images_per_s"].items()]
    for label, v in rows:
        print(f"{label:28}" + "".join(f"{v[k]:12.1f}" for k in kinds) + (f"{v['ratio']:8.2f}x" if both else ""))
    pm = r["peak_memory_mib"]
    print(f"{'peak memory while training':28}" + "".join(f"{pm[k]:9.0f}MiB" for k in kinds))
