"""Watch every aten op that device code runs: what each one receives, and which make the host wait.

On a machine without a GPU the code runs on fake tensors that claim to be on ``cuda``
(``FakeTensorMode``: shapes, dtypes and devices propagate, no data exists). Fake tensors alone
do not catch the bug this is for: a 0-dim CPU tensor handed to an op on the GPU passes their
device propagation, and CUDA's ``addcmul`` kernel still refuses it. So ``DeviceAudit``, a
dispatch mode above the fake one, looks at the arguments of every op:

- ``mixed``: ops that received tensors on the device and on the CPU, other than the copies
  between them;
- ``syncs``: ops after which the host must wait for the device: reading a value
  (``_local_scalar_dense``: ``.item()``, ``bool()``, ``.tolist()``), copies to the host, copies
  to the device from pageable memory (CUDA waits for the stream before those), and ops whose
  output size depends on the data (``nonzero``, CUDA's ``bincount``...).

With fake tensors the audit also answers what they cannot: a value read back is 0 (the
steps are finite, no signal came), a copy to the host is zeros, ``pin_memory`` gives a copy
noted as pinned, and the fused optimizer kernels (which have no fake implementation) are
checked and not run. On a real GPU it only records.
"""

from __future__ import annotations

import contextlib
import traceback
import unittest.mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

COPIES = {aten._to_copy.default, aten.copy_.default}


def _overloads(names: list[str], overloads=("default",)) -> set:
    """The aten overloads that exist in this torch (the list changes between releases)."""
    found = set()
    for name in names:
        packet = getattr(aten, name, None)
        found |= {getattr(packet, o) for o in overloads if packet is not None and hasattr(packet, o)}
    return found


# Output sizes that depend on the data, or a bool computed from it: the host waits for the answer.
DATA_DEPENDENT = _overloads(["nonzero", "masked_select", "equal", "is_nonzero", "_unique2", "unique_consecutive",
                             "unique_dim", "bincount"]) | _overloads(["repeat_interleave"], ("Tensor",))  # fmt: skip
# Fused optimizer kernels: no fake implementation; the audit checks their arguments instead.
FUSED = _overloads(["_fused_adam_", "_fused_adamw_", "_fused_sgd_"], ("default", "tensor_lr"))


def _device_type(x) -> str:
    return torch.device(x).type if x is not None else ""


class DeviceAudit(TorchDispatchMode):
    def __init__(self, device: str = "cuda", *, fake: bool):
        super().__init__()
        self.device, self.fake = device, fake
        self.mixed: list[str] = []
        self.syncs: list[str] = []
        self.ops: list[str] = []
        self._pinned: list[torch.Tensor] = []  # kept alive, so that their ids stay theirs

    def _where(self) -> str:
        """The innermost frame of this package that ran the op."""
        for frame in reversed(traceback.extract_stack()):
            if "/alexnet/" in frame.filename.replace("\\", "/") and "/tests/" not in frame.filename:
                return f"{frame.filename.rsplit('/alexnet/', 1)[-1]}:{frame.lineno}"
        return "?"

    def _is_pinned(self, t: torch.Tensor) -> bool:
        return any(t is p for p in self._pinned) if self.fake else t.is_pinned()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors}
        name = str(func)
        self.ops.append(name)
        if self.device in devices and "cpu" in devices and func not in COPIES:
            shapes = ", ".join(f"{t.device.type}{tuple(t.shape)}" for t in tensors)
            self.mixed.append(f"{self._where()} {name}({shapes})")

        if func is aten._pin_memory.default and self.fake:
            out = args[0].clone()
            self._pinned.append(out)
            return out
        if func in FUSED:
            if self.fake:
                return None  # in place; nothing to compute on fake tensors
            return func(*args, **kwargs)
        if func is aten._local_scalar_dense.default:
            self.syncs.append(f"{self._where()} {name}: a value read on the host")
            if self.fake:
                return False if args[0].dtype == torch.bool else 0
        elif func in DATA_DEPENDENT:
            self.syncs.append(f"{self._where()} {name}: its output depends on the data")
        elif func is aten._to_copy.default:
            src, dst = args[0].device.type, _device_type(kwargs.get("device")) or args[0].device.type
            if src == self.device and dst == "cpu":
                self.syncs.append(f"{self._where()} {name}: a copy to the host")
                if self.fake:
                    with unset_fake_temporarily():
                        return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
            elif src == "cpu" and dst == self.device and not (kwargs.get("non_blocking") and self._is_pinned(args[0])):
                self.syncs.append(f"{self._where()} {name}: a copy to the device from pageable memory or blocking")
        elif func is aten.copy_.default:
            dst, src = args[0].device.type, args[1].device.type
            if src == self.device and dst == "cpu":
                self.syncs.append(f"{self._where()} {name}: a copy to the host")
            elif src == "cpu" and dst == self.device and not (len(args) > 2 and args[2] and self._is_pinned(args[1])):
                self.syncs.append(f"{self._where()} {name}: a copy to the device from pageable memory or blocking")
        return func(*args, **kwargs)


@contextlib.contextmanager
def audited(device: str):
    """``device`` "fake-cuda" (fake tensors that claim CUDA, on any machine) or a real device
    such as "cuda": yields (the audit, the torch.device to build on). Build models inside
    ``with torch.device(...)`` on fake tensors (``Module.to`` cannot swap fake parameters in)."""
    if device == "fake-cuda":
        with FakeTensorMode(allow_non_fake_inputs=True), DeviceAudit("cuda", fake=True) as audit:
            yield audit, torch.device("cuda")
    else:
        with DeviceAudit(torch.device(device).type, fake=False) as audit:
            yield audit, torch.device(device)


def autocast(dev: torch.device, dtype: torch.dtype = torch.bfloat16):
    """``torch.autocast`` for ``dev``, also for fake CUDA: torch turns autocast off when it finds
    no driver at construction, so the check is answered yes while it is built (only then)."""
    if dev.type != "cuda" or torch.cuda.is_available():
        return torch.autocast(dev.type, dtype=dtype)
    with unittest.mock.patch.object(torch.cuda, "is_available", lambda: True), \
            unittest.mock.patch.object(torch.cuda, "is_bf16_supported", lambda *a, **k: True):  # fmt: skip
        return torch.autocast("cuda", dtype=dtype)


def stub_backward(model: torch.nn.Module):
    """A stand-in for ``Tensor.backward`` on fake tensors, whose autograd engine wants a CUDA
    driver: every parameter gets a gradient of its own shape and device, as backward would."""

    def backward(self, *args, **kwargs):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)

    return backward
