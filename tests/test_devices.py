"""Device code, checked on every device: on fake CUDA tensors here, and for real on each device present.

``DEVICES`` is the CPU plus CUDA and MPS where they are present; ``AUDITED`` is "fake-cuda"
(fake tensors that claim to be on a GPU, audited op by op: tests/device_audit.py) plus the
real GPUs present. ``make gpu-check`` runs this file on a machine with a GPU, where every test
here also runs on CUDA itself.
"""

import subprocess
import sys
import unittest.mock
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import alexnet
from alexnet.data import DataConfig, build_loaders
from alexnet.data.batch_transforms import BatchEvalTransform, BatchTrainTransform
from alexnet.data.color import imagenet_pca
from alexnet.data.store_loader import StoreEvalTransform, StoreTrainTransform
from alexnet.engine.checkpoint import read_checkpoint, restore_training, save_checkpoint
from alexnet.engine.evaluate import evaluate
from alexnet.engine.optim import LRSchedule, create_optimizer
from alexnet.engine.train import NonFiniteLoss, StepOptions, train_one_epoch
from alexnet.models import lrn
from alexnet.models.lrn import LocalResponseNormFunction, local_response_norm, reference_local_response_norm

from device_audit import audited, autocast, stub_backward

GPUS = (["cuda"] if torch.cuda.is_available() else []) + (
    ["mps"] if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else []
)
DEVICES = ["cpu", *GPUS]
AUDITED = ["fake-cuda", *GPUS]
MODELS = alexnet.list_models()


def synthetic(dev, *, train=48, val=20, size=63, tta=None, batch=8, **aug):
    cfg = DataConfig(dataset="synthetic", synthetic_train=train, synthetic_val=val, synthetic_classes=5,
                     synthetic_size=32, image_size=size, **aug)  # fmt: skip
    return build_loaders(cfg, device=dev, batch_size=batch, tta=tta)


# --- fake CUDA (and the real GPUs): what every op receives, and what makes the host wait --------


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("device", AUDITED)
def test_every_model_forward_keeps_to_its_device_and_never_waits(device, name):
    with audited(device) as (audit, dev):
        with dev:
            model = alexnet.create_model(name, num_classes=10, in_channels=3)
        x = torch.randn(2, 3, 227, 227, device=dev, requires_grad=True)
        y = model.train()(x)  # the fused LRN's autograd Function
        assert y.device.type == dev.type and y.shape == (2, 10)
        with torch.no_grad():  # the LRN's inference path
            model.eval()(x.contiguous(memory_format=torch.channels_last))
        with autocast(dev):  # what --amp runs on a GPU
            assert model(x).dtype == torch.bfloat16
    assert audit.mixed == [] and audit.syncs == []


@pytest.mark.parametrize("device", AUDITED)
def test_the_lrn_backward_keeps_to_its_device(device):
    """The one hand-written backward in the package, called as autograd would (the autograd
    engine itself needs a real GPU, so fake tensors cannot go through it)."""
    with audited(device) as (audit, dev):
        for groups, dtype in ((1, torch.float32), (2, torch.bfloat16)):
            x = torch.randn(2, 96, 27, 27, device=dev, dtype=dtype)
            ctx = unittest.mock.Mock(saved_tensors=(x, lrn._scale(x.float(), 5, 5e-4, 2.0, groups)),
                                     lrn=(5, 5e-4, 0.75, 2.0, groups))  # fmt: skip
            with torch.no_grad():
                dx = LocalResponseNormFunction.backward(ctx, torch.randn_like(x))[0]
            assert dx.device.type == dev.type and dx.dtype == dtype
    assert audit.mixed == [] and audit.syncs == []


def test_the_audit_catches_the_lrn_that_crashed_on_cuda(monkeypatch):
    """The LRN before the fix passed k as a 0-dim CPU tensor to addcmul: fake tensors alone let it
    through (as CUDA's kernel does not), the audit names it."""

    def old_scale(x, size, alpha, k, groups):
        s = torch.empty_like(x)
        torch.addcmul(torch.tensor(k, dtype=x.dtype), x, x, value=alpha / size, out=s)
        return s

    monkeypatch.setattr(lrn, "_scale", old_scale)
    with audited("fake-cuda") as (audit, dev):
        with dev:
            model = alexnet.create_model("alexnet_paper", num_classes=10)
        model(torch.randn(1, 3, 227, 227, device=dev))  # runs: fake tensors see no problem
    assert audit.mixed and all("aten.addcmul" in m and "cpu()" in m for m in audit.mixed), audit.mixed


def test_the_audit_catches_a_copy_that_waits():
    """A copy from pageable memory (the loaders' index copies before the fix) and a value read
    back are named; the same copy from pinned memory, non-blocking, is not."""
    with audited("fake-cuda") as (audit, dev):
        x = torch.zeros(4, device=dev)
        x.index_select(0, torch.arange(2).to(dev, non_blocking=True))
        assert len(audit.syncs) == 1 and "pageable" in audit.syncs[0]
        x.index_select(0, torch.arange(2).pin_memory().to(dev, non_blocking=True))
        x.sum().item()
    assert len(audit.syncs) == 2 and "read on the host" in audit.syncs[1]


@pytest.mark.parametrize("device", AUDITED)
def test_batch_transforms_keep_to_their_device_and_never_wait(device):
    with audited(device) as (audit, dev):
        eigval, eigvec = imagenet_pca(1)  # RGB images for a grey model: luma on the device
        train = BatchTrainTransform(image_size=63, in_channels=1, mean=(0.45,), std=(0.2,), padding=4, flip=True,
                                    rotate=10, translate=0.1, pca_color=0.1, eigval=eigval, eigvec=eigvec)  # fmt: skip
        x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, device=dev)
        gen = torch.Generator().manual_seed(0)
        for _ in range(2):  # the second batch finds the device constants already there
            assert train(x, gen).shape == (4, 1, 63, 63)
        ten = BatchEvalTransform(image_size=32, in_channels=3, mean=(0.5,), std=(0.25,), ten_crop_padding=4)
        assert ten(x[:, :1]).shape == (4, 10, 3, 32, 32)
        resized = BatchEvalTransform(image_size=56, in_channels=3, resize_to=64)
        assert resized(x).shape == (4, 3, 56, 56)
    assert audit.mixed == []
    # The constants (mean, std, PCA) reach each device once, from pinned memory: no waiting.
    assert audit.syncs == []


@pytest.mark.parametrize("device", AUDITED)
def test_store_transforms_keep_to_their_device_and_never_wait(device):
    """The image store's batches (uint8 256-style squares): the paper's crop (a gather) and the
    random-resized one (grid_sample), with flips and PCA noise; the ten crops of evaluation."""
    with audited(device) as (audit, dev):
        eigval, eigvec = imagenet_pca(3)
        colour = dict(in_channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, device=dev)
        gen = torch.Generator().manual_seed(0)
        for crop in ("paper", "random-resized"):
            train = StoreTrainTransform(crop=crop, image_size=56, scale_min=0.08, flip=True, eval_resize=64,
                                        pca_color=0.1, eigval=eigval, eigvec=eigvec, **colour)  # fmt: skip
            for _ in range(2):
                out = train(x, gen)
                assert out.shape == (4, 3, 56, 56) and out.device.type == dev.type and out.dtype == torch.float32
        ten = StoreEvalTransform(image_size=56, resize_to=72, ten_crop=True, **colour)
        assert ten(x).shape == (4, 10, 3, 56, 56)
    assert audit.mixed == [] and audit.syncs == [], audit.mixed + audit.syncs


def train_steps(device: str, steps: int, *, optimizer: str, clip: bool = True, float16: bool = False):
    """The syncs and mixed-device ops of ``steps`` training steps of alexnet_paper on the
    in-memory loader with every augmentation; gradients stubbed on fake tensors. ``float16``:
    float16 autocast with its GradScaler (what --amp does on a GPU without bfloat16), else bfloat16."""
    with audited(device) as (audit, dev):
        train, _, info = synthetic(dev, crop=True, flip=True, pca_color=0.1, rotate=5.0, translate=0.1)
        with dev:
            model = alexnet.create_model("alexnet_paper", num_classes=info.num_classes, in_channels=info.in_channels)
        opt = create_optimizer(model.parameters(), optimizer, lr=0.01, momentum=0.9, weight_decay=5e-4)
        schedule = LRSchedule(opt, "onecycle", total_steps=100, steps_per_epoch=len(train))
        with unittest.mock.patch.object(torch.cuda, "is_available", lambda: True):  # as autocast() does for fake CUDA
            scaler = torch.amp.GradScaler(dev.type, enabled=float16)
        opts = StepOptions(max_steps=steps, sync_every=100, clip_grad=1.0 if clip else None, channels_last=True,
                           skip_nonfinite=2, autocast=autocast(dev, torch.float16 if float16 else torch.bfloat16),
                           scaler=scaler)  # fmt: skip
        audit.syncs.clear()  # loading the data read values on the host: only the steps count
        backward = stub_backward(model) if device == "fake-cuda" else torch.Tensor.backward
        with unittest.mock.patch.object(torch.Tensor, "backward", backward):
            train.set_epoch(0)
            _, step = train_one_epoch(model, train, opt, schedule, nn.CrossEntropyLoss(label_smoothing=0.1), step=0,
                                      opts=opts)  # fmt: skip
    assert step == steps
    return audit


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("device", AUDITED)
def test_training_steps_keep_to_their_device_and_read_back_once(device, optimizer):
    """Forward, loss, the non-finite verdict, clipping, the fused update and the metrics: no
    CPU tensor reaches an op on the GPU, and the host reads back once whatever the steps."""
    two, five = train_steps(device, 2, optimizer=optimizer), train_steps(device, 5, optimizer=optimizer)
    assert two.mixed == [] and five.mixed == []
    assert len(two.syncs) == len(five.syncs) <= 4, five.syncs  # the reads at the end of the epoch
    assert any("_fused_" in op for op in five.ops)  # the fused update, with the verdict as found_inf


@pytest.mark.parametrize("device", AUDITED)
def test_float16_with_its_grad_scaler_keeps_to_the_device_and_reads_back_once(device):
    """The scaler's own check (unscale, found_inf into the fused SGD, the scale's update) and a
    skipped step's NaN loss are all device work too."""
    two, five = (train_steps(device, n, optimizer="sgd", float16=True) for n in (2, 5))
    assert two.mixed == [] and five.mixed == []
    assert len(two.syncs) == len(five.syncs) <= 4, five.syncs
    assert any("_amp_update_scale_" in op for op in five.ops) and any("_fused_sgd_" in op for op in five.ops)


@pytest.mark.parametrize("device", AUDITED)
def test_evaluation_keeps_to_its_device_and_reads_back_at_the_end(device):
    def run(n_val: int):
        with audited(device) as (audit, dev):
            _, val, info = synthetic(dev, val=n_val, tta="10crop", crop=True)
            with dev:
                model = alexnet.create_model("alexnet_paper_grouped", num_classes=info.num_classes)
            audit.syncs.clear()
            result = evaluate(model, val, info.num_classes, keep_mistakes=5, keep_samples=3)
        assert result["n"] == n_val or device == "fake-cuda"  # fake tensors count nothing
        return audit

    small, large = run(8), run(40)  # 1 batch, 5 batches
    assert small.mixed == [] and large.mixed == []
    assert len(small.syncs) == len(large.syncs), large.syncs


@pytest.mark.parametrize("device", AUDITED)
def test_a_checkpoint_from_the_cpu_resumes_on_the_device(device, tmp_path):
    """What --resume restores (model, optimizer, schedule, scaler) lands on the device, and the
    next step's fused update gets every tensor of the optimizer state there."""
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet_paper", num_classes=5, in_channels=1)
    opt = create_optimizer(model.parameters(), "adamw", lr=1e-3)
    schedule = LRSchedule(opt, "cosine", total_steps=10, steps_per_epoch=5)
    loss = model(torch.randn(2, 1, 63, 63)).logsumexp(1).sum()
    loss.backward()
    opt.step()
    path = tmp_path / "cpu.pt"
    save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": schedule.state_dict(),
                     "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict()}, path)  # fmt: skip
    ckpt = read_checkpoint(path)
    with audited(device) as (audit, dev):
        with dev:
            there = alexnet.create_model("alexnet_paper", num_classes=5, in_channels=1)
        there_opt = create_optimizer(there.parameters(), "adamw", lr=1e-3)
        there_schedule = LRSchedule(there_opt, "cosine", total_steps=10, steps_per_epoch=5)
        restore_training(ckpt, there, there_opt, there_schedule, torch.amp.GradScaler(dev.type, enabled=False), str(path))
        state = [t for s in there_opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        assert state and all(t.device.type == dev.type for t in state)
        assert all(p.device.type == dev.type for p in there.parameters())
        audit.mixed.clear()  # the restore copied from the CPU: that is what it is for
        for p in there.parameters():
            p.grad = torch.zeros_like(p)
        there_opt.step()
    assert audit.mixed == [] and any("_fused_adamw_" in op for op in audit.ops)


# --- real devices: the same numbers on every device -----------------------------------------


def assert_near(a: torch.Tensor, ref: torch.Tensor, scale: float, what: str = "") -> None:
    """Equal up to ``scale`` of the reference's largest magnitude."""
    err = (a.detach().cpu().double() - ref.detach().double()).abs().max().item()
    assert err <= scale * ref.abs().max().item(), f"{what}: off by {err:.3g}, {err / ref.abs().max().item():.3g} of its largest value"


def outputs_and_gradients(name: str, device: str, dtype: torch.dtype):
    torch.manual_seed(0)
    model = alexnet.create_model(name, num_classes=10, in_channels=3, dropout=0.0, init="torch").to(device, dtype)
    x = torch.randn(2, 3, 227, 227, generator=torch.Generator().manual_seed(1)).to(device, dtype).requires_grad_()
    y = model(x)
    y.square().sum().backward()
    return {"logits": y, "input gradient": x.grad, **{k: p.grad for k, p in model.named_parameters()}}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("device", GPUS)
def test_models_give_the_cpu_figures_on_the_device(device, name, monkeypatch):
    """In float64 the device computes what the CPU does, to rounding. In float32 cuDNN picks its
    own convolution algorithms, whose error reached 0.65% of the largest input gradient on an
    H200 with TF32 off (with TF32, PyTorch's default for convolutions, 10-13%): checked against
    float64, loosely, with TF32 off."""
    ref = outputs_and_gradients(name, "cpu", torch.float64)
    if device != "mps":  # MPS has no float64
        for key, value in outputs_and_gradients(name, device, torch.float64).items():
            assert_near(value, ref[key], 1e-9, key)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    for key, value in outputs_and_gradients(name, device, torch.float32).items():
        assert_near(value, ref[key], 2e-2, key)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_the_fused_lrn_equals_torchs_on_every_device(device, dtype):
    x = (torch.randn(4, 96, 27, 27, device=device) * 3).to(dtype).requires_grad_()
    xr = x.detach().float().requires_grad_()
    y = local_response_norm(x, 5, 5e-4, 0.75, 2.0, groups=2)
    ref = reference_local_response_norm(xr, 5, 5e-4, 0.75, 2.0, groups=2)
    g = torch.randn_like(ref)
    y.backward(g.to(dtype))
    ref.backward(g)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(y.float(), ref.detach(), **tol)
    torch.testing.assert_close(x.grad.float(), xr.grad, **tol)


@pytest.mark.parametrize("device", DEVICES)
def test_augmentation_is_the_same_on_every_device(device):
    """One seed, one augmentation: the random draws come from a CPU generator on every device."""
    eigval, eigvec = imagenet_pca(3)
    tf = BatchTrainTransform(image_size=63, in_channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), padding=4,
                             flip=True, rotate=10, translate=0.1, pca_color=0.1, eigval=eigval, eigvec=eigvec)  # fmt: skip
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    on_cpu = tf(x, torch.Generator().manual_seed(5))
    on_device = tf(x.to(device), torch.Generator().manual_seed(5))
    assert on_device.device.type == torch.device(device).type
    torch.testing.assert_close(on_device.cpu(), on_cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_a_nonfinite_batch_is_skipped_on_the_device(device):
    """The verdict works as found_inf in the fused kernels: a NaN batch leaves weights and
    optimizer state exactly as they were (as if it had not been there), and the next ones step."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(4)]
    data[1][0][2, 3] = float("nan")

    def run(batches, optimizer):
        model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).to(device)
        model.load_state_dict(base.state_dict())
        opt = create_optimizer(model.parameters(), optimizer, lr=0.05, momentum=0.9, weight_decay=1e-2)
        schedule = LRSchedule(opt, "none", total_steps=4, steps_per_epoch=4)
        on_device = [(x.to(device), y.to(device)) for x, y in batches]
        metrics, _ = train_one_epoch(model, on_device, opt, schedule, nn.CrossEntropyLoss(), step=0,
                                     opts=StepOptions(skip_nonfinite=1, sync_every=4))  # fmt: skip
        return model, metrics

    for optimizer in ("sgd", "adamw"):
        model, metrics = run(data, optimizer)
        assert metrics.progress.nonfinite_skipped == 1 and metrics.progress.sums.seen == 24
        clean, _ = run([b for i, b in enumerate(data) if i != 1], optimizer)
        for a, b in zip(model.parameters(), clean.parameters()):
            # AdamW counts steps: the skipped one is not counted, so the two runs agree exactly.
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_a_run_stopped_by_a_nonfinite_loss_keeps_the_last_good_weights(device):
    """Read back only every 4 steps, as on a GPU: the NaN at the 3rd step is found at the 4th,
    named exactly, and the 4th step (finite) was skipped too, so the weights are the 2nd's."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(6)]
    data[2][0][0, 0] = float("inf")

    def run(batches):
        torch.manual_seed(0)
        model = nn.Linear(5, 3).to(device)
        opt = create_optimizer(model.parameters(), "sgd", lr=0.1, momentum=0.9)
        schedule = LRSchedule(opt, "none", total_steps=6, steps_per_epoch=6)
        on_device = [(x.to(device), y.to(device)) for x, y in batches]
        try:
            train_one_epoch(model, on_device, opt, schedule, nn.CrossEntropyLoss(), step=0, opts=StepOptions(sync_every=4))
        except NonFiniteLoss as e:
            return model, str(e)
        return model, None

    model, message = run(data)
    assert message is not None and "at step 3 (batch 3 of the epoch" in message
    good, _ = run(data[:2])
    for a, b in zip(model.parameters(), good.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_training_and_10crop_evaluation_run_on_every_device(device):
    train, val, info = synthetic(device, tta="10crop", crop=True, flip=True, pca_color=0.1)
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet_paper", num_classes=info.num_classes, in_channels=info.in_channels,
                                 init="torch").to(device)  # fmt: skip
    before = [p.detach().clone() for p in model.parameters()]
    opt = create_optimizer(model.parameters(), "adamw", lr=1e-3)
    schedule = LRSchedule(opt, "cosine", total_steps=len(train), steps_per_epoch=len(train))
    train.set_epoch(0)
    metrics, step = train_one_epoch(model, train, opt, schedule, nn.CrossEntropyLoss(), step=0,
                                    opts=StepOptions(sync_every=4))  # fmt: skip
    assert step == len(train) and metrics.progress.complete and metrics.progress.sums.seen == 48
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    result = evaluate(model, val, info.num_classes, keep_mistakes=4, keep_samples=3)
    assert result["n"] == 20 and sum(map(sum, result["confusion"])) == 20
    assert len(result["samples"]) == 3 and len(result["mistakes"]) <= 4
    assert all(img.device.type == "cpu" and img.shape == (3, 63, 63) for img, _, _ in result["mistakes"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: make gpu-check runs for real")
def test_gpu_check_says_in_one_line_that_there_is_no_gpu():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.count("\n") == 1 and "no GPU here" in done.stderr and "nothing was checked" in done.stderr
