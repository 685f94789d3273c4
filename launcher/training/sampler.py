"""Elastic sampler: exactly-once iteration over a shuffled epoch across resizes.

Each epoch's order is a permutation drawn from a generator seeded with ``(seed, epoch)`` only,
so every rank of every generation computes the same order without communication. Progress is
one number, ``consumed``: how many samples of that order the committed optimizer steps have
used. A step takes the next ``global_batch`` samples of the order and divides them over the
*current* ranks (``BatchPlan.split``), so after a resize the remaining samples are re-partitioned
over the new world simply by continuing from ``consumed``. This differs from torch's
``ElasticDistributedSampler``, which skips a prefix of the per-rank index list and so is not exact
when the world size changes.

Progress moves only in ``commit``, after the optimizer step; a step interrupted in the middle of a
gradient-accumulation cycle is not committed and is taken again, whole, after the restart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from launcher.training.batching import BatchPlan, MicroBatch


@dataclass(frozen=True)
class Step:
    """One optimizer step's samples (global view: all ranks)."""

    epoch: int
    start: int
    indices: list[int]

    def micro_batches(self, plan: BatchPlan, rank: int) -> list[MicroBatch]:
        """The micro-batches ``rank`` runs for this step."""
        return plan.split(self.indices, rank)


class ElasticSampler:
    """Deterministic per-(seed, epoch) order with world-size-independent progress."""

    def __init__(self, dataset_size: int, *, seed: int, shuffle: bool = True) -> None:
        if dataset_size < 1:
            raise ValueError(f"dataset_size={dataset_size} must be >= 1")
        self.dataset_size = dataset_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.consumed = 0
        self._order_epoch = -1
        self._order: list[int] = []

    def order(self, epoch: int) -> list[int]:
        """The full sample order of ``epoch`` (identical on every rank and generation)."""
        if epoch != self._order_epoch:
            if self.shuffle:
                gen = torch.Generator()
                # Mix seed and epoch so (seed, epoch) pairs never collide across small values.
                gen.manual_seed((self.seed * 1_000_003 + epoch) & 0x7FFF_FFFF_FFFF_FFFF)
                self._order = torch.randperm(self.dataset_size, generator=gen).tolist()
            else:
                self._order = list(range(self.dataset_size))
            self._order_epoch = epoch
        return self._order

    @property
    def remaining(self) -> int:
        """Samples of the current epoch not yet committed."""
        return self.dataset_size - self.consumed

    def next_step(self, plan: BatchPlan) -> Step:
        """The next step's samples: the next ``global_batch`` of the order, fewer at epoch end.

        A step never spans two epochs. Does not advance progress (see ``commit``).
        """
        take = min(plan.global_batch, self.remaining)
        order = self.order(self.epoch)
        return Step(self.epoch, self.consumed, order[self.consumed:self.consumed + take])

    def commit(self, step: Step) -> None:
        """Mark ``step`` as applied to the model; rolls over to the next epoch at its end."""
        if step.epoch != self.epoch or step.start != self.consumed:
            raise ValueError(f"step (epoch {step.epoch}, start {step.start}) is not the next one "
                             f"(epoch {self.epoch}, consumed {self.consumed})")
        self.consumed += len(step.indices)
        if self.consumed >= self.dataset_size:
            self.epoch += 1
            self.consumed = 0

    def state_dict(self) -> dict[str, int | bool]:
        """Progress, plus what it is only valid for (data set size, seed, shuffle)."""
        return {"dataset_size": self.dataset_size, "seed": self.seed, "shuffle": self.shuffle,
                "epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        """Resume progress; refuses a state from a different data set, seed or shuffle."""
        for key in ("dataset_size", "seed", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(f"checkpoint sampler {key}={state[key]!r} differs from this "
                                 f"run's {key}={getattr(self, key)!r}; resume with the same "
                                 "data set and seed, or start from an empty checkpoint dir")
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
