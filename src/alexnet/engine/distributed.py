"""Distributed helpers: init from torchrun's environment, rank queries, reductions.

Everything here is a no-op in a single process, so the engine calls it unconditionally.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..errors import AlexNetError


_owned = False  # whether init_distributed created the process group (and cleanup may destroy it)


def launched_by_torchrun() -> tuple[int, int, int, int] | None:
    """(rank, world size, local rank, processes on this machine) from torchrun's environment,
    None for a plain process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world_size = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", 0)), local


def init_distributed(device: torch.device) -> tuple[int, int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK).

    nccl on CUDA, gloo otherwise. Returns (rank, world_size, local_rank); (0, 1, 0)
    when not launched by torchrun.
    """
    launched = launched_by_torchrun()
    if launched is None:
        return 0, 1, 0
    rank, world_size, local_rank, _ = launched
    if device.type == "cuda":  # also in a caller's group: nccl's object collectives use the current device
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        global _owned
        _owned = True
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device)  # binds the rank to its GPU
        else:
            dist.init_process_group(backend="gloo")
    return rank, world_size, local_rank


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks, in place, and return it."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """The largest value over ranks, in place, and return it."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def agree_max(value: int, device: torch.device) -> int:
    """The largest of every rank's ``value`` (a host integer), on every rank: a collective."""
    if not is_distributed():
        return value
    t = torch.full((1,), value, dtype=torch.int64, device=device)
    return int(all_reduce_max(t).item())


def raise_together(error: Exception | None, device: torch.device) -> None:
    """A collective for a step that may fail on some ranks only (rank 0's writes, above all):
    every rank raises if any failed, so that none is left waiting for the others in the next
    collective. A rank raises its own error, the others one that names the rank that failed."""
    failed = agree_max(get_rank() + 1 if error is not None else 0, device)
    if error is not None:
        raise error
    if failed:
        raise AlexNetError(f"rank {failed - 1} failed (its own message says why); every rank stops with it")


def all_gather_object(obj) -> list:
    """Every rank's value of a picklable object, in rank order, on every rank: a collective."""
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's value of a picklable object, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if ``init_distributed`` made it (a caller's own group stays)."""
    global _owned
    if is_distributed() and _owned:
        dist.destroy_process_group()
        _owned = False


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model under DDP and torch.compile wrappers: its state_dict has no prefixes."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
