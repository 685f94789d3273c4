"""Learning-rate scaling with the world size, layered over the user's optimizer and scheduler.

The scale factor multiplies whatever LR the optimizer's param groups hold, only for the duration
of ``optimizer.step()``. ``param_group["lr"]`` therefore always holds the *unscaled* LR: the
user's LR scheduler keeps owning it (chainable or closed-form, any torch scheduler), optimizer
checkpoints stay independent of the world size, and restoring the exact original object after
the step means no rounding drift accumulates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from launcher.training.context import LR_SCALINGS, Batching, LRScaling

DEFAULT_WARMUP_STEPS = 50


def lr_factor(policy: LRScaling, world_size: int, base_world_size: int,
              batching: Batching) -> float:
    """The LR multiplier for ``world_size`` relative to the world the LR was tuned for.

    Under ``fixedGlobal`` the global batch does not change with the world size, so neither does
    the LR (1.0). Under ``fixedPerWorker`` the global batch is proportional to the world size:
    ``linear`` scales by ``world_size / base_world_size``, ``sqrt`` by its square root, ``none``
    keeps 1.0.
    """
    if policy not in LR_SCALINGS:
        raise ValueError(f"lr scaling {policy!r} is not one of {', '.join(LR_SCALINGS)}")
    if world_size < 1 or base_world_size < 1:
        raise ValueError(f"world sizes must be >= 1, got world_size={world_size}, "
                         f"base_world_size={base_world_size}")
    if batching == "fixedGlobal" or policy == "none":
        return 1.0
    ratio = world_size / base_world_size
    return ratio if policy == "linear" else math.sqrt(ratio)


@dataclass
class _Ramp:
    start: float
    target: float
    length: int
    done: int

    def value(self) -> float:
        """Factor for the next optimizer step (reaches ``target`` on the ramp's last step)."""
        if self.done >= self.length:
            return self.target
        return self.start + (self.target - self.start) * (self.done + 1) / self.length


class ElasticLR:
    """Scales an optimizer's LRs by the world-size factor, with a warm-up after a resize.

    Use ``with elastic_lr.scaled(): optimizer.step()`` (or ``elastic_lr.step()``) in place of a
    bare ``optimizer.step()``; call the LR scheduler as usual. After a resize (a restored state
    whose factor differs from this world's), the factor moves linearly from the old value to
    the new one over ``warmup_steps`` optimizer steps, so a jump in the effective LR does not
    destabilise training; ``warmup_steps=0`` switches immediately. A fresh start (no restored
    state) uses the target factor at once: the initial warm-up is the user scheduler's job.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, policy: LRScaling, world_size: int,
                 base_world_size: int, batching: Batching,
                 warmup_steps: int = DEFAULT_WARMUP_STEPS) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps} must be >= 0")
        self.optimizer = optimizer
        self.target = lr_factor(policy, world_size, base_world_size, batching)
        self.warmup_steps = warmup_steps
        self._ramp = _Ramp(self.target, self.target, 0, 0)

    @property
    def factor(self) -> float:
        """The multiplier the next optimizer step will use."""
        return self._ramp.value()

    def current_lrs(self) -> list[float]:
        """Effective LR of each param group for the next step (for logging)."""
        return [float(group["lr"]) * self.factor for group in self.optimizer.param_groups]

    @contextmanager
    def scaled(self) -> Iterator[None]:
        """Run one optimizer step with scaled LRs; advances the warm-up by one step."""
        factor = self.factor
        originals = [group["lr"] for group in self.optimizer.param_groups]
        try:
            for group, lr in zip(self.optimizer.param_groups, originals, strict=True):
                group["lr"] = lr * factor
            yield
        finally:
            for group, lr in zip(self.optimizer.param_groups, originals, strict=True):
                group["lr"] = lr
        self._ramp.done += 1

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """``optimizer.step(closure)`` with scaled LRs."""
        with self.scaled():
            return self.optimizer.step(closure)

    def state_dict(self) -> dict[str, float | int]:
        """The ramp as it stands, so a restart continues it and a resize starts from it."""
        return {"start": self._ramp.start, "target": self._ramp.target,
                "length": self._ramp.length, "done": self._ramp.done}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        """Continue from a checkpoint taken in a possibly different world.

        Same target factor: the saved ramp continues exactly (a restart changes nothing).
        Different target (a resize): a new ramp from the saved effective factor to this world's.
        """
        saved = _Ramp(float(state["start"]), float(state["target"]), int(state["length"]),
                      int(state["done"]))
        if math.isclose(saved.target, self.target, rel_tol=1e-12):
            self._ramp = saved
            return
        current = saved.target if saved.done >= saved.length else (
            saved.start + (saved.target - saved.start) * saved.done / saved.length)
        self._ramp = _Ramp(current, self.target, self.warmup_steps, 0)
