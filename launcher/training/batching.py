"""How one optimizer step's samples are divided over ranks and micro-steps.

- ``fixedPerWorker``: each rank takes ``micro_batch`` samples per step, one micro-step; the
  global batch is ``world_size * micro_batch`` and follows the world size (so should the LR).
- ``fixedGlobal``: the global batch stays ``global_batch`` whatever the world size; each rank
  runs ``accumulation = ceil(global_batch / (world_size * micro_batch))`` micro-steps and the
  gradients are accumulated before one optimizer step.

Remainder case: when ``global_batch`` is not a multiple of ``world_size * micro_batch`` (or the
last step of an epoch has fewer samples), the step still takes exactly its samples, no padding
and no dropping: ranks get ``floor`` or ``ceil`` of ``n / world_size`` samples, each rank's share
is split into ``accumulation`` micro-batches whose sizes differ by at most one (none exceeds
``micro_batch``). Every rank runs the same number of micro-steps, so DDP's gradient all-reduce
(after the last micro-step, ``no_sync`` before it) is matched on all ranks and no ``Join`` is
needed. A micro-batch can be *empty* only when a step has fewer samples than there are
micro-batch slots (at the end of an epoch); the model must then accept a zero-length batch (true
for linear, convolution and attention layers; not for BatchNorm in training mode).

Weighting: compute the micro-batch loss as a *sum* over its samples and multiply by
``MicroBatch.loss_weight = world_size / n`` (``n`` = samples in the whole step). DDP averages
gradients over ``world_size``, so the applied gradient is exactly the mean over the step's ``n``
samples, the same as a single process would compute on the same batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from launcher.training.context import BATCHINGS, Batching


@dataclass(frozen=True)
class MicroBatch:
    """Sample indices for one forward/backward on one rank, and the factor for its summed loss."""

    indices: list[int]
    loss_weight: float


@dataclass(frozen=True)
class BatchPlan:
    """Samples per optimizer step and micro-steps per rank for one world size."""

    batching: Batching
    world_size: int
    micro_batch: int
    global_batch: int
    accumulation: int

    @classmethod
    def create(cls, batching: Batching, *, world_size: int, micro_batch: int,
               base_world_size: int, global_batch: int | None = None) -> BatchPlan:
        """Plan for ``world_size``.

        ``global_batch`` only applies to ``fixedGlobal`` and defaults to
        ``base_world_size * micro_batch`` (the batch the job was tuned with).
        """
        if batching not in BATCHINGS:
            raise ValueError(f"batching {batching!r} is not one of {', '.join(BATCHINGS)}")
        for name, value in (("world_size", world_size), ("micro_batch", micro_batch),
                            ("base_world_size", base_world_size)):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        if batching == "fixedPerWorker":
            if global_batch is not None:
                raise ValueError("global_batch is only meaningful with batching=fixedGlobal; "
                                 "under fixedPerWorker the global batch is world_size * "
                                 "micro_batch")
            return cls(batching, world_size, micro_batch, world_size * micro_batch, 1)
        target = base_world_size * micro_batch if global_batch is None else global_batch
        if target < 1:
            raise ValueError(f"global_batch={target} must be >= 1")
        return cls(batching, world_size, micro_batch, target,
                   math.ceil(target / (world_size * micro_batch)))

    def split(self, step_indices: Sequence[int], rank: int) -> list[MicroBatch]:
        """This rank's micro-batches of one step (always ``accumulation`` of them)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank={rank} outside world of size {self.world_size}")
        n = len(step_indices)
        if not 0 < n <= self.global_batch:
            raise ValueError(f"a step holds 1..{self.global_batch} samples, got {n}")
        start, stop = _share(n, self.world_size, rank)
        mine = list(step_indices[start:stop])
        weight = self.world_size / n
        return [MicroBatch(mine[a:b], weight)
                for a, b in (_share(len(mine), self.accumulation, k)
                             for k in range(self.accumulation))]


def _share(total: int, parts: int, index: int) -> tuple[int, int]:
    """Bounds of part ``index`` when ``total`` items are cut into ``parts`` near-equal runs."""
    base, extra = divmod(total, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)
