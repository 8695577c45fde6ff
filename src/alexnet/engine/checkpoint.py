"""Checkpoints: written atomically, read without running code from the file.

A training checkpoint is a plain dictionary of tensors, numbers, strings, lists and
dicts, so ``torch.load(weights_only=True)`` reads all of it:

    model, optimizer, schedule, scaler      state_dicts (the unwrapped model's: no prefixes)
    epoch, step                             completed epochs and optimizer steps
    rng, rng_per_rank                       torch (CPU and this rank's CUDA device) and Python random
                                            states: rank 0's, and every rank's in rank order
    partial, partial_per_rank               an epoch cut short: rank 0's running sums, every rank's
    config                                  the resolved TrainConfig as a dict
    model_args                              name and keyword arguments for create_model
    class_names, preprocess                 what inference needs
    best_top1, metrics                      the best validation top-1 so far, the last row
"""

from __future__ import annotations

import os
import pickle
import re
import random
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..data import build_preprocess
from ..errors import AlexNetError
from ..models import create_model
from ..run_dir import RunDirectory
from .optim import LRSchedule, adopt_update
from . import distributed as dist
from .train import EpochProgress, NonFiniteLoss, RunningSums


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise AlexNetError(f"cannot write checkpoint {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise AlexNetError(f"cannot write checkpoint {path}: {e.strerror or e}; the previous one is kept") from None
        if isinstance(e, RuntimeError) and "inline_container" in str(e):
            # torch.save's zip writer reports a short write (a full disk, above all) this way.
            raise AlexNetError(f"cannot write checkpoint {path}: the write failed ({_free_space(path.parent)}); "
                               "the previous one is kept") from None  # fmt: skip
        raise


def _free_space(folder: Path) -> str:
    try:
        st = os.statvfs(folder)
    except OSError:
        return "free space unknown"
    free = st.f_bavail * st.f_frsize
    return "No space left on device" if free < 2**20 else f"{free / 2**30:.1f} GiB free"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a file with ``weights_only=True``; anything that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise AlexNetError(f"checkpoint not found: {path}")
    if is_torchscript(path):  # torch.load would hand it to torch.jit.load, which runs no pickle checks
        raise AlexNetError(f"{path} is a TorchScript export (alexnet export), not a training checkpoint")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        blocked = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", str(e))
        if blocked:
            name = (blocked.group(1) or blocked.group(2)).rstrip(".")
            raise AlexNetError(
                f"refusing to load {path}: it asks to create {name}, which only unsafe unpickling would run"
            ) from None
        raise AlexNetError(f"{path} is not a readable checkpoint: not a PyTorch weights file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise AlexNetError(f"{path} is not a readable checkpoint: {reason}") from None
    if not isinstance(obj, dict):
        raise AlexNetError(f"{path} is not a checkpoint: expected a dictionary, found {type(obj).__name__}")
    return obj


def read_resume_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN_DIR/checkpoints/last.pt``, what ``--resume RUN_DIR`` continues from."""
    path = RunDirectory(run_dir).checkpoint("last")
    if not path.is_file():
        raise AlexNetError(f"nothing to resume in {run_dir}: {path} does not exist")
    return read_checkpoint(path)


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding a code/ folder and constants.pkl."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def model_state(ckpt: dict[str, Any], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    state = ckpt.get("model", ckpt)  # a bare state_dict (e.g. torchvision's weights file) is accepted too
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AlexNetError(f"{path} holds no model weights")
    return state


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)``, with a one-line message that names what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", wrong)):
            if items:
                shown = ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
                parts.append(f"{label}: {shown}")
        raise AlexNetError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state)


def restore_training(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                     scaler: torch.amp.GradScaler, source: str) -> None:  # fmt: skip
    """Model, optimizer, schedule and loss scaler as the checkpoint left them, on the model's device.

    The checkpoint is read onto the CPU whatever device wrote it; the optimizer's state follows
    its parameters to their device, and keeps this optimizer's update (fused or not).
    """
    load_model_state(model, model_state(ckpt, source), source)
    optimizer.load_state_dict(adopt_update(ckpt["optimizer"], optimizer))
    schedule.load_state_dict(ckpt["schedule"])
    scaler.load_state_dict(ckpt["scaler"])


def build_model(ckpt: dict[str, Any], path: str | os.PathLike) -> nn.Module:
    args = ckpt.get("model_args")
    if not isinstance(args, dict) or "name" not in args:
        raise AlexNetError(f"{path} is not a training checkpoint of this package (no model_args)")
    kwargs = {k: v for k, v in args.items() if k != "name"}
    model = create_model(args["name"], **kwargs)
    load_model_state(model, model_state(ckpt, path), str(path))
    return model


def load_for_inference(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """(model in eval mode, class names, preprocess) from a training checkpoint."""
    ckpt = read_checkpoint(path, map_location)
    model = build_model(ckpt, path).eval()
    class_names = list(ckpt.get("class_names") or [str(i) for i in range(ckpt["model_args"]["num_classes"])])
    preprocess = build_preprocess(ckpt["preprocess"])
    return model, class_names, preprocess


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's random state: torch's CPU generator, Python's, and the generator of
    ``device`` when it is a CUDA device (the one this rank trains on)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what ``rng_state`` saved. A CUDA state is restored only onto a CUDA device; one
    saved by an older version as a list (every device's) gives this device's entry."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    cuda = state.get("cuda")
    if cuda is not None and device is not None and device.type == "cuda":
        if isinstance(cuda, (list, tuple)):
            index = device.index if device.index is not None else torch.cuda.current_device()
            if index >= len(cuda):
                return
            cuda = cuda[index]
        torch.cuda.set_rng_state(cuda, device)


def rank_rng_state(ckpt: dict[str, Any], rank: int, world_size: int) -> dict[str, Any] | None:
    """This rank's saved random state, or None where the checkpoint has none for it (another
    world size, or an older checkpoint that kept rank 0's alone under DDP)."""
    per_rank = ckpt.get("rng_per_rank")
    if isinstance(per_rank, list) and len(per_rank) == world_size:
        return per_rank[rank]
    if world_size == 1 and isinstance(ckpt.get("rng"), dict):
        return ckpt["rng"]
    return None


def rank_sums(ckpt: dict[str, Any], rank: int, world_size: int) -> RunningSums | None:
    """This rank's running sums of the unfinished epoch a checkpoint stopped in. With another
    world size, rank 0 takes the sums of all the saved ranks: the epoch's totals stay right."""
    per_rank = ckpt.get("partial_per_rank")
    if isinstance(per_rank, list) and len(per_rank) == world_size:
        return RunningSums.from_dict(per_rank[rank])
    if isinstance(per_rank, list) and per_rank and all(per_rank):
        if rank != 0:
            return None
        return RunningSums(**{k: sum(p[k] for p in per_rank) for k in ("loss_sum", "correct", "seen")})
    return RunningSums.from_dict(ckpt.get("partial")) if rank == 0 and ckpt.get("partial") else None


def _as_tuple(x):
    # weights_only loading hands tuples back as they were saved, but be tolerant of lists.
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def checkpoint_seconds(model: nn.Module) -> float:
    """A first guess at writing a checkpoint (the weights and two optimizer buffers each, at
    200 MB/s) until one is timed."""
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters()) / 200e6


class CheckpointSaver:
    """A run's last.pt and best.pt, and its metrics rows, written by rank 0.

    Every method is a collective: all ranks call it at the same step (each rank's random state and
    running sums are gathered into rank 0's checkpoint), and where rank 0 cannot write, every rank
    stops with it instead of waiting in the next all-reduce. It keeps what a checkpoint records
    besides the training state: the best validation figure so far and the bad batches skipped.
    """

    def __init__(self, run: RunDirectory, *, model: nn.Module, net: nn.Module, optimizer: torch.optim.Optimizer,
                 schedule: LRSchedule, scaler: torch.amp.GradScaler, cfg, model_args: dict, class_names: list[str],
                 preprocess: dict, device: torch.device):  # fmt: skip
        self.run, self.model, self.net, self.device = run, model, net, device
        self.optimizer, self.schedule, self.scaler = optimizer, schedule, scaler
        self.cfg = cfg  # the run's configuration as it stands (the time budget may shorten it)
        self.model_args, self.class_names, self.preprocess = model_args, list(class_names), preprocess
        self.best_top1, self.best_epoch, self.nonfinite_skipped = -1.0, 0, 0
        self.save_s = checkpoint_seconds(model)  # the last epoch-end write's seconds, what the budget plans on

    def resume_from(self, ckpt: dict[str, Any]) -> None:
        self.best_top1 = float(ckpt.get("best_top1", -1.0))
        self.best_epoch = int(ckpt.get("best_epoch", 0))
        self.nonfinite_skipped = int(ckpt.get("nonfinite_skipped", 0))

    def state(self, epoch: int, step: int, *, metrics: dict | None = None, unfinished: EpochProgress | None = None,
              skipped_now: int = 0) -> dict[str, Any] | None:  # fmt: skip
        """What rank 0 saves (None on the other ranks): ``epoch`` completed epochs, and for an
        epoch cut short, how far it got; ``skipped_now``: bad batches of a mid-epoch save that
        the run's count does not hold yet."""
        if not torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all():
            # Never replace a good checkpoint with broken weights. (Every rank has the same weights
            # and so stops here together.)
            raise NonFiniteLoss(f"the weights became NaN or infinite by step {step}; the last good checkpoint is kept; "
                                "try a lower --lr or --clip-grad 1.0")  # fmt: skip
        sums = unfinished.sums.to_dict() if unfinished is not None else None
        every = dist.all_gather_object({"rng": rng_state(self.device), "partial": sums})
        if not dist.is_main_process():
            return None
        return {
            "model": dist.unwrap(self.net).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "rng": every[0]["rng"],
            "rng_per_rank": [r["rng"] for r in every],
            "config": self.cfg.to_dict(),
            "model_args": self.model_args,
            "class_names": self.class_names,
            "preprocess": self.preprocess,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "metrics": metrics,
            "batch_in_epoch": unfinished.batches if unfinished is not None else 0,
            "partial": sums,
            "partial_per_rank": [r["partial"] for r in every] if unfinished is not None else None,
            "nonfinite_skipped": self.nonfinite_skipped + skipped_now,
        }

    def write(self, state: dict | None, *names: str, metrics: dict | None = None) -> None:
        """Rank 0 writes the metrics row and the checkpoints ``names`` (last, best)."""
        error = None
        try:
            if metrics is not None and dist.is_main_process():
                self.run.append_metrics(metrics, keep_epochs=int(metrics["epoch"]))
            for name in names if state is not None else ():
                save_checkpoint(state, self.run.checkpoint(name))
        except AlexNetError as e:
            error = e
        except OSError as e:
            error = AlexNetError(f"cannot write to {self.run.root}: {e.strerror or e}")
        dist.raise_together(error, self.device)

    def save_unfinished(self, epoch: int, progress: EpochProgress, *, mid_epoch: bool) -> None:
        """last.pt where an epoch stands: every --save-every steps (``mid_epoch``, its skipped
        batches not yet counted), or stopped by a signal."""
        self.write(self.state(epoch, progress.step, unfinished=progress,
                              skipped_now=progress.nonfinite_skipped if mid_epoch else 0), "last")  # fmt: skip

    def save_epoch_end(self, epoch: int, progress: EpochProgress, row: dict, top1: float) -> bool:
        """The metrics row, best.pt when ``top1`` beats the best so far, and last.pt; whether it did."""
        improved = top1 > self.best_top1
        if improved:
            self.best_top1, self.best_epoch = top1, epoch + 1
        done = progress.complete
        saving = time.perf_counter()
        state = self.state(epoch + 1 if done else epoch, progress.step, metrics=row, unfinished=None if done else progress)
        # best.pt before last.pt: a run killed between the two never has a last.pt naming a
        # best epoch whose best.pt was not written.
        self.write(state, *(["best"] if improved else []), "last", metrics=row)
        self.save_s = time.perf_counter() - saving
        return improved
