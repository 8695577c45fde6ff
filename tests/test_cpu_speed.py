"""What keeps CPU training fast: fused optimizer updates, and subnormal numbers flushed to zero
in every intra-op thread (benchmarks/optimizer_step.py measures both)."""

import subprocess
import sys

import pytest
import torch

from alexnet.engine.optim import adopt_update, create_optimizer

SUBNORMAL = 1e-39  # below float32's smallest normal number, 1.18e-38
# Whether this CPU can flush subnormals (x86's FTZ/DAZ, Arm's FZ); the main thread is put back.
CAN_FLUSH = torch.set_flush_denormal(True)
torch.set_flush_denormal(False)
needs_flush = pytest.mark.skipif(not CAN_FLUSH, reason="this CPU cannot flush subnormals")


@pytest.mark.parametrize("name, kwargs", [("sgd", {"momentum": 0.9, "weight_decay": 5e-4}),
                                          ("sgd", {"momentum": 0.9, "nesterov": True}),
                                          ("adamw", {"weight_decay": 0.05})])  # fmt: skip
def test_the_fused_update_is_the_default_on_cpu_and_matches_the_for_loop(name, kwargs):
    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(32)]
    runs = {}
    for fused in (None, False):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = create_optimizer(params, name, lr=0.01, fused=fused, **kwargs)
        assert opt.param_groups[0]["fused"] is (True if fused is None else None)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        runs[fused] = params
    for a, b in zip(runs[None], runs[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_param_groups_are_read_once_whatever_holds_their_parameters():
    a, b, c = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
    groups = [{"params": (p for p in (a, b))}, {"params": c, "lr": 0.5}]  # a generator, a lone tensor
    opt = create_optimizer(groups, "sgd", lr=0.1, momentum=0.0)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 1] and opt.param_groups[0]["fused"] is True


def test_a_checkpoint_of_the_for_loop_update_resumes_with_the_fused_one():
    params = [torch.nn.Parameter(torch.randn(8, 4))]
    old = create_optimizer(params, "adamw", lr=0.01, fused=False)
    params[0].grad = torch.randn(8, 4)
    old.step()
    saved = old.state_dict()
    assert saved["param_groups"][0]["fused"] is None
    new = create_optimizer(params, "adamw", lr=0.01)
    new.load_state_dict(adopt_update(saved, new))
    assert new.param_groups[0]["fused"] is True
    torch.testing.assert_close(new.state[params[0]]["exp_avg"], old.state[params[0]]["exp_avg"], rtol=0, atol=0)
    new.step()  # the fused kernel accepts the loaded state
    assert float(new.state[params[0]]["step"]) == 2
    # Loaded as saved, torch would keep the saved group's update.
    plain = create_optimizer(params, "adamw", lr=0.01)
    plain.load_state_dict(saved)
    assert plain.param_groups[0]["fused"] is None


def test_parameters_on_a_device_without_fused_kernels_use_the_for_loop():
    params = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    assert create_optimizer(params, "adamw", lr=0.1).param_groups[0]["fused"] is None


FLUSH_PROBE = """
import sys, numpy, torch
from alexnet.engine.cpu import flushing_subnormals, subnormals_flushed
torch.set_num_threads(2)
# Large enough to be split between the threads; filled by numpy, so that no parallel operation
# (which would start the threads) runs before the block.
x = torch.from_numpy(numpy.full(1 << 22, {subnormal}, dtype=numpy.float32))
with subnormals_flushed(sys.argv[1] == "flush"):
    y = x * 1.0
    z = x * 1.0
assert not flushing_subnormals()  # this thread is as it was
print(int((y != 0).sum()), int((z != 0).sum()), y.numel())
"""


@needs_flush
def test_flushing_reaches_every_intra_op_thread():
    """Set before the first parallel operation, the flush holds in the threads started later:
    every element of a product split across two threads is zero (without it, none is)."""
    counts = {}
    for mode in ("flush", "keep"):
        out = subprocess.run([sys.executable, "-c", FLUSH_PROBE.format(subnormal=SUBNORMAL), mode],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        counts[mode] = [int(v) for v in out.stdout.split()]
    assert counts["keep"][0] == counts["keep"][1] == counts["keep"][2]  # subnormals survive by default
    assert counts["flush"][:2] == [0, 0], counts


@needs_flush
def test_training_on_cpu_flushes_subnormals(fmnist_dir, tmp_path):
    code = (
        "import sys, torch\n"
        "from alexnet.cli import main\n"
        "import importlib\n"
        "fit_module = importlib.import_module('alexnet.engine.fit')\n"
        "from alexnet.engine.cpu import flushing_subnormals\n"
        "import numpy\n"
        f"x = torch.from_numpy(numpy.full(1 << 22, {SUBNORMAL}, dtype=numpy.float32))  # no parallel op yet\n"
        "seen = []\n"
        "train = fit_module.train_one_epoch\n"
        "def watched(*a, **k):\n"
        "    seen.append((flushing_subnormals(), int((x * 1.0 != 0).sum())))  # this thread, every thread\n"
        "    return train(*a, **k)\n"
        "fit_module.train_one_epoch = watched\n"
        "assert main(sys.argv[1:]) == 0\n"
        "print(seen, flushing_subnormals())\n"
    )
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--subset", "32", "--model", "alexnet_owt",
            "--image-size", "63", "--batch-size", "16", "--epochs", "1", "--max-steps", "1", "--no-progress",
            "--workers", "0", "--out", str(tmp_path / "run")]  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # Flushed while training; the calling thread is as it was afterwards (Hypothesis, later in the
    # same test process, refuses to run without subnormals).
    assert out.stdout.strip().splitlines()[-1] == "[(True, 0)] False", out.stdout
