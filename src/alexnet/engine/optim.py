"""Factories for the optimizer and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

SCHEDULES = ("none", "step", "plateau", "cosine", "onecycle")


# Where create_optimizer takes PyTorch's fused (one kernel per tensor) SGD and AdamW by default.
FUSED_DEVICES = ("cpu", "cuda")


def create_optimizer(
    params,
    name: str,
    *,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """SGD or AdamW over ``params``; ``fused`` by default where all parameters are on a CPU or
    a CUDA device (PyTorch has fused kernels for MPS too; not used here, unmeasured).

    The fused update reads and writes each parameter, gradient and state tensor once, where
    the default for-loop update passes over memory once per arithmetic operation; for
    AlexNet's 58 M parameters that is a large part of a small-image training step
    (benchmarks/optimizer_step.py; figures in benchmarks/RESULTS.md).
    """
    # Param groups as torch takes them (a tensor or an iterable of them under "params"), read once.
    params = [
        {**p, "params": [p["params"]] if isinstance(p["params"], torch.Tensor) else list(p["params"])}
        if isinstance(p, dict) else p
        for p in params
    ]  # fmt: skip
    if fused is None:
        tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
        fused = bool(tensors) and all(t.device.type in FUSED_DEVICES and t.is_floating_point() for t in tensors)
    if name == "sgd":
        sgd = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                              fused=fused or None)  # fmt: skip
        if fused and momentum:
            # Momentum starts at zero, which with no dampening is torch's first step (buffer = gradient)
            # exactly. Left unset, a first step skipped through found_inf (step_guard.py) would leave
            # the fused kernel's uninitialised buffers behind for the next step to use.
            for group in sgd.param_groups:
                for p in group["params"]:
                    sgd.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return sgd
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    raise ValueError(f"unknown optimizer {name!r}")


class LRSchedule:
    """The learning rate as a function of the optimizer step, set before every step.

    One object covers every schedule so that warm-up composes with all of them and the
    whole state is three numbers in the checkpoint:

    - none: constant; step: times ``gamma`` every ``step_epochs`` epochs;
    - plateau: the paper's rule, times ``gamma`` when the validation error has not improved
      for ``patience`` epochs (call ``epoch_end``);
    - cosine: from the base rate down to ``min_lr`` over the run;
    - onecycle: up from base/25 to the base rate over the first 25% of steps, then down to
      base/2.5e5 (the shape and constants of ``torch.optim.lr_scheduler.OneCycleLR``).

    A linear warm-up over ``warmup_steps`` multiplies the result (not for onecycle, which
    has its own).

    ``replan`` fits the rest of the curve into fewer (or more) steps from the current one on:
    a time budget that finds the run slower than planned still anneals to the end, with no
    jump in the rate.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: str,
        *,
        total_steps: int,
        steps_per_epoch: int,
        warmup_steps: int = 0,
        step_epochs: int = 30,
        gamma: float = 0.1,
        patience: int = 2,
        min_lr: float = 0.0,
    ):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}")
        self.optimizer = optimizer
        self.kind = kind
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.total_steps = max(1, total_steps)
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.warmup_steps = 0 if kind == "onecycle" else warmup_steps
        self.step_epochs, self.gamma, self.patience, self.min_lr = step_epochs, gamma, patience, min_lr
        # replan: from step ``s0`` on, the curve is read at ``e0 + (step - s0) * rate``
        self.warp = (0, 0.0, 1.0)
        self.planned = self.total_steps  # the steps the curve is fitted into
        # plateau state
        self.scale = 1.0
        self.best = math.inf
        self.bad_epochs = 0

    def _position(self, step: int) -> float:
        s0, e0, rate = self.warp
        return step if step < s0 else e0 + (step - s0) * rate

    def replan(self, step: int, total_steps: int) -> None:
        """From ``step`` on, the rest of the curve in ``total_steps - step`` steps."""
        here = self._position(step)  # the new last step reads the curve's last step
        self.warp = (step, here, max(0.0, self.total_steps - 1 - here) / max(1, total_steps - 1 - step))
        self.planned = total_steps

    def factor(self, step: int) -> float:
        """The multiplier on the base rate before the optimizer's ``step``-th update (0-based)."""
        step = self._position(step)
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.kind in ("none", "plateau"):
            return warm * self.scale
        if self.kind == "step":
            return warm * self.gamma ** (step // (self.step_epochs * self.steps_per_epoch))
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, max(0.0, (step - self.warmup_steps) / span))
            return warm * 0.5 * (1.0 + math.cos(math.pi * t))
        # onecycle
        up = max(1, int(0.25 * self.total_steps))
        start, end = 1 / 25, 1 / 25 / 1e4
        if step < up:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * step / up))
        t = min(1.0, (step - up) / max(1, self.total_steps - up))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))

    def step(self, step: int) -> float:
        """Set every group's rate for the update about to happen; return the first group's."""
        f = self.factor(step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            lr = base * f
            if self.kind == "cosine":
                lr = max(lr, self.min_lr) if step >= self.warmup_steps else lr
            group["lr"] = lr
        return self.optimizer.param_groups[0]["lr"]

    def epoch_end(self, val_error: float) -> bool:
        """Feed the epoch's validation error; for plateau, returns True when the rate was cut."""
        if self.kind != "plateau":
            return False
        if val_error < self.best - 1e-9:
            self.best, self.bad_epochs = val_error, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs < self.patience:
            return False
        smallest = min(self.base_lrs)
        if smallest * self.scale * self.gamma >= self.min_lr or self.min_lr == 0:
            self.scale *= self.gamma
        self.bad_epochs = 0
        return True

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs, "base_lrs": self.base_lrs,
                "total_steps": self.total_steps, "planned": self.planned, "warp": list(self.warp)}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad_epochs = state["scale"], state["best"], state["bad_epochs"]
        self.base_lrs = list(state["base_lrs"])
        # A replanned curve goes on as it was, unless the run was given another length since.
        if state.get("planned") == self.total_steps and "warp" in state:
            self.total_steps, self.planned = int(state["total_steps"]), int(state["planned"])
            s0, e0, rate = state["warp"]
            self.warp = (int(s0), float(e0), float(rate))


def adopt_update(saved: dict, optimizer: torch.optim.Optimizer) -> dict:
    """``saved`` (an optimizer's state dict) with the update implementation of ``optimizer``.

    torch's ``load_state_dict`` takes each saved param group whole, ``fused`` and ``foreach``
    included, so a checkpoint written with the for-loop update would resume with it. The
    state tensors are the same for every implementation; torch moves them where the adopted
    one wants them while loading.
    """
    groups = [{**g, "fused": new.get("fused"), "foreach": new.get("foreach")}
              for g, new in zip(saved["param_groups"], optimizer.param_groups)]  # fmt: skip
    return {**saved, "param_groups": groups}
