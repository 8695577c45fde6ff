"""CPU settings that measurably speed up training on this kind of machine.

glibc returns large freed blocks to the operating system (they are mmap'ed above 128 KiB
and trimmed when free); a training step frees and reallocates the same few hundred MB of
activations every step, and touching fresh pages costs several times a pass over memory
already mapped. Keeping freed memory in the process (what ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=...`` do from the environment) avoids that (benchmarks/step_options.py;
figures in benchmarks/RESULTS.md). The cost: the process keeps its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import contextmanager

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse; False where that is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def has_fast_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 matmuls and convolutions in oneDNN's native kernels.

    oneDNN takes bfloat16 on x86 with AVX-512 (native with AVX512_BF16 or AMX) and on Arm
    with its BF16 extension; elsewhere PyTorch falls back to scalar kernels, which make a
    bfloat16-autocast training step far slower than float32 (benchmarks/step_options.py on an
    AVX2-only CPU; figures in benchmarks/RESULTS.md).
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def flushing_subnormals() -> bool:
    """Whether this thread now treats subnormal floats as zero."""
    return float(torch.tensor([1e-39]) * 1.0) == 0.0


@contextmanager
def subnormals_flushed(enabled: bool = True):
    """Treat subnormal floats as zero (x86's FTZ and DAZ, Arm's FZ) inside the block: in this
    thread, and in every thread it starts meanwhile; this thread's setting is put back afterwards.

    AdamW's first moment decays by 0.9 a step wherever a gradient stays zero (a ReLU that no
    longer fires), into numbers below 1.2e-38 that the CPU handles in slow microcode, so a long
    run's optimizer steps, and its epochs, slow down as they accumulate; flushed, they do not
    (benchmarks/optimizer_step.py; figures in benchmarks/RESULTS.md).
    Enter it before the first parallel operation: the intra-op threads copy the setting when
    they are created, and keep it after the block (so a later large operation, split between
    them, flushes while a small one on this thread does not); threads that already existed keep
    their own (in a process that ran parallel work before, such as a notebook, only this
    thread flushes and the slowdown can come back). The calling thread is restored because
    other code in the process may rely on IEEE subnormals (Hypothesis, for one, refuses to run
    without them).
    """
    before = flushing_subnormals()
    if enabled and not before:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if enabled and not before:
            torch.set_flush_denormal(False)
