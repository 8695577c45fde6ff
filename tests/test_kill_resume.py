"""A real training process killed with SIGKILL at random moments and during checkpoint writes,
resumed each time, ends with exactly the weights of a run that was never interrupted."""

import random

from kill_harness import kill_and_resume, random_plan, same_run, timed_run, train_args
from test_cli_e2e import fmnist_dir  # noqa: F401  (the tiny IDX data fixture)


def test_sigkill_at_random_moments_loses_nothing(fmnist_dir, tmp_path):  # noqa: F811
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    log = tmp_path / "train.log"
    first_write, total = timed_run(train_args(fmnist_dir, whole), whole, log)
    # Two kills during a checkpoint write and two at random moments (seeded, so a failure reproduces).
    plan = random_plan(random.Random(7), 4, first_write, total)
    campaign = kill_and_resume(train_args(fmnist_dir, killed), killed, plan, log)
    print(first_write, total, campaign)
    assert campaign.kills >= 3, campaign
    assert campaign.during_write >= 2, campaign
    # The run went on from checkpoints written mid-epoch, not only from epoch ends.
    assert any(batch > 0 for _, _, batch in campaign.resumed_from), campaign
    same_run(whole, killed)
