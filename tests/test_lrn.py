"""The fused LocalResponseNorm against torch's: values, gradients, dtypes, layouts, export paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from alexnet import create_model
from alexnet.models.lrn import LocalResponseNorm, functional_local_response_norm, local_response_norm

# alpha large enough that the window dominates k: a wrong window changes the output a lot.
LRN = dict(alpha=2.0, beta=0.75, k=1.0)
RTOL, ATOL = 1e-5, 1e-6


def _inputs(shape, channels_last=False, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(shape, generator=gen, dtype=dtype)
    return x.requires_grad_(), g


def _value_and_grad(fn, x, g):
    y = fn(x)
    (dx,) = torch.autograd.grad(y, x, g)
    return y, dx


def _torch_grouped(x, size, groups, alpha, beta, k):
    """The paper's layout done by hand: torch's LRN on each channel chunk."""
    return torch.cat([F.local_response_norm(h, size, alpha, beta, k) for h in x.chunk(groups, 1)], 1)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("shape", [(2, 7, 5, 4), (2, 3, 4, 3), (3, 16, 3, 3)], ids=["C7", "C3", "C16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_matches_torch(size, shape, channels_last):
    x, g = _inputs(shape, channels_last)
    y, dx = _value_and_grad(LocalResponseNorm(size, **LRN), x, g)
    y_ref, dx_ref = _value_and_grad(lambda t: F.local_response_norm(t, size, **LRN), x, g)
    torch.testing.assert_close(y, y_ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(dx, dx_ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.6, 2.0])  # the special-cased powers and pow itself
@pytest.mark.parametrize("grad", [True, False], ids=["train", "inference"])
def test_matches_torch_other_betas(beta, grad):
    x, g = _inputs((2, 9, 4, 4))
    params = dict(LRN, beta=beta)
    if grad:
        y, dx = _value_and_grad(LocalResponseNorm(4, **params), x, g)
        y_ref, dx_ref = _value_and_grad(lambda t: F.local_response_norm(t, 4, **params), x, g)
        torch.testing.assert_close(dx, dx_ref, rtol=RTOL, atol=ATOL)
    else:
        with torch.no_grad():
            y, y_ref = LocalResponseNorm(4, **params)(x), F.local_response_norm(x, 4, **params)
    torch.testing.assert_close(y, y_ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", [(2, 6, 11), (2, 6, 3, 2, 4)], ids=["3d", "5d"])
def test_other_ranks(shape):
    x, g = _inputs(shape)
    y, dx = _value_and_grad(LocalResponseNorm(3, **LRN), x, g)
    y_ref, dx_ref = _value_and_grad(lambda t: F.local_response_norm(t, 3, **LRN), x, g)
    torch.testing.assert_close(y, y_ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(dx, dx_ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("size", [2, 5])
@pytest.mark.parametrize("channels", [12, 7], ids=["even-split", "uneven-split"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_groups_keep_windows_inside_each_half(size, channels, channels_last):
    x, g = _inputs((2, channels, 4, 3), channels_last)
    y, dx = _value_and_grad(LocalResponseNorm(size, **LRN, groups=2), x, g)
    y_ref, dx_ref = _value_and_grad(lambda t: _torch_grouped(t, size, 2, **LRN), x, g)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(y, y_ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(dx, dx_ref, rtol=RTOL, atol=ATOL)
    # and the grouping matters here: one window over all channels gives other numbers
    assert not torch.allclose(y, F.local_response_norm(x, size, **LRN), rtol=1e-3)


@pytest.mark.parametrize("size, groups", [(3, 1), (4, 1), (5, 2)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_gradcheck_float64(size, groups, channels_last):
    x, _ = _inputs((2, 6, 3, 3), channels_last, torch.float64)
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, size, **LRN, groups=groups), (x,))


def test_double_backward_goes_through_torch_ops():
    x, _ = _inputs((2, 6, 3, 3), dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda t: local_response_norm(t, 4, **LRN, groups=2), (x,))


def test_bfloat16_close_to_float32():
    x, g = _inputs((2, 8, 5, 5), channels_last=True)
    xb = x.detach().bfloat16().requires_grad_()
    y, dx = _value_and_grad(LocalResponseNorm(5, **LRN, groups=2), xb, g.bfloat16())
    assert y.dtype == dx.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=torch.channels_last)
    # Reference: float32 on the same bf16 numbers. Computed in float32 and rounded once, the
    # result is within one bf16 step (2**-8 relative) of it; computed in bf16 it is not.
    x32 = xb.detach().float().requires_grad_()
    y_ref, dx_ref = _value_and_grad(lambda t: _torch_grouped(t, 5, 2, **LRN), x32, g.bfloat16().float())
    torch.testing.assert_close(y.float(), y_ref, rtol=4e-3, atol=2e-3)
    torch.testing.assert_close(dx.float(), dx_ref, rtol=4e-3, atol=2e-3)


def test_under_bf16_autocast_like_training():
    torch.manual_seed(0)
    net, x = _small_net(), torch.randn(2, 3, 9, 9)
    ref = _small_net(impl="torch")
    ref.load_state_dict(net.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert y.dtype == torch.bfloat16  # stays in the autocast dtype, unlike torch's (float32 out)
    y.float().square().sum().backward()
    ref(x).square().sum().backward()  # float32 throughout
    torch.testing.assert_close(y.float(), ref(x).detach(), rtol=2e-2, atol=2e-2)
    w, w_ref = net[0].weight.grad, ref[0].weight.grad
    assert (w - w_ref).norm() < 2e-2 * w_ref.norm()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_memory_format_preserved(channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, g = _inputs((2, 8, 4, 5), channels_last)
    y, dx = _value_and_grad(LocalResponseNorm(5, **LRN), x, g)
    assert y.is_contiguous(memory_format=fmt) and dx.is_contiguous(memory_format=fmt)
    with torch.no_grad():
        assert LocalResponseNorm(5, **LRN)(x).is_contiguous(memory_format=fmt)


def test_strided_input():
    x, g = _inputs((2, 5, 6, 8))
    view = x[:, :, ::2].transpose(2, 3)  # neither contiguous nor channels_last
    y, dx = _value_and_grad(lambda t: local_response_norm(t, 3, **LRN), x, g)
    (dv,) = torch.autograd.grad(local_response_norm(view, 3, **LRN), x, g[:, :, ::2].transpose(2, 3))
    (dv_ref,) = torch.autograd.grad(F.local_response_norm(view, 3, **LRN), x, g[:, :, ::2].transpose(2, 3))
    torch.testing.assert_close(local_response_norm(view, 3, **LRN), F.local_response_norm(view, 3, **LRN))
    torch.testing.assert_close(dv, dv_ref, rtol=RTOL, atol=ATOL)


def test_saves_only_input_and_scale():
    x, _ = _inputs((2, 8, 4, 4))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = LocalResponseNorm(5, **LRN)(x)
    assert len(saved) == 2 and saved[0] is x  # x (kept alive by the ReLU anyway) and s
    assert saved[1].shape == x.shape and saved[1].untyped_storage().data_ptr() != y.untyped_storage().data_ptr()


def test_fused_is_the_default_and_used_by_the_models():
    assert LocalResponseNorm().impl == "fused"
    x, _ = _inputs((1, 6, 3, 3))
    assert type(LocalResponseNorm(3)(x).grad_fn).__name__ == "LocalResponseNormFunctionBackward"
    assert type(LocalResponseNorm(3, impl="torch")(x).grad_fn).__name__ == "DivBackward0"
    for name in ("alexnet_paper", "alexnet_paper_grouped"):
        norms = [m for m in create_model(name, num_classes=10).modules() if isinstance(m, LocalResponseNorm)]
        assert len(norms) == 2 and all(m.impl == "fused" for m in norms)


def test_rejects_unknown_impl_and_low_rank():
    with pytest.raises(ValueError, match="impl"):
        LocalResponseNorm(impl="cuda")
    with pytest.raises(ValueError, match="3D"):
        local_response_norm(torch.ones(2, 3), 3)


def _small_net(impl="fused"):
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(inplace=True), LocalResponseNorm(5, **LRN, groups=2, impl=impl))


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_jit_trace_and_script_use_torch_ops():
    torch.manual_seed(0)
    net, x = _small_net().eval(), torch.randn(2, 3, 9, 9)
    traced = torch.jit.trace(net, x)
    graph = str(traced.inlined_graph)
    assert "PythonOp" not in graph and "avg_pool3d" in graph  # an autograd.Function would be opaque
    torch.testing.assert_close(traced(x), net(x), rtol=RTOL, atol=ATOL)
    scripted = torch.jit.script(net)
    torch.testing.assert_close(scripted(x), net(x), rtol=RTOL, atol=ATOL)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize(
    "dynamo",
    [False, pytest.param(True, marks=pytest.mark.slow)],  # torch.export-based: the default, ~2 s to start
    ids=["torchscript", "dynamo"],
)
def test_onnx_export_records_torch_ops(tmp_path, dynamo):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    net, x = _small_net().eval(), torch.randn(2, 3, 9, 9)
    path = tmp_path / "lrn.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=dynamo, input_names=["x"])
    assert "AveragePool" in {node.op_type for node in onnx.load(str(path)).graph.node}
    (out,) = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), net(x).detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 3])  # 3: unequal chunks of the 8 channels
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_the_functional_form_equals_torchs(channels_last, groups):
    """What runs under torch.compile: plain ops, the same values and gradients."""
    x, g = _inputs((2, 8, 5, 5), channels_last)
    y, dx = _value_and_grad(lambda t: functional_local_response_norm(t, 5, **LRN, groups=groups), x, g)
    y_ref, dx_ref = _value_and_grad(lambda t: _torch_grouped(t, 5, groups, **LRN), x, g)
    torch.testing.assert_close(y, y_ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(dx, dx_ref, rtol=RTOL, atol=ATOL)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    xb = x.detach().to(torch.bfloat16)
    assert functional_local_response_norm(xb, 5, **LRN, groups=groups).dtype == torch.bfloat16


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_torch_compile(channels_last):
    x, g = _inputs((2, 8, 5, 5), channels_last)
    compiled = torch.compile(LocalResponseNorm(5, **LRN, groups=2))
    y, dx = _value_and_grad(compiled, x, g)
    y_ref, dx_ref = _value_and_grad(lambda t: _torch_grouped(t, 5, 2, **LRN), x, g)
    torch.testing.assert_close(y, y_ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(dx, dx_ref, rtol=RTOL, atol=ATOL)
