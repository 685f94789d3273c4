"""What a plan asks for: pod, service and event actions, and the plan itself (plain values).

Every action is idempotent when applied: creates use deterministic names (409 = done),
deletes and patches of a missing object (404) are done, so replaying a plan is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from elastic_operator.api.elasticjob import ElasticJobStatus
from elastic_operator.api.kube import Event


@dataclass(frozen=True)
class CreatePod:
    """Create worker ``index`` (deterministic name: a 409 means it is already there)."""

    index: int
    reason: str  # ScaleUp | Restart


@dataclass(frozen=True)
class DeletePod:
    """Delete a worker pod gracefully (its grace period is honoured; 404 means done)."""

    name: str
    reason: str  # ScaleDown | Restart | JobFinished | Orphan


@dataclass(frozen=True)
class MarkFailureRecorded:
    """Annotate a failed pod with the time its failure was counted (restart-safe counting)."""

    name: str
    at: str  # RFC 3339


@dataclass(frozen=True)
class CreateService:
    """Create the job's headless Service for peer DNS (409 means it is already there)."""


Action = CreatePod | DeletePod | MarkFailureRecorded | CreateService | Event


@dataclass
class Plan:
    """What to do for one job now. ``status`` is the full new status; ``requeue_after`` is
    how many seconds until a time-based decision (backoff, timeout) is due, if any."""

    actions: list[Action] = field(default_factory=list)
    status: ElasticJobStatus = field(default_factory=ElasticJobStatus)
    requeue_after: float | None = None

    def of(self, kind: type) -> list[Any]:
        """The actions of one type, in order."""
        return [a for a in self.actions if isinstance(a, kind)]

    def due(self, seconds: float) -> None:
        """Ask to be planned again in ``seconds`` (the earliest request wins)."""
        seconds = max(seconds, 0.0)
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = seconds
