"""The optimizer step of alexnet_paper (58 M parameters) on this CPU: for-loop against fused
updates, with and without subnormal numbers in the optimizer's state, with and without
flush-to-zero (what ``alexnet train`` sets on the CPU).

    .venv/bin/python benchmarks/optimizer_step.py [--checkpoint runs/quick/checkpoints/last.pt]

Why: in a 15-minute quick-preset run, epochs slowed from 365 to 279 images/s. AdamW's first
moment had decayed into subnormal numbers wherever a gradient stayed zero (28% of the
moments' entries after 2,180 steps), and the CPU computes on those in slow microcode.

The subnormal state (AdamW only: SGD's momentum takes in the weight decay, so it does not
decay to subnormal numbers the same way) is either the optimizer state of a real checkpoint (``--checkpoint``,
an AdamW or SGD run of alexnet_paper at 63 px on 10 classes) or made up: the given fraction
of every moment's entries set to the bits of 1e-40 (the default 0.28 is what that run had). Each
case runs in a fresh process, since flush-to-zero reaches the intra-op threads only when set
before they start. Prints the median of 12 steps after 3 warm-up steps, in ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch


SUBNORMAL_BITS = 0x116C2  # float32 1.0e-40


def subnormal_bits(t: torch.Tensor) -> torch.Tensor:
    """Where a float32 tensor holds a subnormal number, read from its bits (with flush-to-zero
    on, a comparison would see zero)."""
    bits = t.view(torch.int32)
    return ((bits & 0x7F800000) == 0) & ((bits & 0x007FFFFF) != 0)


def child(args: argparse.Namespace) -> dict:
    from alexnet.engine.cpu import subnormals_flushed

    with subnormals_flushed(args.ftz):  # as alexnet train does, before any parallel operation
        return measure(args)


def measure(args: argparse.Namespace) -> dict:
    from alexnet.engine.cpu import keep_freed_memory
    from alexnet.engine.optim import adopt_update, create_optimizer
    from alexnet.models import create_model

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as alexnet train does: the for-loop update's temporaries are not mmap'ed anew
    model = create_model("alexnet_paper", num_classes=10, in_channels=1, dropout=0.5)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    opt = create_optimizer(params, args.optimizer, lr=1e-3, momentum=0.9, weight_decay=0.05, fused=args.fused)
    saved = None
    if args.state == "subnormal" and args.checkpoint:
        from alexnet.engine.checkpoint import read_checkpoint

        saved = read_checkpoint(args.checkpoint)["optimizer"]
        if saved["state"] and args.optimizer == "adamw" and "exp_avg" not in next(iter(saved["state"].values())):
            raise SystemExit(f"optimizer_step.py: {args.checkpoint} was not trained with AdamW")
    opt.step()  # creates the state
    if saved is not None:
        opt.load_state_dict(adopt_update(saved, opt))  # the update under test, not the one saved
    for param in params:
        state = opt.state[param]
        moment = state.get("exp_avg", state.get("momentum_buffer"))
        if saved is not None:
            dead = subnormal_bits(moment)
        else:
            dead = torch.rand(param.shape, generator=gen) < args.fraction
            # Written as bits: with flush-to-zero on, storing the float 1e-40 would store 0.
            moment.view(torch.int32)[dead] = SUBNORMAL_BITS if args.state == "subnormal" else 0
        param.grad[dead] = 0.0  # a unit that no longer fires: its gradient stays zero, its moment decays
    moments = [s.get("exp_avg", s.get("momentum_buffer")) for s in opt.state.values()]
    subnormal = sum(int(subnormal_bits(m).sum()) for m in moments)
    times = []
    for _ in range(15):
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"ms": statistics.median(times[3:]) * 1000, "subnormal_entries": subnormal,
            "entries": sum(m.numel() for m in moments)}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--checkpoint", help="take the subnormal state from this checkpoint's optimizer")
    p.add_argument("--fraction", type=float, default=0.28, help="made-up state: share of entries set subnormal")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fused", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ftz", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--state", default="fresh", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    source = args.checkpoint or f"made up, {args.fraction:.0%} of entries at 1e-40"
    print(f"{args.optimizer} step of alexnet_paper, {args.threads} threads; subnormal state: {source}")
    print(f"{'update':9s} {'state':10s} {'flush-to-zero':14s} {'ms':>6s}  subnormal entries")
    for fused in (False, True):
        for state in ("fresh", "subnormal") if args.optimizer == "adamw" else ("fresh",):
            for ftz in (False, True):
                cmd = [sys.executable, __file__, "--child", "--optimizer", args.optimizer, "--state", state,
                       "--fraction", str(args.fraction), "--threads", str(args.threads)]  # fmt: skip
                cmd += ["--fused"] * fused + ["--ftz"] * ftz + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr.strip().splitlines()[-1], file=sys.stderr)
                    return 1
                r = json.loads(out.stdout.strip().splitlines()[-1])
                share = r["subnormal_entries"] / max(1, r["entries"])
                print(f"{'fused' if fused else 'for-loop':9s} {state:10s} {'on' if ftz else 'off':14s} {r['ms']:6.0f}  "
                      f"{r['subnormal_entries']:,} ({share:.0%})", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
