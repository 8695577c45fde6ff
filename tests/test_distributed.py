"""DistributedDataParallel with torchrun on this machine: 2 CPU processes, gloo, loopback."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet.data import build_loaders
from alexnet.engine.checkpoint import read_checkpoint
from alexnet.engine.evaluate import evaluate
from alexnet.models import create_model

import ddp_worker
from kill_harness import temp_checkpoints

WORKER = Path(__file__).with_name("ddp_worker.py")
AGREE_WORKER = Path(__file__).with_name("ddp_agree_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
# A stopped run must end this soon after its signal: the next step, a checkpoint, the exit.
STOP_WITHIN_S = 60


def torchrun_command(nproc: int, *args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]


def torchrun(nproc: int, *args, timeout=300):
    done = subprocess.run(torchrun_command(nproc, *args), capture_output=True, text=True, timeout=timeout, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def two_ranks_and_one(tmp_path_factory):
    two, one = tmp_path_factory.mktemp("ddp2"), tmp_path_factory.mktemp("ddp1")
    torchrun(2, WORKER, two, 8)  # per-process batch 8, global 16
    torchrun(1, WORKER, one, 16)  # one process, batch 16
    loaded = [torch.load(two / f"rank{r}.pt", weights_only=True) for r in (0, 1)], torch.load(one / "rank0.pt", weights_only=True)
    for folder in (two, one):  # the runs' checkpoints are not read again: the CI disk is small
        shutil.rmtree(folder)
    return loaded


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
    # The same weights evaluated here, in one process, on the whole val split: the 2 ranks' summed
    # results must be the same confusion matrices (a sample lost or counted twice would change them).
    # The trained network predicts one class for all 37 (its matrix is the label counts; its loss
    # still sees every sample); the worker's fixed random probe spreads its predictions.
    _, val, info = build_loaders(ddp_worker.DATA, device="cpu", batch_size=16, seed=3)
    model = create_model("alexnet_owt", num_classes=info.num_classes, in_channels=info.in_channels, dropout=0.0)
    model.double().load_state_dict(r0["model"])
    alone = evaluate(model, ddp_worker.Float64(val), info.num_classes)
    probed = evaluate(ddp_worker.probe(info.in_channels, info.num_classes), ddp_worker.Float64(val), info.num_classes)
    assert alone["n"] == probed["n"] == 37
    assert sum(cell > 0 for row in probed["confusion"] for cell in row) > 10  # not one column
    for rank in (r0, r1):
        assert rank["confusion"] == alone["confusion"], (rank["confusion"], alone["confusion"])
        assert rank["probe_confusion"] == probed["confusion"], (rank["probe_confusion"], probed["confusion"])
        # log-softmax is taken in float32, and the sums are added in another order
        assert rank["loss"] == pytest.approx(alone["loss"], rel=1e-6)
        assert rank["probe_loss"] == pytest.approx(probed["loss"], rel=1e-6)


def worker_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the training processes torchrun started (its children with RANK set)."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        rank = next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)
        if ppid == launcher.pid and rank is not None:
            pids[rank] = int(entry.name)
    return pids


def train_and_signal(run: Path, args: list[str], target: str) -> tuple[str, str, float]:
    """torchrun 2 processes of ``args``; once a mid-epoch checkpoint is being written, SIGTERM
    ``target``: "torchrun" (which forwards it to every worker) or "rank1" alone. Returns the
    launcher's stdout and stderr and the seconds from the signal to the last process's exit."""
    launcher = subprocess.Popen(torchrun_command(2, *args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while launcher.poll() is None and not temp_checkpoints(run / "checkpoints") and time.monotonic() < deadline:
        time.sleep(0.002)
    workers = worker_pids(launcher)
    assert launcher.poll() is None and sorted(workers) == [0, 1], "the run ended before it could be stopped"
    signalled = time.monotonic()
    os.kill(launcher.pid if target == "torchrun" else workers[1], signal.SIGTERM)
    out, err = launcher.communicate(timeout=300)
    for pid in workers.values():  # every worker is gone, not left waiting in an all-reduce
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    return out, err, time.monotonic() - signalled


def test_cli_under_torchrun_stops_on_sigterm_to_all_or_one_and_resumes(tmp_path):
    """torchrun forwards SIGTERM to every worker; a single rank can get one alone. Either way
    every process stops at the same step, rank 0 saves where they are, and the run resumes:
    in one process, and under torchrun again."""
    out = tmp_path / "run"
    args = ["-m", "alexnet", "train", "--dataset", "synthetic", "--subset", "96", "--model", "alexnet_owt",
            "--image-size", "63", "--batch-size", "8", "--epochs", "2", "--no-progress", "--out", out, "--lr", "0.01",
            "--init", "torch", "--save-every", "2", "--workers", "0"]  # fmt: skip
    _, err, took = train_and_signal(out, args, "torchrun")
    assert took < STOP_WITHIN_S, err[-3000:]
    assert err.count("alexnet train: stopped by SIGTERM") == 2, err[-3000:]  # both ranks, one line each
    ckpt = read_checkpoint(out / "checkpoints" / "last.pt")
    assert 0 < ckpt["batch_in_epoch"] < 6 and len(ckpt["rng_per_rank"]) == 2, ckpt["batch_in_epoch"]
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert len(list(tmp_path.iterdir())) == 1
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2 and config["resolved"]["global_batch"] == 16

    # The DDP checkpoint resumes in a single process (with rank 0's random state).
    resumed = subprocess.run([sys.executable, "-m", "alexnet", "train", "--resume", str(out), "--epochs", "2",
                              "--no-progress"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("test accuracy:") == 1
    assert read_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 2

    # ... and the single-process checkpoint resumes under DDP, each rank drawing anew (one state
    # saved, two ranks); stopped by SIGTERM to rank 1 alone.
    said, err, took = train_and_signal(out, ["-m", "alexnet", "train", "--resume", out, "--epochs", "4"], "rank1")
    assert "no random state for 2 processes" in said
    assert took < STOP_WITHIN_S, err[-3000:]
    assert err.count("alexnet train: stopped by SIGTERM") == 2, err[-3000:]
    stopped = read_checkpoint(out / "checkpoints" / "last.pt")
    assert stopped["epoch"] == 2 and stopped["batch_in_epoch"] > 0
    done = torchrun(2, "-m", "alexnet", "train", "--resume", out, "--no-progress")
    assert done.stdout.count("test accuracy:") == 1  # only rank 0 speaks
    final = read_checkpoint(out / "checkpoints" / "last.pt")
    assert final["epoch"] == 4 and final["config"]["epochs"] == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert [r.split(",")[0] for r in (out / "metrics.csv").read_text().split()[1:]] == ["1", "2", "3", "4"]


@pytest.fixture(scope="module")
def agreed(tmp_path_factory):
    out = tmp_path_factory.mktemp("agree")
    torchrun(2, AGREE_WORKER, out, timeout=600)  # a scenario that hangs fails here

    def read(name: str) -> list[dict]:
        return [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in (0, 1)]

    return read


def test_a_nan_on_one_rank_is_skipped_on_both(agreed):
    r0, r1 = agreed("nan-skip")
    assert r0["code"] == r1["code"] == 0, (r0, r1)
    # Rank 0's weights took rank 1's NaN gradients in the all-reduce: only skipping there too keeps them finite.
    assert r0["finite"] and r0["step"] == 8 and r0["nonfinite_skipped"] == 1


def test_a_nan_on_one_rank_stops_both_at_its_step(agreed):
    r0, r1 = agreed("nan-stop")
    assert r0["code"] == r1["code"] == 2, (r0, r1)
    assert "loss became nan at step 3" in r1["last_line"]
    assert "loss became non-finite on another rank at step 3" in r0["last_line"]
    assert r0["step"] == 2 and r0["finite"]  # --save-every 1: the checkpoint of the last good step


def test_read_back_every_4_steps_both_ranks_stop_naming_the_step(agreed):
    """As on a GPU: the NaN at step 6 is read at step 8, on both ranks at once."""
    r0, r1 = agreed("nan-stop-read-every-4")
    assert r0["code"] == r1["code"] == 2, (r0, r1)
    assert "loss became nan at step 6 " in r1["last_line"], r1["last_line"]
    assert "loss became non-finite on another rank at step 6 " in r0["last_line"], r0["last_line"]


def test_an_empty_batch_on_one_rank_keeps_the_ranks_in_step(agreed):
    r0, r1 = agreed("empty")
    assert r0["code"] == r1["code"] == 0 and r0["step"] == 8 and r0["finite"], (r0, r1)


def test_a_signal_to_one_rank_stops_both_and_the_resumed_run_equals_one_never_stopped(agreed):
    stopped, resumed, whole = agreed("sigterm"), agreed("resumed"), agreed("whole")
    assert [r["code"] for r in stopped] == [128 + signal.SIGTERM] * 2, stopped
    assert stopped[0]["step"] == 6 and stopped[0]["batch_in_epoch"] == 2 and stopped[0]["rng_per_rank"] == 2
    assert resumed[0]["code"] == 0 and resumed[0]["step"] == whole[0]["step"] == 8
    # Deterministic, with dropout: each rank resumed with its own random state, not rank 0's;
    # and with its own running sums of the stopped epoch, so the metrics match too.
    assert resumed[0]["weights"] == whole[0]["weights"]
    assert resumed[0]["metrics"] == whole[0]["metrics"] and len(whole[0]["metrics"]) == 2


def test_each_rank_draws_its_own_dropout_masks_after_a_resume(agreed):
    assert agreed("masks") == [{"equal": False}, {"equal": False}]


def test_when_rank_0_cannot_write_every_rank_stops(agreed):
    r0, r1 = agreed("disk-full")
    assert r0["code"] == r1["code"] == 2, (r0, r1)
    assert "No space left on device" in r0["last_line"] and "rank 0 failed" in r1["last_line"], (r0, r1)
    assert r0["step"] == 1  # the checkpoint written before is kept


def test_the_budgets_plan_is_rank_0s_on_every_rank(agreed):
    r0, r1 = agreed("budget")
    # Rank 1 measured steps 100x slower; alone it would plan fewer steps and leave rank 0 waiting.
    assert r0["code"] == r1["code"] == 0 and r0["step"] == 12, (r0, r1)
