"""What the autoscaler's policy reads and what one allocation returns (plain frozen values).

The rules that turn these inputs into targets are described in
:mod:`~elastic_operator.autoscaler.policy`; the types live here so that the allocation, the
preemption and the stabilization modules share them without importing each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

PROTECTED_PRIORITY = math.inf  # protected pods outrank every job


@dataclass(frozen=True)
class Worker:
    """One live (not terminating) worker pod of a job."""

    index: int
    node: str | None = None  # bound node; None while pending
    pending_since: float | None = None  # when it started waiting for a node (its creation)
    # When the scheduler said it fits no node (PodScheduled=False, reason Unschedulable).
    unschedulable_since: float | None = None


@dataclass(frozen=True)
class JobState:
    """What the policy needs of one ElasticJob (``replicas`` already clamped to [min, max])."""

    key: str
    min_replicas: int
    max_replicas: int
    replicas: int
    gpus_per_worker: int
    priority: int = 0
    created: float = 0.0
    enabled: bool = True
    eligible: frozenset[str] = frozenset()
    workers: tuple[Worker, ...] = ()
    window_s: float = 60.0
    unschedulable_timeout_s: float = 120.0

    @property
    def managed(self) -> bool:
        """The autoscaler may move this job's replicas."""
        return self.enabled and self.gpus_per_worker > 0

    # Derived once per JobState: the autoscaler reuses a job's state while the job and its
    # pods are unchanged, so these cost a decision nothing for the jobs that did not change.
    @cached_property
    def by_index(self) -> Mapping[int, Worker]:
        """The workers by replica index (a later duplicate index wins)."""
        return {w.index: w for w in self.workers}

    @cached_property
    def bound(self) -> tuple[Worker, ...]:
        """The workers bound to a node."""
        return tuple(w for w in self.workers if w.node is not None)

    @cached_property
    def unplaced(self) -> tuple[tuple[int, Worker | None], ...]:
        """Each index below ``replicas`` without a bound worker: (index, its pending worker,
        or None when it is not created yet)."""
        by_index = self.by_index
        return tuple((i, by_index.get(i)) for i in range(self.replicas)
                     if by_index.get(i) is None or by_index[i].node is None)

    @cached_property
    def unschedulable_extras(self) -> tuple[float, ...]:
        """When each pending worker above the min and below ``replicas`` was reported
        Unschedulable (those the give-back rule counts)."""
        return tuple(w.unschedulable_since for w in self.workers
                     if w.node is None and self.min_replicas <= w.index < self.replicas
                     and w.unschedulable_since is not None)

    def shrinkable(self, index: int) -> bool:
        """Whether preemption may take worker ``index``: the job is managed and it is above
        the job's min."""
        return self.managed and index >= self.min_replicas


@dataclass(frozen=True)
class Demand:
    """A pending pod of a protected class that is not an ElasticJob worker."""

    key: str
    gpus: int
    eligible: frozenset[str]
    since: float


@dataclass(frozen=True)
class Capacity:
    """Free and soon-free (``releasing``) GPUs per schedulable node, and each node's size."""

    free: Mapping[str, int]
    releasing: Mapping[str, int] = field(default_factory=dict)
    size: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicySettings:
    """Cluster-wide knobs; per-job ones live in ``spec.autoscale``."""

    preempt_after_s: float = 5.0


DEFAULT_SETTINGS = PolicySettings()


class Kind(StrEnum):
    GROW = "grow"
    PREEMPT = "preempt"
    GIVE_BACK = "give-back"


@dataclass
class Allocation:
    """Raw (unstabilized) outcome of :func:`~elastic_operator.autoscaler.policy.allocate`."""

    replicas: dict[str, int]
    kinds: dict[str, Kind] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    # New workers per job, in the order placed: node names.
    placements: dict[str, list[str]] = field(default_factory=dict)
    # GPUs of the pool each node had left after all decisions.
    pool: dict[str, int] = field(default_factory=dict)
    unmet: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Unit:
    """One worker (or protected pod) that wants a node."""

    owner: str  # job key, or the protected pod's key
    index: int
    gpus: int
    eligible: frozenset[str]
    priority: float
    core: bool  # within its job's minReplicas (or protected)
    since: float


def plural(n: int, word: str) -> str:
    """``1 GPU``, ``2 GPUs``: the counts in the reasons the policy gives."""
    return f"{n} {word}{'' if n == 1 else 's'}"
