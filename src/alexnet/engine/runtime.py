"""Where and how a run computes: the device, the seeds, and mixed precision.

Shared by training, evaluation, the benchmarks and the paper's figures, so that every command
picks the device and the precision the same way.
"""

from __future__ import annotations

import os
import random

import torch

from ..errors import AlexNetError
from .cpu import has_fast_bfloat16


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
