"""Local response normalisation across channels (Krizhevsky et al. 2012, section 3.3).

    b[c] = a[c] / (k + alpha / size * sum_{c' in window(c)} a[c']**2) ** beta

This is PyTorch's convention (``torch.nn.LocalResponseNorm``, also Caffe's): alpha is
divided by the window size, and the window of channel c is [c - size//2, c + (size-1)//2],
zero-padded at the ends. The module keeps that boundary so the implementation behind it
can be swapped without touching the models.

``groups`` keeps the window inside each group of channels: in the paper's two-GPU
layout each GPU normalised only its own half of the kernel maps.

Two implementations sit behind the module:

- ``"fused"`` (the default): ``LocalResponseNormFunction``, an autograd Function with the
  closed-form backward, several times faster than torch's on a CPU (``benchmarks/lrn.py``
  and ``benchmarks/step_options.py``; figures in benchmarks/RESULTS.md).
- ``"torch"``: ``torch.nn.functional.local_response_norm``, the reference. It is also what
  runs under TorchScript, ``torch.jit.trace`` and ONNX export, which cannot record a
  Python autograd Function.

How the fused one is fast, on a CPU where allocating and first touching a new
activation-sized tensor costs several passes over one already mapped:

- Window sums are shifted-slice multiply-adds along the channel dimension, written into
  a buffer in place (``addcmul_`` on views), so x**2 is never materialised: 5 passes for
  a window of 5. That beat a cumulative-sum difference (which also loses precision to
  cancellation), a banded (C, C) matmul and torch's pad + avg_pool3d
  (``benchmarks/lrn.py --window``). Slices work unchanged for contiguous and
  channels_last tensors, and a (N, groups, C/groups, ...) view keeps windows inside
  their group with no loop.
- s**-beta for the common beta=0.75 is rsqrt(s * sqrt(s)): three cheap passes, faster than
  ``pow``.
- Only s = k + alpha/size * W(x**2) is saved besides the input (which the ReLU before it
  keeps alive anyway): one extra activation-sized tensor, where torch's keeps three.
  s**-beta is recomputed in the backward rather than saved, which would cost a second one.
- bfloat16 (autocast) inputs are computed in float32 and the output stays bfloat16;
  torch's has no bfloat16 avg_pool3d on CPU and runs in float32 under autocast.

Gradient (W^T is the window transposed, i.e. with its before and after lengths swapped):

    dx = g * s**-beta - (2 * alpha * beta / size) * x * W^T(g * x * s**(-beta - 1))

Double backward (``create_graph=True``) goes through torch's ops: the backward then
differentiates the reference instead, so higher-order gradients are right, at the
reference's speed.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IMPLS = ("fused", "torch")

# Other float dtypes (bfloat16, float16) are converted to float32 once and the result rounded
# once: a CPU op mixing dtypes converts through a temporary each time, an allocation each.
_NATIVE_DTYPES = (torch.float32, torch.float64)


def _by_group(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, *) -> (N, groups, C // groups, *), a view for contiguous and channels_last tensors."""
    return t.view(t.shape[0], groups, t.shape[1] // groups, *t.shape[2:])


def _shifts(before: int, after: int, length: int):
    """(output slice, input slice) pairs along a channel axis of `length`, one per window offset
    in [-before, after] except the centre; out[i] takes in[i + offset], zero-padded at the ends."""
    for d in range(-before, after + 1):
        if d == 0 or abs(d) >= length:
            continue
        lo, hi = max(0, -d), min(length, length - d)
        yield slice(lo, hi), slice(lo + d, hi + d)


def _neg_pow(s: torch.Tensor, beta: float, out: torch.Tensor) -> torch.Tensor:
    """out = s ** -beta; cheap passes for the usual betas, ``pow`` (slow on CPU) otherwise."""
    if beta == 0.75:
        return torch.sqrt(s, out=out).mul_(s).rsqrt_()
    if beta == 0.5:
        return torch.rsqrt(s, out=out)
    if beta == 1.0:
        return torch.reciprocal(s, out=out)
    return torch.pow(s, -beta, out=out)


def _scale(x: torch.Tensor, size: int, alpha: float, k: float, groups: int) -> torch.Tensor:
    """s = k + alpha / size * W(x**2), in a new tensor with x's dtype and memory format."""
    s = torch.empty_like(x)
    xg, sg = _by_group(x, groups), _by_group(s, groups)
    c = alpha / size
    # k as a 0-dim tensor on x's device, filled there: a CPU scalar tensor as addcmul's first
    # argument is refused by CUDA's kernel, and one copied from the host would wait for the GPU.
    torch.addcmul(x.new_full((), k), x, x, value=c, out=s)
    for out, src in _shifts(size // 2, (size - 1) // 2, xg.shape[2]):
        sg[:, :, out].addcmul_(xg[:, :, src], xg[:, :, src], value=c)
    return s


class LocalResponseNormFunction(torch.autograd.Function):
    """Fused LRN with the closed-form backward; saves x and s only. See the module docstring."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
        xw = x if x.dtype in _NATIVE_DTYPES else x.float()
        s = _scale(xw, size, alpha, k, groups)
        y = _neg_pow(s, beta, out=torch.empty_like(s)).mul_(xw)
        ctx.save_for_backward(x, s)
        ctx.lrn = (size, alpha, beta, k, groups)
        return y if xw is x else y.to(x.dtype)  # an op with a bfloat16 out= would round via a temporary

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, s = ctx.saved_tensors
        size, alpha, beta, k, groups = ctx.lrn
        if torch.is_grad_enabled():  # create_graph=True: a gradient that is itself differentiable
            with torch.enable_grad():
                xw = x if x.dtype in _NATIVE_DTYPES else x.float()
                y = reference_local_response_norm(xw, size, alpha, beta, k, groups)
                (dx,) = torch.autograd.grad(y, x, g, create_graph=True)
            return dx, None, None, None, None, None
        xw = x if x.dtype == s.dtype else torch.empty_like(s).copy_(x)

        gp = _neg_pow(s, beta, out=torch.empty_like(s))
        if g.dtype == s.dtype:
            gp.mul_(g)  # g * s**-beta
            inner = torch.div(gp, s, out=torch.empty_like(s))
        else:  # the float32 copy of g is needed once: its buffer then holds the next term
            gw = torch.empty_like(s).copy_(g)
            gp.mul_(gw)
            inner = torch.div(gp, s, out=gw)
        inner.mul_(xw)  # g * x * s**(-beta-1)
        c = -2.0 * alpha * beta / size
        wt = torch.mul(inner, c, out=torch.empty_like(s))
        ig, wg = _by_group(inner, groups), _by_group(wt, groups)
        for out, src in _shifts((size - 1) // 2, size // 2, ig.shape[2]):  # W^T: before/after swapped
            wg[:, :, out].add_(ig[:, :, src], alpha=c)
        dx = gp.addcmul_(xw, wt)
        return dx.to(x.dtype), None, None, None, None, None


def reference_local_response_norm(
    x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, groups: int = 1
) -> torch.Tensor:
    """torch's ``F.local_response_norm`` on each of ``groups`` channel chunks."""
    if groups == 1:
        return F.local_response_norm(x, size, alpha, beta, k)
    return torch.cat([F.local_response_norm(h, size, alpha, beta, k) for h in x.chunk(groups, 1)], 1)


def functional_local_response_norm(
    x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, groups: int = 1
) -> torch.Tensor:
    """The same in plain differentiable ops, no ``out=`` and no in-place writes: what runs under
    ``torch.compile``, whose compiler fuses it into a few kernels of its own (and which failed
    to trace the fused function's ``out=`` ops in torch 2.11 on CUDA)."""
    if x.shape[1] % groups:  # unequal chunks, as torch.chunk makes them
        return torch.cat([functional_local_response_norm(h, size, alpha, beta, k) for h in x.chunk(groups, 1)], 1)
    xw = x if x.dtype in _NATIVE_DTYPES else x.float()
    sq = _by_group(xw * xw, groups)  # (N, groups, C/groups, *)
    before, after = size // 2, (size - 1) // 2
    padded = F.pad(sq, (0, 0) * (sq.dim() - 3) + (before, after))  # zeros beyond each group's ends
    channels = sq.shape[2]
    window = sum(padded[:, :, i : i + channels] for i in range(size))
    s = (window * (alpha / size) + k).view_as(xw)
    return (xw * s.pow(-beta)).to(x.dtype)


def _lrn_inference(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """Forward only: s is built in the output buffer and turned into y in place."""
    xw = x if x.dtype in _NATIVE_DTYPES else x.float()
    y = _scale(xw, size, alpha, k, groups)
    if beta == 0.75:  # in place, as (s**0.5)**3 then rsqrt: pow with exponent 3 is a fast path
        y.sqrt_().pow_(3).rsqrt_()
    elif beta == 0.5:
        y.rsqrt_()
    elif beta == 1.0:
        y.reciprocal_()
    else:
        y.pow_(-beta)
    return y.mul_(xw).to(x.dtype)


def _is_dense(x: torch.Tensor) -> bool:
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)) or (
        x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)
    )


def local_response_norm(
    x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, groups: int = 1
) -> torch.Tensor:
    """Fused ``F.local_response_norm`` with windows kept inside ``groups`` equal channel groups.

    Input (N, C, *) of float32, float64 or bfloat16/float16 (computed in float32); the
    output has the input's dtype and memory format.
    """
    if x.dim() < 3:
        raise ValueError(f"Expected 3D or higher dimensionality input (got {x.dim()} dimensions)")
    if x.numel() == 0:
        return x
    if x.shape[1] % groups:  # unequal chunks, as torch.chunk makes them: rare, so a loop
        return torch.cat([local_response_norm(h, size, alpha, beta, k) for h in x.chunk(groups, 1)], 1)
    if not _is_dense(x):  # dense again, in the same dimension order (channels_last stays so)
        x = x.clone(memory_format=torch.preserve_format)
    if torch.is_grad_enabled() and x.requires_grad:
        return LocalResponseNormFunction.apply(x, size, alpha, beta, k, groups)
    return _lrn_inference(x, size, alpha, beta, k, groups)


class LocalResponseNorm(nn.Module):
    """``torch.nn.LocalResponseNorm`` plus ``groups``; ``impl`` picks "fused" (default) or "torch"."""

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 1.0,
        groups: int = 1,
        impl: str = "fused",
    ):
        super().__init__()
        if size < 1 or groups < 1:
            raise ValueError("size and groups must be positive")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._reference(x)
        else:  # TorchScript does not compile this branch
            # A Python autograd Function cannot be recorded by the tracer or the ONNX exporter.
            if self.impl == "torch" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
                return self._reference(x)
            if torch.compiler.is_compiling():
                return functional_local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.groups)
            return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.groups)

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        return reference_local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.groups)

    def extra_repr(self) -> str:
        impl = "" if self.impl == "fused" else f", impl={self.impl!r}"
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, groups={self.groups}{impl}"
