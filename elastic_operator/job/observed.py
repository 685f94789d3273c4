"""What the planner observes: worker pods and the job, as plain values (no I/O).

:func:`observe_pod` turns a Pod API object into a :class:`PodView` and never raises on odd
content (a missing label or status becomes a neutral value), so one malformed pod cannot stop
its job's reconcile. :func:`worker_failure` reads the launcher's FailureReport from a pod's
termination message, falling back to the raw text.

A pod that ended is one of three things, and only the first is a success:
- **completed**: its termination message is the launcher's ``Completion`` (training finished);
- **departed**: it was told to go (its agent's Shutdown note, a Kubernetes eviction or node
  shutdown reason, or a ``DisruptionTarget`` condition): neither success nor failure;
- otherwise Failed is a failure, and Succeeded without a completion is a worker that left
  without finishing (e.g. a plain script's agent after a stop): not a success either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from elastic_operator import labels
from elastic_operator.api.elasticjob import ElasticJobStatus, WorkerFailure
from elastic_operator.api.kube import parse_time, precise_time
from launcher.contract import Completion, FailureReport

# Pod status reasons with which Kubernetes ends a pod it wanted gone (kubelet eviction, graceful
# node shutdown, preemption): the workload did nothing wrong.
DEPARTURE_REASONS = frozenset({"Evicted", "Preempting", "Preempted", "Shutdown",
                               "NodeShutdown", "Terminated"})


@dataclass(frozen=True)
class PodView:
    """What the planner needs to know about one worker pod."""

    name: str
    index: int | None  # None: the replica-index label is missing or not a number
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool = False
    terminating: bool = False  # has a deletionTimestamp: going away, its name still taken
    failure_recorded_at: datetime | None = None
    termination_message: str = ""
    termination_reason: str = ""  # the kubelet's reason, e.g. Error, OOMKilled
    exit_code: int | None = None
    completion: Completion | None = None  # the agent said training finished
    departed: bool = False  # ended because it was told to go (see the module docstring)


@dataclass(frozen=True)
class JobView:
    """One ElasticJob as read from the API; ``spec`` stays raw so the planner validates it."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: dict[str, Any]
    status: ElasticJobStatus

    @property
    def selector(self) -> str:
        """Label selector of the job's workers (status.selector, used by /scale)."""
        return f"{labels.JOB_NAME}={self.name}"


def observe_pod(pod: dict[str, Any]) -> PodView:
    """The planner's view of a worker pod API object (never raises on odd content)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    raw_index = (meta.get("labels") or {}).get(labels.REPLICA_INDEX, "")
    index = int(raw_index) if str(raw_index).isdigit() else None
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    message = reason = ""
    exit_code = None
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get(
            "terminated"
        )
        if not term:
            continue
        # The first container that failed explains the failure best.
        if term.get("exitCode", 0) != 0 or not exit_code:
            message = term.get("message") or message
            reason = term.get("reason") or reason
            exit_code = term.get("exitCode", exit_code)
            if exit_code:
                break
    annotations = meta.get("annotations") or {}
    disrupted = any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    try:
        completion: Completion | None = Completion.from_json(message) if message else None
    except ValueError:
        completion = None
    try:
        departed_note = FailureReport.from_json(message).reason in FailureReport.DEPARTURES
    except ValueError:
        departed_note = False
    return PodView(
        name=str(meta.get("name", "")),
        index=index,
        phase=str(status.get("phase") or "Pending"),
        ready=ready,
        terminating=bool(meta.get("deletionTimestamp")),
        failure_recorded_at=parse_time(annotations.get(labels.FAILURE_RECORDED_AT)),
        termination_message=message or status.get("message") or "",
        termination_reason=reason or status.get("reason") or "",
        exit_code=exit_code,
        completion=completion,
        departed=departed_note or disrupted or status.get("reason") in DEPARTURE_REASONS,
    )


def node_replica_index(job: str, node_id: str) -> int | None:
    """The replica index of the pod an agent's node id belongs to, or None when the id does
    not follow the operator's naming (the agent's node id starts with its pod's hostname,
    which the operator sets to ``<job>-worker-<index>``)."""
    match = re.match(rf"^{re.escape(job)}-worker-(\d+)(?:-|$)", node_id)
    return int(match.group(1)) if match else None


def worker_failure(pod: PodView, now: datetime) -> WorkerFailure:
    """The failure a pod reports: its FailureReport JSON if parseable, else its raw text."""
    try:
        report = FailureReport.from_json(pod.termination_message)
    except ValueError:
        report = None
    if report is not None and report.reason:
        return WorkerFailure(
            pod=pod.name,
            replicaIndex=pod.index or 0,
            reason=report.reason,
            message=report.message[-1024:],
            rank=report.rank if report.rank >= 0 else None,
            exitCode=report.exit_code,
            time=precise_time(now),
        )
    return WorkerFailure(
        pod=pod.name,
        replicaIndex=pod.index or 0,
        reason=pod.termination_reason or "Failed",
        message=pod.termination_message[-1024:] or "the pod failed without a termination message",
        exitCode=pod.exit_code,
        time=precise_time(now),
    )


def reported_failure(job: str, report: FailureReport) -> WorkerFailure:
    """A failure an agent reported through etcd, attributed to its pod.

    The agent's node id starts with its pod's hostname, which the operator sets to
    ``<job>-worker-<index>``; an id that does not is shown as it is.
    """
    found = node_replica_index(job, report.node_id)
    index = found or 0
    return WorkerFailure(
        pod=f"{job}-worker-{index}" if found is not None else report.node_id,
        replicaIndex=index,
        reason=report.reason,
        message=report.message[-1024:],
        rank=report.rank if report.rank >= 0 else None,
        exitCode=report.exit_code,
        time=precise_time(datetime.fromtimestamp(report.timestamp, UTC)),
    )
