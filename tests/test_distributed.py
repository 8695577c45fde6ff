"""DistributedDataParallel with torchrun on this machine: 2 CPU processes, gloo, loopback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet.engine.checkpoint import read_checkpoint

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(nproc: int, *args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def two_ranks_and_one(tmp_path_factory):
    two, one = tmp_path_factory.mktemp("ddp2"), tmp_path_factory.mktemp("ddp1")
    torchrun(2, WORKER, two, 8)  # per-process batch 8, global 16
    torchrun(1, WORKER, one, 16)  # one process, batch 16
    return [torch.load(two / f"rank{r}.pt", weights_only=True) for r in (0, 1)], torch.load(one / "rank0.pt", weights_only=True)


def test_parameters_identical_across_ranks(two_ranks_and_one):
    (r0, r1), _ = two_ranks_and_one
    for key in r0["model"]:
        torch.testing.assert_close(r0["model"][key], r1["model"][key], rtol=0, atol=0, msg=key)


def test_two_processes_equal_one_with_twice_the_batch(two_ranks_and_one):
    (r0, _), single = two_ranks_and_one
    assert r0["step"] == single["step"] == 2 * (48 // 16)
    for key in r0["model"]:
        torch.testing.assert_close(r0["model"][key], single["model"][key], rtol=1e-9, atol=1e-12, msg=key)


def test_evaluation_counts_every_sample_once(two_ranks_and_one):
    (r0, r1), single = two_ranks_and_one
    # 37 validation images over 2 ranks: 19 + 18, no padded duplicates, summed to 37 on every rank.
    assert (r0["per_rank_val"], r1["per_rank_val"]) == (19, 18)
    assert r0["n"] == r1["n"] == single["n"] == 37
    assert r0["confusion"] == r1["confusion"]


def test_cli_under_torchrun_writes_one_run_directory(tmp_path):
    out = tmp_path / "run"
    done = torchrun(2, "-m", "alexnet", "train", "--dataset", "synthetic", "--subset", "64", "--model", "alexnet_owt",
                    "--image-size", "63", "--batch-size", "8", "--epochs", "1", "--no-progress", "--out", out,
                    "--lr", "0.01", "--init", "torch")  # fmt: skip
    assert done.stdout.count("test accuracy:") == 1  # only rank 0 speaks
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert len(list(tmp_path.iterdir())) == 1
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2 and config["resolved"]["global_batch"] == 16
    ckpt = read_checkpoint(out / "checkpoints" / "last.pt")
    assert not any(k.startswith("module.") for k in ckpt["model"])
    # A DDP checkpoint resumes in a single process.
    resumed = subprocess.run([sys.executable, "-m", "alexnet", "train", "--resume", str(out), "--epochs", "2", "--no-progress"],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert read_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 2
    # ... and a single-process checkpoint resumes under DDP.
    torchrun(2, "-m", "alexnet", "train", "--resume", out, "--epochs", "3", "--no-progress")
    final = read_checkpoint(out / "checkpoints" / "last.pt")
    assert final["epoch"] == 3 and final["config"]["epochs"] == 3
    assert [r.split(",")[0] for r in (out / "metrics.csv").read_text().split()[1:]] == ["1", "2", "3"]
