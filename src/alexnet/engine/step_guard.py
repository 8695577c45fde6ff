"""What every training step decides, decided on the device and, under DDP, by all ranks together.

Two things can keep a step from updating the weights, or the run from going on: a loss that is
NaN or infinite, and a signal (SIGINT, SIGTERM). Reading either back on the host at every step
would stall a GPU: the host would wait for a step's kernels to finish before queueing the next
step's. So the verdict on each step is a 0-dim tensor on the device, and the host reads the
verdicts only every ``sync_every`` steps (``StepGuard.read``):

- A fused optimizer (``create_optimizer``'s default on CPU and CUDA) takes the verdict as its
  ``found_inf``, the flag GradScaler uses: its kernels then leave the weights and the optimizer
  state as they were, with no sync. Other optimizers (for-loop or foreach; MPS) read it first,
  one sync per step; with float16's GradScaler a skipped step's loss becomes NaN, so that the
  scaler skips it (and lowers its scale, as for any overflow).
- The bad losses are counted on the device. Once there are more than ``--skip-nonfinite``
  allows, every later step is skipped too (the count only grows), so the weights stay those of
  the last good step until the next read stops the run, naming the step that failed.
- Under DDP each step all-reduces (MAX) two numbers before backward: this rank's bad-loss flag
  and the number of the signal it received, if any. Without it, a rank whose loss was NaN would
  skip while the others stepped with the NaN gradients it sent them, and a rank that stopped
  alone would leave the others waiting in their next all-reduce. Every rank reads at the same
  steps and sees the same numbers, so all skip, stop or fail together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import distributed as dist


@dataclass
class Reading:
    """The verdicts since the last read, on the host."""

    skipped: list[tuple[int, int, float, bool]] = field(default_factory=list)  # (step, batch, loss, on another rank)
    failed: tuple[int, int, float, float, bool] | None = None  # (step, batch, lr, loss, on another rank)
    signal: int = 0  # the largest signal number any rank received (0: none)


@dataclass
class _Pending:
    step: int
    batch: int
    lr: float
    bad: torch.Tensor  # 0-dim bool: bad on some rank
    loss: torch.Tensor  # 0-dim float32: this rank's loss


class StepGuard:
    """One epoch's verdicts: ``verdict`` every step, ``read`` at the steps every rank reads at."""

    def __init__(self, device: torch.device, *, allowance: int, agree: bool):
        self.allowance, self.agree = allowance, agree
        self.count = torch.zeros((), dtype=torch.int64, device=device)  # bad losses so far (on any rank)
        self.signal = torch.zeros((), dtype=torch.float32, device=device)  # agreed: the largest signal number
        self._own_signal = torch.zeros((), dtype=torch.float32, device=device)
        self._own_signal_host = 0
        self._pending: list[_Pending] = []
        self._bad_read = 0  # bad losses already read on the host

    def verdict(self, loss: torch.Tensor, *, step: int, batch: int, lr: float, signal: int = 0) -> torch.Tensor:
        """Whether this step's update must be skipped: a 0-dim bool on the device, no sync.

        ``signal``: the signal this rank received so far (0: none), passed on to the others.
        """
        loss = loss.detach().float()
        bad = ~torch.isfinite(loss)
        if self.agree:
            if signal != self._own_signal_host:  # a kernel argument, not a host-to-device copy
                self._own_signal.fill_(signal)
                self._own_signal_host = signal
            flags = torch.stack([bad.to(torch.float32), self._own_signal])
            dist.all_reduce_max(flags)
            bad, self.signal = flags[0] > 0, flags[1]
        self.count += bad
        self._pending.append(_Pending(step, batch, lr, bad, loss))
        return bad | (self.count > self.allowance)

    def read(self) -> Reading:
        """The verdicts since the last read, in one device-to-host copy."""
        reading = Reading()
        if not self._pending:
            return reading
        pending, self._pending = self._pending, []
        bad = torch.stack([p.bad for p in pending]).to(torch.float32)
        loss = torch.stack([p.loss for p in pending])
        values = torch.cat([bad, loss, self.signal.view(1)]).cpu().tolist()
        n = len(pending)
        reading.signal = int(values[-1])
        for p, was_bad, value in zip(pending, values[:n], values[n : 2 * n], strict=True):
            if not was_bad:
                continue
            elsewhere = value == value and abs(value) != float("inf")  # finite here: bad on another rank
            self._bad_read += 1
            if self._bad_read > self.allowance:
                reading.failed = (p.step, p.batch, p.lr, value, elsewhere)
                break
            reading.skipped.append((p.step, p.batch, value, elsewhere))
        return reading


def guarded_update(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, skip: torch.Tensor) -> None:
    """One optimizer step that leaves weights and state untouched where ``skip`` is true."""
    if scaler.is_enabled():  # the loss was made NaN where skip is true: the scaler skips it
        scaler.step(optimizer)
        scaler.update()
    elif all(group.get("fused") for group in optimizer.param_groups):
        optimizer.found_inf = skip.to(torch.float32)  # read by the fused kernels on the device
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not skip.item():  # no found_inf here: the host decides, one sync per step
        optimizer.step()
