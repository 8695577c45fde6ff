"""Crash safety: SIGKILL a real training run many times, resume it each time, compare with an undisturbed run.

    .venv/bin/python benchmarks/kill_resume.py --kills 20 --out runs/kill-resume

Half of the kills land while a checkpoint is being written over the previous one (the harness
kills the process the moment the temporary file appears), the others at random times after
the first checkpoint, in windows that together span an undisturbed run's training time once
(so that every kill lands before the run is done). The run is the tiny deterministic one
of tests/test_kill_resume.py (alexnet_owt at 63 px, SGD with momentum, 8 epochs of 10 steps,
a checkpoint every 3 steps) on generated Fashion-MNIST-format data. Prints and writes
<out>/kill_resume.json: kills, kills during a write, restarts, and whether the final weights,
optimizer state and metrics equal the undisturbed run's bit for bit.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kill_harness import kill_and_resume, random_plan, same_run, timed_run, train_args  # noqa: E402
from data_fixtures import write_fashion_mnist  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8, help="of 10 steps each; more epochs leave room for more kills")
    p.add_argument("--out", default="runs/kill-resume")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        sys.exit(f"kill_resume.py: {out} exists; choose a new --out")
    data = out / "data"
    write_fashion_mnist(data, n_train=160, n_val=40)
    log = out / "train.log"
    t0 = time.monotonic()
    first_write, total = timed_run(train_args(data, out / "whole", epochs=args.epochs), out / "whole", log)
    plan = random_plan(random.Random(args.seed), args.kills, first_write, total)
    campaign = kill_and_resume(train_args(data, out / "killed", epochs=args.epochs), out / "killed", plan, log)
    same_run(out / "whole", out / "killed")  # raises if anything differs
    summary = {
        "kills": campaign.kills,
        "kills_during_checkpoint_write": campaign.during_write,
        "restarts_from_scratch": campaign.restarts_from_scratch,
        "processes": campaign.runs,
        "resumed_from_epoch_step_batch": campaign.resumed_from,
        "moments": campaign.moments,
        "final_equal_to_undisturbed": True,
        "epochs": args.epochs,
        "undisturbed_run_s": round(total, 1),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    (out / "kill_resume.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
