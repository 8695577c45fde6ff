"""A whole training run: wires data, model, optimizer, schedule, checkpoints and pictures together.

``fit(cfg)`` takes a resolved ``TrainConfig``; it knows nothing of argparse.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .. import plots
from ..config import TrainConfig
from ..data import DataConfig, DatasetInfo, build_loaders, build_test_loader
from ..data.sampling import mix_seed
from ..errors import AlexNetError
from ..models import create_model, model_info
from . import distributed as dist
from .cpu import has_fast_bfloat16, keep_freed_memory, subnormals_flushed
from .budget import BudgetKeeper, plan_epochs
from .checkpoint import (
    load_model_state, model_state, rank_partial, rank_rng_state, read_checkpoint, restore_training, rng_state,
    save_checkpoint, set_rng_state,
)  # fmt: skip
from .evaluate import evaluate
from .optim import LRSchedule, create_optimizer
from .signals import StopRequest
from .train import NonFiniteLoss, StepOptions, train_one_epoch

METRICS_FIELDS = [
    "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "images_per_s", "epoch_time_s",
]  # fmt: skip


class TrainingStopped(AlexNetError):
    """Training stopped on a signal after saving a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def select_device(name: str, *, local_rank: int | None = None, local_world_size: int = 1) -> torch.device:
    """The device ``--device`` names, checked: a one-line error where it is not there.

    Under torchrun (``local_rank`` given) each process takes the GPU of its local rank, so
    CUDA needs as many GPUs as processes on this machine.
    """
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise AlexNetError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AlexNetError(f"--device {name} was asked for, but no CUDA device is available")
        count = torch.cuda.device_count()
        if local_rank is not None:
            if local_world_size > count:
                raise AlexNetError(f"torchrun started {local_world_size} processes on this machine but it has {count} "
                                   f"GPU{'s' if count != 1 else ''}; use --nproc_per_node={count} or fewer")  # fmt: skip
            device = torch.device("cuda", local_rank)
        elif device.index is not None and device.index >= count:
            raise AlexNetError(f"--device {name}: this machine has {count} GPU{'s' if count != 1 else ''} "
                               f"(cuda:0 to cuda:{count - 1})")  # fmt: skip
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise AlexNetError(f"--device {name} was asked for, but MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise AlexNetError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """What --amp computes in here; None for float32 (off, or a CPU without fast bfloat16).

    bfloat16 on CUDA where supported, else float16 (with a GradScaler); bfloat16 on other
    devices, but on a CPU only where oneDNN has native bfloat16 kernels: elsewhere bfloat16
    is many times slower than float32 (engine/cpu.py), so --amp trains in float32 there.
    """
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and not has_fast_bfloat16():
        return None
    return torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def amp_context(device: torch.device, enabled: bool):
    """The one mixed-precision path: an autocast context (a no-op when off) and a GradScaler
    enabled only for float16."""
    dtype = amp_dtype(device, enabled)
    autocast = torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return autocast, scaler


def data_config(cfg: TrainConfig) -> DataConfig:
    kw: dict[str, Any] = dict(
        dataset=cfg.dataset,
        data_dir=cfg.data_dir,
        train_dir=cfg.train_dir,
        val_dir=cfg.val_dir,
        val_labels=cfg.val_labels,
        download=cfg.download,
        subset=cfg.subset,
        val_split=cfg.val_split,
        image_size=cfg.image_size,
        in_channels=cfg.in_channels,
        workers=cfg.workers,
        crop=cfg.crop,
        flip=cfg.flip,
        rotate=cfg.rotate,
        translate=cfg.translate,
    )
    for name in ("crop_padding", "pca_color"):  # None: leave the dataset's default in place
        if getattr(cfg, name) is not None:
            kw[name] = getattr(cfg, name)
    return DataConfig(**kw)


def check_input_size(model: nn.Module, name: str, in_channels: int, image_size: int) -> None:
    """An image too small for the network is a one-line error, not a pooling traceback."""
    try:
        with torch.no_grad():
            model.features(torch.zeros(1, in_channels, image_size, image_size))
    except RuntimeError:
        smallest = model_info(name).min_size
        raise AlexNetError(
            f"--image-size {image_size} is too small for {name}; the smallest it takes is {smallest} px"
        ) from None


def init_from_torchvision(model: nn.Module, path: str, in_channels: int, num_classes: int) -> list[str]:
    """Load a torchvision AlexNet weights file into alexnet_owt, adapting its ends.

    A 1-channel model gets conv1's kernels summed over RGB (a grey image x equals the RGB
    image (x, x, x), so the summed kernel gives the same response); a different class count
    gets a freshly initialised last layer. Returns what was adapted.
    """
    state = dict(model_state(read_checkpoint(path), path))
    notes = []
    w = state.get("features.0.weight")
    if w is not None and w.shape[1] != in_channels:
        if in_channels == 1:
            state["features.0.weight"] = w.sum(1, keepdim=True)
            notes.append("conv1 summed over RGB for 1 channel")
        else:
            raise AlexNetError(f"{path}: cannot adapt conv1 from {w.shape[1]} to {in_channels} channels")
    own = model.state_dict()
    for key in ("classifier.6.weight", "classifier.6.bias"):
        if key in state and state[key].shape != own[key].shape:
            state[key] = own[key]
            if key.endswith("weight"):
                notes.append(f"last layer replaced: {state.get('classifier.6.bias', own[key]).shape[0]} -> {num_classes} classes")
    load_model_state(model, state, path)
    return notes


class RunDirectory:
    """config.json, metrics.csv, checkpoints/, plots/ and TensorBoard events; rank 0 writes."""

    def __init__(self, root: Path, enabled: bool):
        self.root, self.enabled = root, enabled
        self.ckpt_dir, self.plot_dir = root / "checkpoints", root / "plots"
        self.metrics_path = root / "metrics.csv"
        self.writer = None
        if not enabled:
            return
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            self.plot_dir.mkdir(parents=True, exist_ok=True)
            probe = root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
            # A process killed while writing a checkpoint leaves its temporary file behind.
            for stale in self.ckpt_dir.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        except OSError as e:
            raise AlexNetError(f"cannot write to the output directory {root}: {e.strerror or e}") from None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(root))
        except ImportError:  # tensorboard is an optional extra
            self.writer = None

    def write_config(self, cfg: TrainConfig, extra: dict) -> None:
        if self.enabled:
            (self.root / "config.json").write_text(json.dumps({**cfg.to_dict(), **extra}, indent=2) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        with self.metrics_path.open() as f:
            return list(csv.DictReader(f))

    def append_metrics(self, row: dict, keep_epochs: int) -> None:
        """Add a row; rows beyond ``keep_epochs - 1`` (left by a run that died after writing them) go."""
        if not self.enabled:
            return
        rows = [r for r in self.read_metrics() if int(r["epoch"]) < keep_epochs] + [row]
        tmp = self.metrics_path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRICS_FIELDS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r[k] for k in METRICS_FIELDS})
        os.replace(tmp, self.metrics_path)
        if self.writer is not None:
            for k in METRICS_FIELDS[1:]:
                self.writer.add_scalar(k, float(row[k]), int(row["epoch"]))
            self.writer.flush()

    def write_test(self, result: dict, best_epoch: int) -> None:
        """test.json: the test split's figures for best.pt, read once at the end of the run."""
        if self.enabled:
            keep = {k: result[k] for k in ("top1", "top5", "loss", "n")}
            (self.root / "test.json").write_text(json.dumps({**keep, "checkpoint": "best.pt", "epoch": best_epoch}) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model}-{cfg.dataset}-{stamp}"


def log(msg: str) -> None:
    if dist.is_main_process():
        print(msg, flush=True)


def fit(cfg: TrainConfig, started: float | None = None) -> dict:
    """Train and evaluate as ``cfg`` says; returns the final evaluation and the run directory.

    ``started``: when the command started (a ``time.perf_counter()``), where a time budget
    counts from; now when not given.
    """
    started = time.perf_counter() if started is None else started
    launched = dist.launched_by_torchrun()
    device = select_device(cfg.device, local_rank=launched[2] if launched else None,
                           local_world_size=launched[3] if launched else 1)  # fmt: skip
    with subnormals_flushed(device.type == "cpu"):  # first: the intra-op threads started later inherit it
        return _fit(cfg, started, device)


def _fit(cfg: TrainConfig, started: float, device: torch.device) -> dict:
    rank, world_size, local_rank = dist.init_distributed(device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu":
        keep_freed_memory()
    seed_everything(cfg.seed + rank, cfg.deterministic)

    resume_ckpt = None
    if cfg.resume is not None:
        resume_path = Path(cfg.resume) / "checkpoints" / "last.pt"
        if not resume_path.is_file():
            raise AlexNetError(f"nothing to resume in {cfg.resume}: {resume_path} does not exist")
        resume_ckpt = read_checkpoint(resume_path)

    train_loader, val_loader, info = build_loaders(
        data_config(cfg),
        device=device,
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        tta=cfg.tta,
    )
    num_classes = cfg.num_classes or info.num_classes
    in_channels = info.in_channels
    if num_classes < info.num_classes:
        raise AlexNetError(f"--num-classes {num_classes} is fewer than the dataset's {info.num_classes} classes")
    # model_args is what load_checkpoint rebuilds the network from: every argument that shapes
    # it (init only decides the starting weights, which the checkpoint replaces).
    arch = cfg.model_kwargs()
    model_args = dict(name=cfg.model, num_classes=num_classes, in_channels=in_channels, dropout=cfg.dropout, **arch)
    model = create_model(
        cfg.model, num_classes=num_classes, in_channels=in_channels, dropout=cfg.dropout, init=cfg.init, **arch
    )
    check_input_size(model, cfg.model, in_channels, cfg.image_size)
    if cfg.init_from is not None and resume_ckpt is None:
        for note in init_from_torchvision(model, cfg.init_from, in_channels, num_classes):
            log(f"init-from: {note}")
    model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    global_batch = cfg.batch_size * world_size
    lr = cfg.lr * global_batch / 256 if cfg.scale_lr else cfg.lr
    optimizer = create_optimizer(
        model.parameters(), cfg.optimizer, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )
    autocast, scaler = amp_context(device, cfg.amp)
    precision = precision_name(amp_dtype(device, cfg.amp))
    if cfg.amp and precision == "float32":
        log("--amp: this CPU has no native bfloat16 kernels (oneDNN needs AVX-512 or Arm BF16), where bfloat16 "
            "is many times slower than float32; training in float32")  # fmt: skip
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    opts = StepOptions(
        autocast=autocast,
        scaler=scaler,
        clip_grad=cfg.clip_grad,
        channels_last=cfg.channels_last,
        max_steps=cfg.max_steps,
        sync_every=1 if device.type == "cpu" else 20,
        save_every=cfg.save_every,
        agree=dist.is_distributed(),  # under torchrun: every rank takes each step's decisions with the others
    )
    budget = None
    if cfg.time_budget > 0 and resume_ckpt is None:
        # A resumed run keeps the epochs its budget planned (they are in its configuration).
        budget = dist.broadcast_object(
            plan_epochs(model, cfg, train_loader, val_loader, loss_fn, opts, started=started)
        )
        log(budget.pop("message"))
        last_cut = budget["train_steps"] < budget["epochs"] * len(train_loader)
        cfg = dataclasses.replace(cfg, epochs=budget["epochs"], train_steps=budget["train_steps"] if last_cut else None)
    steps_per_epoch = len(train_loader)
    # Planned on epochs (or the budget's steps): --max-steps stops a run early but does not
    # reshape its schedule, so a run stopped and resumed follows the same learning rates as one
    # that was not.
    total_steps = cfg.train_steps or steps_per_epoch * cfg.epochs
    limits = [n for n in (cfg.max_steps, cfg.train_steps) if n is not None]
    opts.max_steps = min(limits) if limits else None
    schedule = LRSchedule(
        optimizer,
        cfg.scheduler,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
        step_epochs=cfg.step_epochs,
        gamma=cfg.gamma,
        patience=cfg.patience,
        min_lr=cfg.min_lr,
    )
    if budget is not None:  # the plan holds to the deadline: re-planned as the run goes (budget.py)
        opts.budget = BudgetKeeper(
            deadline=started + cfg.time_budget * 60, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
            step_s=budget["step_s"], eval_s=budget["eval_batch_s"] * len(val_loader),
            save_s=checkpoint_seconds(model), test_s=budget["eval_batch_s"] * test_batches(info, cfg),
            schedule=schedule, agree=dist.is_distributed(),
        )  # fmt: skip

    start_epoch, step, best_top1, best_epoch, nonfinite_skipped = 0, 0, -1.0, 0, 0
    if resume_ckpt is not None:
        restore_training(resume_ckpt, model, optimizer, schedule, scaler, str(cfg.resume))
        stored_lr = float(resume_ckpt.get("config", {}).get("lr", cfg.lr))
        if cfg.lr != stored_lr:  # --lr given with --resume: the schedule goes on from the new peak
            schedule.base_lrs = [b * cfg.lr / stored_lr for b in schedule.base_lrs]
        start_epoch, step = int(resume_ckpt["epoch"]), int(resume_ckpt["step"])
        best_top1 = float(resume_ckpt.get("best_top1", -1.0))
        best_epoch = int(resume_ckpt.get("best_epoch", 0))
        nonfinite_skipped = int(resume_ckpt.get("nonfinite_skipped", 0))
        saved_rng = rank_rng_state(resume_ckpt, rank, world_size)
        if saved_rng is not None:
            set_rng_state(saved_rng, device)
        else:  # saved with another world size: each rank draws anew, from its own seed, rank and step
            seed_everything(mix_seed(cfg.seed, rank, step), cfg.deterministic)
            log(f"--resume: the checkpoint has no random state for {world_size} process{'es' if world_size > 1 else ''}; "
                "each draws dropout masks anew from the seed, its rank and the step")  # fmt: skip

    net: nn.Module = model
    if world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # DDP first: compiled around it, its buckets split the graph (DDPOptimizer)
        net = torch.compile(net)

    error = None
    try:  # rank 0 makes the folder; where it cannot, every rank stops with it
        run = RunDirectory(Path(cfg.resume or cfg.out or default_run_dir(cfg)), enabled=dist.is_main_process())
    except AlexNetError as e:
        error = e
    dist.raise_together(error, device)
    extra = {"resolved": {"device": str(device), "world_size": world_size, "global_batch": global_batch, "lr": lr,
                          "precision": precision, "time_budget": budget,
                          "num_classes": num_classes, "in_channels": in_channels, "class_names": info.class_names,
                          "mean": list(info.mean), "std": list(info.std)}}  # fmt: skip
    run.write_config(cfg, extra)
    log(
        f"{cfg.model} on {info.name} ({info.train_size} train / {info.val_size} val images"
        f"{' kept apart from train' if info.val_split else ''}, {num_classes} classes, "
        f"{in_channels}x{cfg.image_size}x{cfg.image_size}), device {device}, world size {world_size}, "
        f"batch {global_batch}, lr {lr:g}, run directory {run.root}"
    )

    def checkpoint(epoch: int, metrics_row: dict | None, unfinished: dict | None = None, *, at_step: int | None = None,
                   skipped_now: int = 0) -> dict | None:  # fmt: skip
        """What rank 0 saves (None on the other ranks); a collective: every rank calls it.

        ``epoch`` completed epochs; ``unfinished``: the train metrics of an epoch cut short.
        Mid-epoch saves pass the step reached (``at_step``) and the bad batches skipped so far
        in this epoch (``skipped_now``), which fit has not counted yet.
        """
        if not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():
            # Never replace a good checkpoint with broken weights. (Every rank has the same weights
            # and so stops here together.)
            raise NonFiniteLoss(f"the weights became NaN or infinite by step {step}; the last good checkpoint is kept; "
                                "try a lower --lr or --clip-grad 1.0")  # fmt: skip
        # Each rank's own random state (its dropout masks) and running sums of an unfinished epoch.
        every = dist.all_gather_object({"rng": rng_state(device), "partial": unfinished["partial"] if unfinished else None})
        if not dist.is_main_process():
            return None
        return {
            "model": dist.unwrap(net).state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step": step if at_step is None else at_step,
            "rng": every[0]["rng"],
            "rng_per_rank": [r["rng"] for r in every],
            "config": cfg.to_dict(),
            "model_args": model_args,
            "class_names": list(info.class_names),
            "preprocess": info.preprocess,
            "best_top1": best_top1,
            "best_epoch": best_epoch,
            "metrics": metrics_row,
            "batch_in_epoch": unfinished["batches"] if unfinished else 0,
            "partial": unfinished["partial"] if unfinished else None,
            "partial_per_rank": [r["partial"] for r in every] if unfinished else None,
            "nonfinite_skipped": nonfinite_skipped + skipped_now,
        }

    def save_on_rank0(state: dict | None, *names: str, metrics: dict | None = None) -> None:
        """Rank 0 writes the metrics row and the checkpoint (``state`` is None elsewhere); a
        collective: where rank 0 cannot write, every rank stops with it."""
        error = None
        try:
            if metrics is not None:
                run.append_metrics(metrics, keep_epochs=int(metrics["epoch"]))
            for name in names if state is not None else ():
                save_checkpoint(state, run.ckpt_dir / name)
        except AlexNetError as e:
            error = e
        except OSError as e:
            error = AlexNetError(f"cannot write to {run.root}: {e.strerror or e}")
        dist.raise_together(error, device)

    result: dict = {}
    save_s = checkpoint_seconds(model)  # until one is timed
    epoch, stopped_by = start_epoch, None
    weights_are_best, evaluated_epoch = False, start_epoch
    with StopRequest() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            # A signal that came during the last step or the evaluation, on any rank: all stop here.
            signum = dist.agree_max(stop.signum, device)
            if signum:
                stopped_by = signal.Signals(signum).name
                break
            if opts.max_steps is not None and step >= opts.max_steps:
                break
            first = epoch == start_epoch and resume_ckpt is not None
            start_batch = int(resume_ckpt.get("batch_in_epoch", 0)) if first else 0
            step_before = step
            train_loader.set_epoch(epoch, start_batch=start_batch)
            opts.skip_nonfinite = cfg.skip_nonfinite - nonfinite_skipped

            def save_mid_epoch(unfinished: dict, epoch: int = epoch) -> None:
                state = checkpoint(epoch, None, unfinished, at_step=unfinished["step"],
                                   skipped_now=unfinished["nonfinite_skipped"])  # fmt: skip
                save_on_rank0(state, "last.pt")

            t0 = time.perf_counter()
            if opts.budget is not None:
                opts.budget.start_stretch(step)
            train_metrics, step = train_one_epoch(
                net, train_loader, optimizer, schedule, loss_fn, step=step, opts=opts,
                progress=cfg.progress and dist.is_main_process(), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                start_batch=start_batch, partial=rank_partial(resume_ckpt, rank, world_size) if first else None, stop=stop,
                save=save_mid_epoch,
            )  # fmt: skip
            nonfinite_skipped += train_metrics["nonfinite_skipped"]
            signum = train_metrics["signal"]
            if signum and not train_metrics["complete"]:
                # No evaluation: the user asked to stop; save exactly where the epoch stands.
                stopped_by = signal.Signals(signum).name
                # No rank leaves before the checkpoint is on disk (torchrun would stop rank 0).
                save_on_rank0(checkpoint(epoch, None, train_metrics), "last.pt")
                break
            train_metrics = reduce_train_metrics(train_metrics, device)
            result = evaluate(
                net, val_loader, num_classes, autocast=autocast, channels_last=cfg.channels_last,
                keep_mistakes=32, keep_samples=16, progress=cfg.progress and dist.is_main_process(), desc="validate",
            )  # fmt: skip
            epoch_time = time.perf_counter() - t0
            if opts.budget is not None:  # re-plan from this epoch's times, before they are saved
                eval_s = epoch_time - train_metrics["time_s"]
                step_s = train_metrics["time_s"] / max(1, train_metrics["batches"] - start_batch)
                opts.budget.check(step, step_s=step_s, eval_s=eval_s, save_s=save_s)
                cfg = follow_budget(cfg, opts.budget.total, steps_per_epoch)
                opts.max_steps = min(n for n in (cfg.max_steps, opts.budget.total) if n is not None)
            cut = schedule.epoch_end(1.0 - result["top1"]) if train_metrics["complete"] else False
            row = {
                "epoch": epoch + 1,
                "lr": f"{train_metrics['lr']:.6g}",
                "train_loss": f"{train_metrics['train_loss']:.6f}",
                "train_acc": f"{train_metrics['train_acc']:.6f}",
                "val_loss": f"{result['loss']:.6f}",
                "val_top1": f"{result['top1']:.6f}",
                "val_top5": f"{result['top5']:.6f}",
                "images_per_s": f"{train_metrics['images_per_s']:.2f}",
                "epoch_time_s": f"{epoch_time:.2f}",
            }
            improved = result["top1"] > best_top1
            if improved:
                best_top1, best_epoch = result["top1"], epoch + 1
            weights_are_best, evaluated_epoch = improved, epoch + 1
            done = train_metrics["complete"]
            saving = time.perf_counter()
            state = checkpoint(epoch + 1 if done else epoch, row, None if done else train_metrics)
            # best.pt before last.pt: a run killed between the two never has a last.pt naming a
            # best epoch whose best.pt was not written.
            save_on_rank0(state, *(["best.pt"] if improved else []), "last.pt", metrics=row)
            save_s = time.perf_counter() - saving
            skipped = getattr(train_loader, "skipped", 0) + getattr(val_loader, "skipped", 0)
            log(
                f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_metrics['train_loss']:.4f} "
                f"acc {100 * train_metrics['train_acc']:.2f}%  val loss {result['loss']:.4f} "
                f"top-1 {100 * result['top1']:.2f}% top-5 {100 * result['top5']:.2f}%  "
                f"{train_metrics['images_per_s']:.0f} img/s  {epoch_time:.0f}s  lr {train_metrics['lr']:.3g}"
                + ("" if train_metrics["complete"] else f"  (stopped at step {step}, "
                   + ("the time budget's last step)" if step == cfg.train_steps else "--max-steps)"))
                + (f"  (time budget: steps ran slower than planned; the run now ends at step {cfg.train_steps or step})"
                   if opts.budget is not None and opts.budget.cuts and opts.budget.cuts[-1][0] > step_before else "")
                + ("  (lr cut)" if cut else "")
                + (f"  [{skipped} unreadable images skipped]" if skipped else "")
            )
    if stopped_by is not None:
        run.close()
        dist.cleanup()
        raise TrainingStopped(
            f"stopped by {stopped_by} at step {step}; checkpoint saved, continue with: alexnet train --resume {run.root}",
            128 + getattr(signal, stopped_by),
        )
    dist.barrier()
    if not result:
        limit = f" and --max-steps {cfg.max_steps}" if cfg.max_steps is not None else ""
        limit += f" and the time budget's {cfg.train_steps} steps" if cfg.train_steps is not None else ""
        log(f"nothing to train: the run is at epoch {start_epoch}, step {step}, of --epochs {cfg.epochs}"
            f"{limit}; give more to go on")  # fmt: skip
        run.close()
        dist.cleanup()
        return {"eval": result, "test": None, "run_dir": str(run.root), "step": step}
    test = None
    if info.val_split and cfg.test:
        # The test split, read now and only now, judges the weights validation chose (best.pt).
        if not weights_are_best:
            best = best_weights(run)
            if best is None:
                log(f"{run.ckpt_dir / 'best.pt'} is missing: the test split judges the last weights instead")
            else:
                load_model_state(model, best, str(run.ckpt_dir / "best.pt"))
        test_loader, _ = build_test_loader(
            data_config(cfg), device=device, batch_size=cfg.eval_batch_size or cfg.batch_size, seed=cfg.seed,
            rank=rank, world_size=world_size, tta=cfg.tta,
        )  # fmt: skip
        test = evaluate(
            net, test_loader, num_classes, autocast=autocast, channels_last=cfg.channels_last,
            keep_mistakes=32, keep_samples=16, progress=cfg.progress and dist.is_main_process(), desc="test",
        )  # fmt: skip
    final = test or result
    if dist.is_main_process():
        write_plots(run, final, info, split="test" if test is not None or not (info.val_split or info.name == "imagefolder")
                    else "validation")  # fmt: skip
        if test is not None:
            run.write_test(test, best_epoch)
            log(
                f"validation top-1 {100 * best_top1:.2f}% (best.pt, epoch {best_epoch}, on {info.val_size} training "
                f"images kept apart); test accuracy: {100 * test['top1']:.2f}% top-1, {100 * test['top5']:.2f}% top-5 "
                f"on {test['n']} {info.name} test images, read once with best.pt; run directory {run.root}"
            )
        elif info.val_split:
            log(f"validation top-1 {100 * best_top1:.2f}% (best.pt, epoch {best_epoch}, on {info.val_size} training "
                f"images kept apart); the test split was not read (--no-test); run directory {run.root}")  # fmt: skip
        else:
            split = "validation" if info.name == "imagefolder" else "test"
            log(
                f"test accuracy: {100 * result['top1']:.2f}% top-1, {100 * result['top5']:.2f}% top-5 "
                f"on {result['n']} {info.name} {split} images (epoch {evaluated_epoch}, step {step}"
                + ("" if info.name == "imagefolder" else "; with --val-split 0 this split also chose best.pt")
                + f"); run directory {run.root}"
            )
    run.close()
    dist.cleanup()
    return {"eval": result, "test": test, "best_top1": best_top1, "best_epoch": best_epoch, "run_dir": str(run.root),
            "step": step}  # fmt: skip


def best_weights(run: RunDirectory) -> dict | None:
    """best.pt's weights on every rank (rank 0 reads the file and sends them); None without one."""
    state, path = None, run.ckpt_dir / "best.pt"
    if dist.is_main_process() and path.is_file():
        state = model_state(read_checkpoint(path), str(path))
    return dist.broadcast_object(state)


def follow_budget(cfg: TrainConfig, total: int, steps_per_epoch: int) -> TrainConfig:
    """``cfg`` with the run's length as the budget keeper now plans it (what checkpoints and a resume keep)."""
    planned = cfg.train_steps or cfg.epochs * steps_per_epoch
    if total >= planned:
        return cfg
    epochs = max(1, -(-total // steps_per_epoch))
    return dataclasses.replace(cfg, epochs=epochs, train_steps=total if total < epochs * steps_per_epoch else None)


def checkpoint_seconds(model: nn.Module) -> float:
    """A first guess at writing a checkpoint (the weights and two optimizer buffers each, at
    200 MB/s) until one is timed."""
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters()) / 200e6


def test_batches(info: DatasetInfo, cfg: TrainConfig) -> int:
    """Batches of the final test evaluation (none without a validation split, where the last
    epoch's evaluation is the final one, or with --no-test)."""
    if not info.val_split or not cfg.test:
        return 0
    return -(-info.test_size // (cfg.eval_batch_size or cfg.batch_size))


def reduce_train_metrics(m: dict, device: torch.device) -> dict:
    """Average the per-rank training loss and accuracy over all samples of all ranks."""
    if dist.get_world_size() == 1 or "seen" not in m:
        return m
    sums = m["partial"]  # this rank's running sums: a rank that skipped every step adds zeros, not NaN
    t = torch.tensor([sums["loss_sum"], sums["correct"], sums["seen"], m["images_per_s"]], dtype=torch.float64,
                     device=device)  # fmt: skip
    loss_sum, correct, seen, rate = dist.all_reduce_sum(t).tolist()
    nan = float("nan")
    return {**m, "train_loss": loss_sum / seen if seen else nan, "train_acc": correct / seen if seen else nan,
            "images_per_s": rate}  # fmt: skip


def write_plots(run: RunDirectory, result: dict, info: DatasetInfo, split: str = "validation") -> None:
    """plots/: curves.png, confusion.png and .json, misclassified.png, samples.png, of ``result``
    (the final evaluation of ``split``)."""
    rows = run.read_metrics()
    if rows:
        plots.plot_curves(rows, run.plot_dir / "curves.png")
    # --num-classes may exceed the dataset's classes: the extra outputs are named by number.
    names = list(info.class_names) + [str(i) for i in range(len(info.class_names), len(result["confusion"]))]
    plots.plot_confusion(result["confusion"], names, run.plot_dir / "confusion.png")
    (run.plot_dir / "confusion.json").write_text(json.dumps({"class_names": names, "matrix": result["confusion"]}) + "\n")
    if result["mistakes"]:
        imgs, titles = [], []
        for img, true, pred in result["mistakes"]:
            imgs.append(img)
            titles.append(f"true {names[true]}\npred {names[pred]}")
        plots.plot_images(imgs, titles, run.plot_dir / "misclassified.png", mean=info.mean, std=info.std,
                          suptitle=f"Misclassified {split} images")  # fmt: skip
    if result.get("samples"):
        imgs, labels, probs = zip(*result["samples"])
        plots.plot_predictions(imgs, probs, names, run.plot_dir / "samples.png", true_labels=labels,
                               mean=info.mean, std=info.std, suptitle=f"{split.capitalize()} samples and their top-3 predictions")  # fmt: skip
