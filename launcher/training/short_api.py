"""The sampler and the optimizer a DDP script keeps using, bound to the in-place step boundary.

:meth:`InPlaceSession.sampler <launcher.training.inplace.InPlaceSession.sampler>` and
:meth:`~launcher.training.inplace.InPlaceSession.wrap` return these, so the script's
``DataLoader(..., sampler=...)`` and ``optimizer.step()`` lines stay as they were: the sampler
decides each step's samples only once the previous step is over (committed or discarded, and
its boundary done), and ``optimizer.step()`` is the session's agreement, gradient all-reduce
and commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch

from launcher.training.sampler import ElasticSampler, Step


class StepBoundary(Protocol):
    """What the adapters use of the session (``InPlaceSession`` is one); this module imports
    nothing of the session's (no import cycle)."""

    data_sampler: ElasticSampler | None
    batch_size: int
    pending: Step | None
    boundaries: int

    @property
    def world_size(self) -> int: ...

    def boundary(self) -> None: ...

    def next_step(self) -> Step: ...

    def share(self, step: Step) -> list[int]: ...

    def sync_step(self) -> bool: ...


class RankSampler(torch.utils.data.Sampler[int]):
    """This rank's indices of each step, decided when the previous step is over."""

    def __init__(self, session: StepBoundary) -> None:
        self.session = session

    def set_epoch(self, epoch: int) -> None:
        """Accepted for ``DistributedSampler`` compatibility; the session knows the epoch."""
        assert self.session.data_sampler is not None
        if epoch != self.session.data_sampler.epoch:
            raise ValueError(f"set_epoch({epoch}): the session is in epoch "
                             f"{self.session.data_sampler.epoch}; iterate session.epochs()")

    def __len__(self) -> int:
        s = self.session
        assert s.data_sampler is not None
        return -(-s.data_sampler.remaining // s.world_size)

    def __iter__(self) -> Iterator[int]:
        s = self.session
        assert s.data_sampler is not None
        epoch = s.data_sampler.epoch
        while s.data_sampler.epoch == epoch:
            s.boundary()
            if s.data_sampler.epoch != epoch:
                return  # healed from a peer that had finished the epoch
            step = s.next_step()
            share = s.share(step)
            if not share:
                return  # epochs() takes part in this step
            s.pending = step
            boundaries = s.boundaries
            yield from share
            if len(share) < s.batch_size:
                return  # the epoch's last step: let the loader hand out the short batch
            if s.boundaries == boundaries:
                raise RuntimeError("the loader read the next step before optimizer.step(): "
                                   "use DataLoader(num_workers=0) with session.sampler")


class ElasticOptimizer:
    """The user's optimizer; ``step()`` is the session's step boundary (True: committed)."""

    def __init__(self, session: StepBoundary, optimizer: torch.optim.Optimizer) -> None:
        self._session = session
        self._optimizer = optimizer

    def step(self) -> bool:
        return self._session.sync_step()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)
