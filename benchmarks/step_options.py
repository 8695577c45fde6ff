"""One training step of the paper's AlexNet on this CPU, with each speed option toggled in turn.

alexnet_paper, 1 input channel, 10 classes, 227 px, SGD with momentum (torch's for-loop
update; training now uses the fused one, benchmarks/optimizer_step.py), a synthetic batch
already in memory. The baseline is what the models do by default: fused LRN, contiguous
float32, torch's default threads, in-place ReLU, zero_grad(set_to_none=True), eager.

1. Each option alone on top of the baseline; variants alternate round by round in one
   process and the table shows medians.
2. Allocator settings. They are process-wide and leave the heap changed behind them, so
   they cannot alternate with the others: each runs in its own process (baseline and
   torch's LRN, alternating), compared with a baseline process run just before it.
3. The options that helped, together, under the best allocator setting, each also left
   out in turn, so every kept option shows it still pays inside the combination; then one
   eager step of the winner is profiled to show where the time goes.

    flock /tmp/alexnet-bench.lock python benchmarks/step_options.py              # batch 128: minutes
    flock /tmp/alexnet-bench.lock python benchmarks/step_options.py --batch 16   # quick look

``--compile`` adds torch.compile of the model to part 1 (a minute or more to compile).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from alexnet import create_model
from alexnet.models.lrn import LocalResponseNorm


@dataclass(frozen=True)
class StepOptions:
    lrn: str = "fused"  # LocalResponseNorm impl: "fused" | "torch"
    channels_last: bool = False
    bf16: bool = False  # torch.autocast("cpu", torch.bfloat16) around forward and loss
    threads: int = 0  # torch.set_num_threads; 0 leaves torch's default
    inplace_relu: bool = True
    set_to_none: bool = True  # optimizer.zero_grad(set_to_none=...)
    compile: bool = False  # torch.compile(model)


# name -> the one change from the baseline
TOGGLES = {
    "baseline": {},
    "LRN impl=torch": {"lrn": "torch"},
    "channels_last": {"channels_last": True},
    "bf16 autocast": {"bf16": True},
    "threads=1": {"threads": 1},
    "ReLU not in place": {"inplace_relu": False},
    "set_to_none=False": {"set_to_none": False},
    "torch.compile": {"compile": True},
}

# Process-wide allocator settings, applied before the first tensor: name -> what a child process gets.
#   malloc-keep: big tensors are mmap'ed by glibc and unmapped when freed, so every new activation
#     pays page faults and the kernel's zeroing again (about 35 ms per 150 MB here, 5x a pass over
#     it). M_MMAP_MAX=0 and a huge M_TRIM_THRESHOLD keep freed memory in the heap for reuse.
#   thp: torch's own switch, 2 MB-aligned big allocations with transparent huge pages: 512x fewer
#     faults. Works where /sys/kernel/mm/transparent_hugepage/enabled allows madvise.
ALLOCATORS = {
    "default": {},
    "malloc-keep": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)},
    "thp": {"THP_MEM_ALLOC_ENABLE": "1"},
}


class Variant:
    """A model, its optimizer and the per-step settings for one StepOptions."""

    def __init__(self, opts: StepOptions, model: nn.Module):
        self.opts = opts
        self.model = model
        self.fn = torch.compile(model) if opts.compile else model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def configure(self) -> None:
        """Module attributes that differ between variants sharing one model."""
        for m in self.model.modules():
            if isinstance(m, LocalResponseNorm):
                m.impl = self.opts.lrn
            elif isinstance(m, nn.ReLU):
                m.inplace = self.opts.inplace_relu

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=self.opts.set_to_none)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.opts.bf16):
            loss = F.cross_entropy(self.fn(x), y)
        loss.backward()
        self.optimizer.step()


@contextlib.contextmanager
def threads(opts: StepOptions, default_threads: int):
    torch.set_num_threads(opts.threads or default_threads)
    try:
        yield
    finally:
        torch.set_num_threads(default_threads)


def build_variants(configs: dict[str, StepOptions]) -> dict[str, Variant]:
    """One model per memory format and one per compiled variant; eager variants share them."""
    models: dict[tuple, nn.Module] = {}
    variants = {}
    for name, opts in configs.items():
        key = (opts.channels_last, name if opts.compile else "eager")
        if key not in models:
            torch.manual_seed(0)
            model = create_model("alexnet_paper", in_channels=1, num_classes=10).train()
            if opts.channels_last:
                model = model.to(memory_format=torch.channels_last)
            models[key] = model
        variants[name] = Variant(opts, models[key])
    return variants


def make_batch(opts: StepOptions, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, size, size, generator=gen)
    if opts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (n,), generator=gen)


def measure(configs: dict[str, StepOptions], args) -> dict[str, float]:
    """Median images/s per variant; each round runs every variant once, in turn."""
    default_threads = torch.get_num_threads()
    variants = build_variants(configs)
    batches = {name: make_batch(opts, args.batch, args.size) for name, opts in configs.items()}
    times: dict[str, list[float]] = {name: [] for name in configs}
    for name, v in variants.items():  # warm-up, compilation included
        with threads(v.opts, default_threads):
            v.configure()
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                v.step(*batches[name])
            if v.opts.compile:
                log(f"  {name}: warm-up including compilation {time.perf_counter() - t0:.0f} s")
    for r in range(args.rounds):
        for name, v in variants.items():
            with threads(v.opts, default_threads):
                v.configure()
                t0 = time.perf_counter()
                v.step(*batches[name])
                times[name].append(time.perf_counter() - t0)
        log(f"  round {r + 1}/{args.rounds} done")
    return {name: args.batch / statistics.median(ts) for name, ts in times.items()}


def profile(opts: StepOptions, args, top: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    v = build_variants({"profiled": opts})["profiled"]
    x, y = make_batch(opts, args.batch, args.size)
    with threads(opts, torch.get_num_threads()):
        v.configure()
        for _ in range(max(1, args.warmup)):
            v.step(x, y)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            v.step(x, y)
    print(f"\nprofile of one step, {describe(opts)}; top {top} ops by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=44))


def changes(opts: StepOptions) -> dict:
    """The fields where `opts` differs from the baseline."""
    base = StepOptions()
    return {f.name: getattr(opts, f.name) for f in fields(opts) if getattr(opts, f.name) != getattr(base, f.name)}


def describe(opts: StepOptions) -> str:
    changed = [f"{name}={value}" for name, value in changes(opts).items()]
    return "baseline" + (" + " + ", ".join(changed) if changed else "")


def report(title: str, ips: dict[str, float], batch_size: int, base: float | None = None) -> None:
    base = base or ips["baseline"]
    print(f"\n{title}")
    print(f"{'variant':44} {'images/s':>9} {'s/step':>8} {'vs baseline':>12}")
    for name, v in ips.items():
        print(f"{name:44} {v:9.1f} {batch_size / v:8.2f} {v / base:11.2f}x")
    sys.stdout.flush()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def in_child(configs: dict[str, StepOptions], args, allocator: str, profile_opts: StepOptions | None = None):
    """Run `measure` (and optionally `profile`) in a fresh process with an allocator setting.

    Returns the images/s per variant and whatever else the child printed (the profile)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps({n: asdict(o) for n, o in configs.items()})]
    cmd += ["--batch", str(args.batch), "--size", str(args.size), "--rounds", str(args.rounds)]
    cmd += ["--warmup", str(args.warmup), "--profile-top", str(args.profile_top)]
    if profile_opts is not None:
        cmd += ["--child-profile", json.dumps(asdict(profile_opts))]
    env = {**os.environ, **ALLOCATORS[allocator]}
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    result, rest = {}, []
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
        else:
            rest.append(line)
    return result, "\n".join(rest)


def load() -> str:
    return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=227)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="include torch.compile (slow to compile)")
    parser.add_argument("--only", nargs="*", default=None, help="part-1 variants to run (baseline always runs)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["options", "allocators", "combined"])
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # a worker started by in_child
        configs = {n: StepOptions(**o) for n, o in json.loads(args.child).items()}
        print("RESULT " + json.dumps(measure(configs, args)), flush=True)
        if args.child_profile:
            profile(StepOptions(**json.loads(args.child_profile)), args, args.profile_top)
        return

    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    print(
        f"torch {torch.__version__}, {os.cpu_count()} logical cores, {torch.get_num_threads()} threads, "
        f"kernels {torch.backends.cpu.get_cpu_capability()}, avx512_bf16={'avx512_bf16' in flags}, "
        f"amx={'amx_tile' in flags}; batch {args.batch} at {args.size} px, median of {args.rounds} steps; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    toggles = {n: t for n, t in TOGGLES.items() if args.only is None or n == "baseline" or n in args.only}
    if not args.compile:
        toggles.pop("torch.compile", None)
    configs = {name: replace(StepOptions(), **change) for name, change in toggles.items()}
    helpful: dict[str, StepOptions] = {}
    if "options" not in args.skip:
        ips = measure(configs, args)
        report(f"1. each option alone, on top of the baseline (one process, alternating; {load()})", ips, args.batch)
        # The reference LRN is what is being replaced: it is measured inside the combination instead.
        candidates = [n for n in configs if n not in ("baseline", "LRN impl=torch")]
        helpful = {n: configs[n] for n in candidates if ips[n] > 1.05 * ips["baseline"]}

    allocator = "default"
    if "allocators" not in args.skip:
        pair = {"baseline": StepOptions(), "LRN impl=torch": StepOptions(lrn="torch")}
        rows, speedups = {}, {}
        for name in ALLOCATORS:
            ips, _ = in_child(pair, args, name)
            rows.update({f"allocator {name}: {n}": v for n, v in ips.items()})
            speedups[name] = ips["baseline"]
        report(f"2. allocator settings (one process each; {load()})", rows, args.batch, base=speedups["default"])
        allocator = max(speedups, key=speedups.get)
        if speedups[allocator] < 1.05 * speedups["default"]:
            allocator = "default"

    if "combined" not in args.skip:
        combined = StepOptions()
        for opts in helpful.values():
            combined = replace(combined, **changes(opts))
        combo = {"baseline": StepOptions(), "combined": combined}
        for name, opts in helpful.items():  # leave each one out again
            undo = {f: getattr(StepOptions(), f) for f in changes(opts)}
            combo[f"combined without {name}"] = replace(combined, **undo)
        combo["combined, LRN impl=torch"] = replace(combined, lrn="torch")
        print(f"\n3. under allocator {allocator!r}: combined = {describe(combined)}", flush=True)
        ips, profile_table = in_child(combo, args, allocator, profile_opts=replace(combined, compile=False))
        report(f"3. together, allocator {allocator!r} (one process, alternating; {load()})", ips, args.batch)
        print(profile_table)
    print(f"\nat the end: {load()} (1, 5, 15 min); other processes may share the two cores")


if __name__ == "__main__":
    main()
