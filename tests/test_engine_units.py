"""Engine pieces that need no data: the schedule, checkpoint files, safe loading, evaluation."""

import math
import os
import pickle

import pytest
import torch

from alexnet.config import PRESETS, TrainConfig, resolve_config
from alexnet.engine.checkpoint import read_checkpoint, save_checkpoint
from alexnet.engine.evaluate import evaluate
from alexnet.engine.optim import LRSchedule, create_optimizer
from alexnet.errors import AlexNetError


def schedule(kind, **kw):
    opt = create_optimizer([torch.nn.Parameter(torch.zeros(1))], "sgd", lr=0.1)
    defaults = dict(total_steps=100, steps_per_epoch=10)
    return LRSchedule(opt, kind, **{**defaults, **kw})


def lrs(s, steps):
    return [s.step(i) for i in range(steps)]


def test_constant_and_warmup():
    assert lrs(schedule("none"), 3) == [0.1, 0.1, 0.1]
    warm = lrs(schedule("none", warmup_steps=4), 6)
    assert warm == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_step_schedule_cuts_every_step_epochs():
    s = lrs(schedule("step", step_epochs=3, gamma=0.1), 61)
    assert s[29] == pytest.approx(0.1) and s[30] == pytest.approx(0.01) and s[60] == pytest.approx(0.001)


def test_cosine_ends_at_min_lr():
    s = lrs(schedule("cosine", min_lr=1e-4), 100)
    assert s[0] == pytest.approx(0.1) and s[50] == pytest.approx(0.05, rel=0.05)
    assert s[99] == pytest.approx(1e-4, rel=0.2) and all(a >= b for a, b in zip(s, s[1:]))


def test_onecycle_rises_then_falls():
    s = lrs(schedule("onecycle"), 100)
    peak = max(range(100), key=lambda i: s[i])
    assert s[0] == pytest.approx(0.1 / 25) and 20 <= peak <= 26 and s[peak] == pytest.approx(0.1, rel=1e-3)
    assert s[99] < 1e-4


def test_plateau_is_the_papers_rule():
    s = schedule("plateau", patience=2, gamma=0.1)
    assert not s.epoch_end(0.5)  # improved
    assert not s.epoch_end(0.5)  # 1 epoch without improvement
    assert s.epoch_end(0.6)  # 2: cut
    assert s.step(0) == pytest.approx(0.01)
    state = s.state_dict()
    t = schedule("plateau")
    t.load_state_dict(state)
    assert t.step(5) == pytest.approx(0.01)


def test_atomic_save_leaves_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}}, path)

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(AlexNetError, match="No space left on device.*previous one is kept"):
        save_checkpoint({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(read_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_short_write_reported_by_torch_save_keeps_the_old_file(tmp_path, monkeypatch):
    """On a full disk torch.save's zip writer raises RuntimeError, not OSError (seen here when /tmp filled up)."""
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}}, path)

    def short_write(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 9828032 vs 9827920")

    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(AlexNetError, match="the write failed .*previous one is kept"):
        save_checkpoint({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(read_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/alexnet-pwned-by-checkpoint",))


def test_code_in_a_checkpoint_never_runs(tmp_path):
    marker = "/tmp/alexnet-pwned-by-checkpoint"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "extra": Payload()}, path)
    with pytest.raises(AlexNetError, match="refusing to load.*posix.system"):
        read_checkpoint(path)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("content", [b"", b"not a zip", pickle.dumps([1, 2])])
def test_garbage_checkpoint_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(AlexNetError, match="bad.pt"):
        read_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(AlexNetError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pt")


def test_presets_resolve_to_their_documented_values():
    paper = resolve_config("paper", {})
    assert (paper.model, paper.image_size, paper.optimizer, paper.momentum, paper.weight_decay) == (
        "alexnet_paper", 227, "sgd", 0.9, 5e-4,
    )  # fmt: skip
    assert (paper.batch_size, paper.lr, paper.scheduler, paper.gamma, paper.dropout, paper.init) == (
        128, 0.01, "plateau", 0.1, 0.5, "paper",
    )  # fmt: skip
    assert (paper.crop, paper.flip, paper.pca_color, paper.tta) == (True, True, 0.1, "10crop")
    assert paper.epochs == 90 and paper.patience == 2
    # The README's preset table, written out by hand (not read back from PRESETS, which would
    # compare the preset with itself).
    fm = resolve_config("fashion-mnist", {})
    assert (fm.model, fm.dataset, fm.image_size, fm.init, fm.optimizer, fm.lr, fm.weight_decay) == (
        "alexnet_paper", "fashion-mnist", 227, "torch", "adamw", 5e-4, 0.05,
    )  # fmt: skip
    assert (fm.batch_size, fm.scheduler, fm.label_smoothing, fm.crop, fm.flip, fm.epochs) == (
        128, "onecycle", 0.1, True, True, 10,
    )  # fmt: skip
    quick = resolve_config("quick", {})
    assert (quick.model, quick.dataset, quick.image_size, quick.init, quick.optimizer, quick.lr) == (
        "alexnet_paper", "fashion-mnist", 63, "torch", "adamw", 1e-3,
    )  # fmt: skip
    assert (quick.weight_decay, quick.batch_size, quick.scheduler) == (0.05, 128, "onecycle")
    assert quick.label_smoothing == 0.1
    assert (quick.crop, quick.flip, quick.amp, quick.epochs, quick.time_budget) == (False, True, True, 6, 15.0)
    assert set(PRESETS) == {"paper", "fashion-mnist", "quick"}
    # The command line wins over the preset; what it does not name keeps the preset's value.
    given = resolve_config("quick", {"lr": 0.5, "image_size": 99, "crop": True, "amp": False, "epochs": None})
    assert (given.lr, given.image_size, given.crop, given.amp) == (0.5, 99, True, False)
    assert (given.epochs, given.optimizer, given.time_budget) == (6, "adamw", 15.0)  # None means 'not given'


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lr": 0.0}, "--lr must be positive"),
        ({"lr": -1.0}, "--lr must be positive"),
        ({"batch_size": 0}, "--batch-size must be positive"),
        ({"optimizer": "rmsprop"}, "unknown optimizer"),
        ({"scheduler": "poly"}, "unknown scheduler"),
    ],
)
def test_bad_config_values(overrides, message):
    with pytest.raises(AlexNetError, match=message):
        resolve_config(None, overrides)


def test_config_round_trip():
    cfg = resolve_config("quick", {"seed": 3})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert math.isclose(TrainConfig.from_dict({**cfg.to_dict(), "unknown_key": 1}).lr, cfg.lr)


def test_evaluate_keeps_the_first_samples_with_their_probabilities():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    batches = [(torch.randn(3, 3, 2, 2), torch.tensor([0, 1, 2])), (torch.randn(3, 3, 2, 2), torch.tensor([3, 0, 1]))]
    result = evaluate(model, batches, 4, keep_samples=5)
    images = torch.cat([b[0] for b in batches])[:5]
    assert [label for _, label, _ in result["samples"]] == [0, 1, 2, 3, 0]
    for (img, _, probs), expected_img in zip(result["samples"], images):
        assert torch.equal(img, expected_img)
        assert torch.allclose(probs, model(expected_img[None]).softmax(1)[0], atol=1e-6)
    assert evaluate(model, batches, 4)["samples"] == []


def test_amp_dtype_follows_the_device(monkeypatch):
    from alexnet.engine import runtime

    cpu = torch.device("cpu")
    assert runtime.amp_dtype(cpu, False) is None
    monkeypatch.setattr(runtime, "has_fast_bfloat16", lambda: True)
    assert runtime.amp_dtype(cpu, True) == torch.bfloat16
    autocast, scaler = runtime.amp_context(cpu, True)
    with autocast:
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    assert not scaler.is_enabled()
    monkeypatch.setattr(runtime, "has_fast_bfloat16", lambda: False)
    assert runtime.amp_dtype(cpu, True) is None  # float32: bfloat16 would be the slow path here
    autocast, _ = runtime.amp_context(cpu, True)
    with autocast:
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    assert runtime.precision_name(None) == "float32" and runtime.precision_name(torch.float16) == "float16"


def test_fast_bfloat16_agrees_with_the_cpu_flags():
    from alexnet.engine.cpu import has_fast_bfloat16

    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else None
    if flags is None or os.uname().machine != "x86_64":
        pytest.skip("checked against /proc/cpuinfo on x86-64 only")
    # oneDNN's bfloat16 path needs AVX-512 (F, BW, VL, DQ) on x86.
    assert has_fast_bfloat16() == all(f in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq"))
