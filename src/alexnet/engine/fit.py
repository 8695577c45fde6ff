"""A whole training run: wires data, model, optimizer, schedule, checkpoints and pictures together.

``fit(cfg)`` takes a resolved ``TrainConfig``; it knows nothing of argparse.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path

import torch
import torch.nn as nn

from .. import plots
from ..config import TrainConfig
from ..data import DatasetInfo, build_loaders, build_test_loader
from ..data.sampling import mix_seed
from ..errors import AlexNetError
from ..models import create_model, model_info
from ..run_dir import RunDirectory
from . import distributed as dist
from .cpu import keep_freed_memory, subnormals_flushed
from .budget import BudgetKeeper, plan_epochs
from .checkpoint import (
    CheckpointSaver, checkpoint_seconds, load_model_state, model_state, rank_rng_state, rank_sums, read_checkpoint,
    read_resume_checkpoint, restore_training, set_rng_state,
)  # fmt: skip
from .evaluate import evaluate
from .optim import LRSchedule, create_optimizer
from .runtime import amp_context, amp_dtype, precision_name, seed_everything, select_device
from .signals import StopRequest
from .train import EpochResult, StepOptions, train_one_epoch

class TrainingStopped(AlexNetError):
    """Training stopped on a signal after saving a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


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


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model}-{cfg.dataset}-{stamp}"


def log(msg: str) -> None:
    if dist.is_main_process():
        print(msg, flush=True)


def fit(cfg: TrainConfig, started: float | None = None, resume_ckpt: dict | None = None) -> dict:
    """Train and evaluate as ``cfg`` says; returns the final evaluation and the run directory.

    ``started``: when the command started (a ``time.perf_counter()``), where a time budget
    counts from; now when not given.
    """
    started = time.perf_counter() if started is None else started
    launched = dist.launched_by_torchrun()
    device = select_device(cfg.device, local_rank=launched[2] if launched else None,
                           local_world_size=launched[3] if launched else 1)  # fmt: skip
    with subnormals_flushed(device.type == "cpu"):  # first: the intra-op threads started later inherit it
        return _fit(cfg, started, device, resume_ckpt)


def _fit(cfg: TrainConfig, started: float, device: torch.device, resume_ckpt: dict | None) -> dict:
    rank, world_size, local_rank = dist.init_distributed(device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu":
        keep_freed_memory()
    seed_everything(cfg.seed + rank, cfg.deterministic)

    if cfg.resume is not None and resume_ckpt is None:
        resume_ckpt = read_resume_checkpoint(cfg.resume)

    train_loader, val_loader, info = build_loaders(
        cfg.data_config(),
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

    start_epoch, step = 0, 0
    if resume_ckpt is not None:
        restore_training(resume_ckpt, model, optimizer, schedule, scaler, str(cfg.resume))
        stored_lr = float(resume_ckpt.get("config", {}).get("lr", cfg.lr))
        if cfg.lr != stored_lr:  # --lr given with --resume: the schedule goes on from the new peak
            schedule.base_lrs = [b * cfg.lr / stored_lr for b in schedule.base_lrs]
        start_epoch, step = int(resume_ckpt["epoch"]), int(resume_ckpt["step"])
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

    run = RunDirectory(cfg.resume or cfg.out or default_run_dir(cfg))
    error = None
    try:  # rank 0 makes the folder; where it cannot, every rank stops with it
        if dist.is_main_process():
            run.prepare()
    except AlexNetError as e:
        error = e
    dist.raise_together(error, device)
    extra = {"resolved": {"device": str(device), "world_size": world_size, "global_batch": global_batch, "lr": lr,
                          "precision": precision, "time_budget": budget,
                          "num_classes": num_classes, "in_channels": in_channels, "class_names": info.class_names,
                          "mean": list(info.mean), "std": list(info.std)}}  # fmt: skip
    if dist.is_main_process():
        run.write_config({**cfg.to_dict(), **extra})
    log(
        f"{cfg.model} on {info.name} ({info.train_size} train / {info.val_size} val images"
        f"{' kept apart from train' if info.val_split else ''}, {num_classes} classes, "
        f"{in_channels}x{cfg.image_size}x{cfg.image_size}), device {device}, world size {world_size}, "
        f"batch {global_batch}, lr {lr:g}, run directory {run.root}"
    )
    saver = CheckpointSaver(run, model=model, net=net, optimizer=optimizer, schedule=schedule, scaler=scaler, cfg=cfg,
                            model_args=model_args, class_names=info.class_names, preprocess=info.preprocess,
                            device=device)  # fmt: skip
    if resume_ckpt is not None:
        saver.resume_from(resume_ckpt)
    evaluate_kw = dict(autocast=autocast, channels_last=cfg.channels_last, keep_mistakes=32, keep_samples=16,
                       progress=cfg.progress and dist.is_main_process())  # fmt: skip

    result: dict = {}
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

            # Train: a resumed run starts its first epoch where the checkpoint stopped, with its sums.
            resuming = epoch == start_epoch and resume_ckpt is not None
            start_batch = int(resume_ckpt.get("batch_in_epoch", 0)) if resuming else 0
            step_before, t0 = step, time.perf_counter()
            train_loader.set_epoch(epoch, start_batch=start_batch)
            opts.skip_nonfinite = cfg.skip_nonfinite - saver.nonfinite_skipped
            if opts.budget is not None:
                opts.budget.start_stretch(step)
            trained, step = train_one_epoch(
                net, train_loader, optimizer, schedule, loss_fn, step=step, opts=opts,
                progress=cfg.progress and dist.is_main_process(), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                start_batch=start_batch, sums=rank_sums(resume_ckpt, rank, world_size) if resuming else None, stop=stop,
                save=lambda progress, epoch=epoch: saver.save_unfinished(epoch, progress, mid_epoch=True),
            )  # fmt: skip
            saver.nonfinite_skipped += trained.progress.nonfinite_skipped
            if trained.signal and not trained.progress.complete:
                # No evaluation: the user asked to stop; save exactly where the epoch stands.
                # No rank leaves before the checkpoint is on disk (torchrun would stop rank 0).
                stopped_by = signal.Signals(trained.signal).name
                saver.save_unfinished(epoch, trained.progress, mid_epoch=False)
                break

            # Validate, re-plan the budget from this epoch's times, step the epoch-wise schedule.
            trained = reduce_train_metrics(trained, device)
            result = evaluate(net, val_loader, num_classes, desc="validate", **evaluate_kw)
            epoch_time = time.perf_counter() - t0
            if opts.budget is not None:  # before the times are saved with the checkpoint
                step_s = trained.time_s / max(1, trained.progress.batches - start_batch)
                opts.budget.check(step, step_s=step_s, eval_s=epoch_time - trained.time_s, save_s=saver.save_s)
                cfg = saver.cfg = follow_budget(cfg, opts.budget.total, steps_per_epoch)
                opts.max_steps = min(n for n in (cfg.max_steps, opts.budget.total) if n is not None)
            cut = schedule.epoch_end(1.0 - result["top1"]) if trained.progress.complete else False

            # Save: the metrics row, best.pt when validation improved, last.pt.
            row = metrics_row(epoch, trained, result, epoch_time)
            weights_are_best = saver.save_epoch_end(epoch, trained.progress, row, result["top1"])
            evaluated_epoch = epoch + 1
            budget_cut = opts.budget is not None and opts.budget.cuts and opts.budget.cuts[-1][0] > step_before
            log(epoch_line(epoch, cfg, trained, result, epoch_time, step, budget_cut=budget_cut, lr_cut=cut,
                           skipped=getattr(train_loader, "skipped", 0) + getattr(val_loader, "skipped", 0)))  # fmt: skip
    best_top1, best_epoch = saver.best_top1, saver.best_epoch
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
                log(f"{run.checkpoint('best')} is missing: the test split judges the last weights instead")
            else:
                load_model_state(model, best, str(run.checkpoint("best")))
        test_loader, _ = build_test_loader(
            cfg.data_config(), device=device, batch_size=cfg.eval_batch_size or cfg.batch_size, seed=cfg.seed,
            rank=rank, world_size=world_size, tta=cfg.tta,
        )  # fmt: skip
        test = evaluate(net, test_loader, num_classes, desc="test", **evaluate_kw)
    if dist.is_main_process():
        tested = test is not None or not (info.val_split or info.name == "imagefolder")
        write_plots(run, test or result, info, split="test" if tested else "validation")
        if test is not None:
            run.write_test(test, best_epoch)
        log(last_line(info, run, result, test, best_top1=best_top1, best_epoch=best_epoch,
                      evaluated_epoch=evaluated_epoch, step=step))  # fmt: skip
    run.close()
    dist.cleanup()
    return {"eval": result, "test": test, "best_top1": best_top1, "best_epoch": best_epoch, "run_dir": str(run.root),
            "step": step}  # fmt: skip


def last_line(info: DatasetInfo, run: RunDirectory, result: dict, test: dict | None, *, best_top1: float,
              best_epoch: int, evaluated_epoch: int, step: int) -> str:  # fmt: skip
    """The run's last line: the validation figure that chose best.pt and the test split's,
    read once; or, without a validation split, the held-out split's figure."""
    if test is not None:
        return (f"validation top-1 {100 * best_top1:.2f}% (best.pt, epoch {best_epoch}, on {info.val_size} training "
                f"images kept apart); test accuracy: {100 * test['top1']:.2f}% top-1, {100 * test['top5']:.2f}% top-5 "
                f"on {test['n']} {info.name} test images, read once with best.pt; run directory {run.root}")  # fmt: skip
    if info.val_split:
        return (f"validation top-1 {100 * best_top1:.2f}% (best.pt, epoch {best_epoch}, on {info.val_size} training "
                f"images kept apart); the test split was not read (--no-test); run directory {run.root}")  # fmt: skip
    split = "validation" if info.name == "imagefolder" else "test"
    return (f"test accuracy: {100 * result['top1']:.2f}% top-1, {100 * result['top5']:.2f}% top-5 "
            f"on {result['n']} {info.name} {split} images (epoch {evaluated_epoch}, step {step}"
            + ("" if info.name == "imagefolder" else "; with --val-split 0 this split also chose best.pt")
            + f"); run directory {run.root}")  # fmt: skip


def best_weights(run: RunDirectory) -> dict | None:
    """best.pt's weights on every rank (rank 0 reads the file and sends them); None without one."""
    state, path = None, run.checkpoint("best")
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


def test_batches(info: DatasetInfo, cfg: TrainConfig) -> int:
    """Batches of the final test evaluation (none without a validation split, where the last
    epoch's evaluation is the final one, or with --no-test)."""
    if not info.val_split or not cfg.test:
        return 0
    return -(-info.test_size // (cfg.eval_batch_size or cfg.batch_size))


def reduce_train_metrics(trained: EpochResult, device: torch.device) -> EpochResult:
    """The training loss and accuracy over all samples of all ranks, and their summed images/s."""
    if dist.get_world_size() == 1:
        return trained
    sums = trained.progress.sums  # this rank's: a rank that skipped every step adds zeros, not NaN
    t = torch.tensor([sums.loss_sum, sums.correct, sums.seen, trained.images_per_s], dtype=torch.float64, device=device)
    loss_sum, correct, seen, rate = dist.all_reduce_sum(t).tolist()
    nan = float("nan")
    return dataclasses.replace(trained, train_loss=loss_sum / seen if seen else nan,
                               train_acc=correct / seen if seen else nan, images_per_s=rate)  # fmt: skip


def metrics_row(epoch: int, trained: EpochResult, result: dict, epoch_time: float) -> dict:
    """The epoch's row of metrics.csv (run_dir.METRICS_FIELDS)."""
    return {
        "epoch": epoch + 1,
        "lr": f"{trained.lr:.6g}",
        "train_loss": f"{trained.train_loss:.6f}",
        "train_acc": f"{trained.train_acc:.6f}",
        "val_loss": f"{result['loss']:.6f}",
        "val_top1": f"{result['top1']:.6f}",
        "val_top5": f"{result['top5']:.6f}",
        "images_per_s": f"{trained.images_per_s:.2f}",
        "epoch_time_s": f"{epoch_time:.2f}",
    }


def epoch_line(epoch: int, cfg: TrainConfig, trained: EpochResult, result: dict, epoch_time: float, step: int, *,
               budget_cut: bool, lr_cut: bool, skipped: int) -> str:  # fmt: skip
    """The line that sums up an epoch, with why it ended early and what changed."""
    line = (f"epoch {epoch + 1}/{cfg.epochs}  train loss {trained.train_loss:.4f} acc {100 * trained.train_acc:.2f}%  "
            f"val loss {result['loss']:.4f} top-1 {100 * result['top1']:.2f}% top-5 {100 * result['top5']:.2f}%  "
            f"{trained.images_per_s:.0f} img/s  {epoch_time:.0f}s  lr {trained.lr:.3g}")  # fmt: skip
    if not trained.progress.complete:
        line += f"  (stopped at step {step}, " + ("the time budget's last step)" if step == cfg.train_steps else "--max-steps)")
    if budget_cut:
        line += f"  (time budget: steps ran slower than planned; the run now ends at step {cfg.train_steps or step})"
    if lr_cut:
        line += "  (lr cut)"
    if skipped:
        line += f"  [{skipped} unreadable images skipped]"
    return line


def write_plots(run: RunDirectory, result: dict, info: DatasetInfo, split: str = "validation") -> None:
    """plots/: curves.png, confusion.png and .json, misclassified.png, samples.png, of ``result``
    (the final evaluation of ``split``)."""
    rows = run.read_metrics()
    if rows:
        plots.plot_curves(rows, run.plot("curves.png"))
    # --num-classes may exceed the dataset's classes: the extra outputs are named by number.
    names = list(info.class_names) + [str(i) for i in range(len(info.class_names), len(result["confusion"]))]
    plots.plot_confusion(result["confusion"], names, run.plot("confusion.png"))
    run.write_confusion(result["confusion"], names)
    if result["mistakes"]:
        imgs, titles = [], []
        for img, true, pred in result["mistakes"]:
            imgs.append(img)
            titles.append(f"true {names[true]}\npred {names[pred]}")
        plots.plot_images(imgs, titles, run.plot("misclassified.png"), mean=info.mean, std=info.std,
                          suptitle=f"Misclassified {split} images")  # fmt: skip
    if result.get("samples"):
        imgs, labels, probs = zip(*result["samples"])
        plots.plot_predictions(imgs, probs, names, run.plot("samples.png"), true_labels=labels,
                               mean=info.mean, std=info.std, suptitle=f"{split.capitalize()} samples and their top-3 predictions")  # fmt: skip
