"""A real training process stopped by SIGINT or SIGTERM, or killed with SIGKILL at random moments
and during checkpoint writes, resumed each time, ends with exactly the weights of a run that was
never interrupted."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from alexnet.engine.checkpoint import read_checkpoint
from kill_harness import kill_and_resume, random_plan, same_run, temp_checkpoints, timed_run, train_args


@pytest.fixture(scope="module")
def undisturbed(fmnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("undisturbed") / "run"
    first_write, total = timed_run(train_args(fmnist_dir, out), out, out.parent / "train.log")
    return out, first_write, total


def test_sigkill_at_random_moments_loses_nothing(fmnist_dir, undisturbed, tmp_path):
    whole, first_write, total = undisturbed
    killed = tmp_path / "killed"
    # Two kills during a checkpoint write and two at random moments (seeded, so a failure reproduces).
    plan = random_plan(random.Random(7), 4, first_write, total)
    campaign = kill_and_resume(train_args(fmnist_dir, killed), killed, plan, tmp_path / "train.log")
    # README: "4 kills (2 mid-write)", and like the benchmark, no restart from scratch (the first
    # kill waits for a checkpoint to exist). Every planned kill lands (random_plan's windows are
    # sized for that), so fewer is a failure, not luck.
    assert campaign.kills == 4 and campaign.restarts_from_scratch == 0, campaign
    assert campaign.moments.count("write: killed mid-write") == 2, campaign
    # The run went on from checkpoints written mid-epoch, not only from epoch ends.
    assert any(batch > 0 for _, _, batch in campaign.resumed_from), campaign
    same_run(whole, killed)


def test_sigint_and_sigterm_stop_save_and_say_how_to_resume(fmnist_dir, undisturbed, tmp_path):
    whole = undisturbed[0]
    out = tmp_path / "stopped"
    args = train_args(fmnist_dir, out)
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen([sys.executable, "-m", "alexnet", *args], stderr=subprocess.PIPE, text=True)
        before = (read_checkpoint(out / "checkpoints" / "last.pt")["step"]
                  if (out / "checkpoints" / "last.pt").is_file() else 0)  # fmt: skip
        # Signal once training is under way: after its next checkpoint write has begun.
        while proc.poll() is None and not temp_checkpoints(out / "checkpoints"):
            time.sleep(0.001)
        assert proc.poll() is None, "the run ended before it could be stopped"
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 128 + sig, err
        last = err.strip().splitlines()[-1]
        assert f"stopped by {sig.name}" in last and f"alexnet train --resume {out}" in last, err
        assert "Traceback" not in err
        ckpt = read_checkpoint(out / "checkpoints" / "last.pt")
        assert ckpt["step"] > before and ckpt["batch_in_epoch"] > 0  # saved where it stopped, mid-epoch
        args = ["train", "--resume", str(out), "--no-progress"]
    done = subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    same_run(whole, out)
