"""Local response normalisation: torch's reference against the fused autograd Function.

Times forward + backward, and forward alone under no_grad, at the two places AlexNet uses
LRN (after conv1 and conv2, batch 128 at 227 px), float32 (or bfloat16 under autocast),
contiguous (NCHW) and channels_last inputs; variants alternate within each round and the
table shows medians. ``--compile`` adds torch.compile of both implementations;
``--window`` adds the study behind the fused window sums.

    flock /tmp/alexnet-bench.lock python benchmarks/lrn.py [--compile] [--window] [--dtype bfloat16]

Run it under the lock so that no other timed run shares the two cores. Allocation is a
large part of both implementations' time here (first-touch page faults, about 35 ms per
150 MB tensor): run with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 to see
the rest (benchmarks/step_options.py measures that setting on a whole step).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from alexnet.models.lrn import LocalResponseNorm

PAPER_LRN = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)  # alexnet.PAPER_LRN
SHAPES = {"norm1": (96, 55, 55), "norm2": (256, 27, 27)}
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def machine() -> str:
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    cpu = ", ".join(f"{flag}={'yes' if flag in flags else 'no'}" for flag in wanted)
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; {cpu}\n"
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"kernels: {torch.backends.cpu.get_cpu_capability()}"
    )


def saved_mb(module: torch.nn.Module, x: torch.Tensor) -> float:
    """Memory autograd keeps for the backward beyond the input itself."""
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(x):
        module(x)
    return sum(storages.values()) / 2**20


def time_rounds(variants: dict, rounds: int) -> dict:
    """Median seconds per variant; each round runs every variant once, in turn."""
    for fn in variants.values():  # warm-up (and compilation)
        fn()
    times = defaultdict(list)
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def autocast(x):
    """bfloat16 runs under autocast, as in training: torch's avg_pool3d has no bfloat16 CPU kernel."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=x.dtype == torch.bfloat16)


def fwd_bwd(module, x, g):
    def step():
        with autocast(x):
            y = module(x)
        y.backward(g.to(y.dtype))
        x.grad = None

    return step


def inference(module, x):
    def step():
        with torch.no_grad(), autocast(x):
            module(x)

    return step


def bench_lrn(batch: int, rounds: int, compile_: bool, dtype: torch.dtype) -> None:
    print(f"\n{dtype}, batch {batch}, median of {rounds} (ms); x = reference time / variant time")
    print("train: forward + backward; inference: forward under no_grad; saved: what autograd keeps beyond x")
    print(f"{'layer':6} {'format':14} {'variant':15} {'train':>8} {'x':>6} {'inference':>10} {'x':>6} {'saved MB':>9}")
    for layer, chw in SHAPES.items():
        for fmt_name, fmt in FORMATS.items():
            torch.manual_seed(0)
            x = torch.randn(batch, *chw).relu_().to(dtype).contiguous(memory_format=fmt).requires_grad_()
            g = torch.randn_like(x)
            modules = {
                "torch": LocalResponseNorm(**PAPER_LRN, impl="torch"),
                "fused": LocalResponseNorm(**PAPER_LRN, impl="fused"),
            }
            if compile_:
                torch._dynamo.reset()  # one forward code object serves every shape: start afresh
                modules["torch compiled"] = torch.compile(LocalResponseNorm(**PAPER_LRN, impl="torch"))
                modules["fused compiled"] = torch.compile(LocalResponseNorm(**PAPER_LRN, impl="fused"))
            compile_s = {}
            for name, m in modules.items():
                if "compiled" in name:  # the first calls compile; report how long that took
                    t0 = time.perf_counter()
                    fwd_bwd(m, x, g)()
                    inference(m, x)()
                    compile_s[name] = time.perf_counter() - t0
            variants = {}
            for name, m in modules.items():
                variants[(name, "train")] = fwd_bwd(m, x, g)
                variants[(name, "inference")] = inference(m, x)
            med = time_rounds(variants, rounds)
            for name, m in modules.items():
                train, infer = med[(name, "train")], med[(name, "inference")]
                ref_train, ref_infer = med[("torch", "train")], med[("torch", "inference")]
                saved = f"{saved_mb(m, x):9.0f}" if "compiled" not in name else f"{'-':>9}"
                note = f"  (compiling: {compile_s[name]:.0f} s)" if name in compile_s else ""
                print(
                    f"{layer:6} {fmt_name:14} {name:15} {train * 1e3:8.1f} {ref_train / train:6.2f} "
                    f"{infer * 1e3:10.1f} {ref_infer / infer:6.2f} {saved}{note}",
                    flush=True,
                )


# --- the window-sum study: s = k + alpha/size * W(x**2), forward only, into a given buffer ---


def window_shifted(x, s, size, alpha, k):
    """What the fused LRN does: addcmul_ of shifted channel slices, x**2 never stored."""
    c, n = alpha / size, x.shape[1]
    torch.addcmul(torch.tensor(k), x, x, value=c, out=s)
    for d in range(-(size // 2), (size - 1) // 2 + 1):
        if d:
            lo, hi = max(0, -d), min(n, n - d)
            s[:, lo:hi].addcmul_(x[:, lo + d : hi + d], x[:, lo + d : hi + d], value=c)
    return s


def window_avg_pool3d(x, s, size, alpha, k):
    """torch's F.local_response_norm: pad, then average over a (size, 1, 1) window."""
    n, ch = x.shape[:2]
    sq = (x * x).view(n, 1, ch, x.shape[2], -1)
    sq = F.pad(sq, (0, 0, 0, 0, size // 2, (size - 1) // 2))
    return torch.mul(F.avg_pool3d(sq, (size, 1, 1), stride=1).view(x.shape), alpha, out=s).add_(k)


def window_cumsum(x, s, size, alpha, k):
    """Difference of a cumulative sum over a zero-padded channel axis."""
    n, ch = x.shape[:2]
    before = size // 2
    padded = x.new_zeros((n, ch + size, *x.shape[2:]))
    if x.is_contiguous(memory_format=torch.channels_last):
        padded = padded.contiguous(memory_format=torch.channels_last)
    padded[:, before + 1 : before + 1 + ch].addcmul_(x, x, value=alpha / size)
    padded.cumsum_(1)
    return torch.sub(padded[:, size:], padded[:, :ch], out=s).add_(k)


def window_matmul(x, s, size, alpha, k):
    """A banded (C, C) matrix applied to x**2 over the channels: one GEMM."""
    ch = x.shape[1]
    i = torch.arange(ch)
    band = ((i[None, :] - i[:, None] >= -(size // 2)) & (i[None, :] - i[:, None] <= (size - 1) // 2)).float()
    band *= alpha / size
    if x.is_contiguous(memory_format=torch.channels_last):
        rows = (x * x).permute(0, 2, 3, 1).reshape(-1, ch)
        torch.matmul(rows, band.t(), out=s.permute(0, 2, 3, 1).view(-1, ch))
    else:
        sq = (x * x).view(x.shape[0], ch, -1)
        torch.matmul(band, sq, out=s.view(x.shape[0], ch, -1))
    return s.add_(k)


def bench_window(batch: int, rounds: int) -> None:
    strategies = {
        "shifted addcmul_": window_shifted,
        "pad+avg_pool3d": window_avg_pool3d,
        "cumsum diff": window_cumsum,
        "banded matmul": window_matmul,
    }
    print(f"\nwindow sums s = k + alpha/size * W(x**2), forward only, batch {batch}, median ms")
    print(f"{'layer':6} {'format':14} " + " ".join(f"{n:>17}" for n in strategies))
    for layer, chw in SHAPES.items():
        for fmt_name, fmt in FORMATS.items():
            torch.manual_seed(0)
            x = torch.randn(batch, *chw).relu_().contiguous(memory_format=fmt)
            s = torch.empty_like(x)
            p = PAPER_LRN
            expected = window_shifted(x, torch.empty_like(x), p["size"], p["alpha"], p["k"])
            for fn in strategies.values():  # same numbers, or the timing means nothing
                torch.testing.assert_close(fn(x, s, p["size"], p["alpha"], p["k"]), expected)
            variants = {n: (lambda fn=fn: fn(x, s, p["size"], p["alpha"], p["k"])) for n, fn in strategies.items()}
            medians = time_rounds(variants, rounds)
            print(f"{layer:6} {fmt_name:14} " + " ".join(f"{medians[n] * 1e3:17.1f}" for n in strategies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: torch's")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--compile", action="store_true", help="add torch.compile of both implementations")
    parser.add_argument("--window", action="store_true", help="add the window-sum strategy study")
    parser.add_argument("--no-lrn", action="store_true", help="skip the main table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    if not args.no_lrn:
        bench_lrn(args.batch, args.rounds, args.compile, getattr(torch, args.dtype))
    if args.window:
        bench_window(args.batch, args.rounds)


if __name__ == "__main__":
    main()
