"""From cached API objects to the policy's inputs (pure: no I/O, no clock).

Kept apart from the kopf wiring so that how an ElasticJob, its worker pods and foreign pods
are read is unit-tested with plain dicts:

- a job is *skipped* (no view: neither touched nor counted as demand) when its spec does not
  validate, or it is Succeeded/Failed; its bound pods still count as usage in the capacity;
- a job's current replicas are ``spec.replicas`` clamped to [min, max] (minReplicas when
  unset), the same number the operator keeps pods for;
- a job's workers are its pods that are neither terminating nor finished; a Failed worker
  is about to be replaced, so its index counts as wanted-but-unbound;
- a pending pod that is not an ElasticJob worker is *protected demand* when it carries the
  label ``elastic.dev/protected: "true"`` or its ``spec.priority`` (the value of its
  PriorityClass, filled in by the API server) is at least ``protected_priority``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from elastic_operator import labels
from elastic_operator.api.elasticjob import ElasticJobSpec, Phase, desired_replicas
from elastic_operator.api.kube import TERMINAL_PHASES, QuantityError, parse_epoch, pod_gpu_request
from elastic_operator.autoscaler.capacity import (
    CapacitySnapshot,
    PodInfo,
    placement_key,
)
from elastic_operator.autoscaler.policy import Capacity, Demand, JobState, Worker

Obj = Mapping[str, Any]


def job_key(job: Obj) -> str:
    meta = job.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


@dataclass(frozen=True)
class JobView:
    """One ElasticJob parsed once per watch event, so a decision re-validates no spec."""

    key: str
    spec: ElasticJobSpec
    pod_spec: Obj
    gpus_per_worker: int
    created: float
    placement: str  # placement_key(pod_spec)


def job_view(job: Obj, resource: str = labels.DEFAULT_GPU_RESOURCE) -> JobView | None:
    """The parsed job, or None when it is skipped (see the module docstring)."""
    status = job.get("status") or {}
    if status.get("phase") in (Phase.SUCCEEDED, Phase.FAILED):
        return None
    try:
        spec = ElasticJobSpec.model_validate(job.get("spec") or {})
        pod_spec = spec.template.get("spec") or {}
        gpus = pod_gpu_request(pod_spec, resource)
    except (ValidationError, QuantityError, AttributeError):
        return None
    meta = job.get("metadata") or {}
    return JobView(job_key(job), spec, pod_spec, gpus,
                   parse_epoch(meta.get("creationTimestamp")) or 0.0, placement_key(pod_spec))


def worker_of(pod: PodInfo) -> Worker | None:
    """The live worker a job's pod is (see the module docstring), or None."""
    index = pod.labels.get(labels.REPLICA_INDEX, "")
    if pod.terminating or pod.phase in TERMINAL_PHASES or not str(index).isdigit():
        return None
    return Worker(int(index), pod.node, None if pod.node else pod.created,
                  None if pod.node else pod.unschedulable_since)


def live_workers(workers: Iterable[Worker | None]) -> tuple[Worker, ...]:
    """A job's live workers by index, from :func:`worker_of` of each of its pods."""
    return tuple(sorted((w for w in workers if w is not None), key=lambda w: w.index))


def job_state(view: JobView, workers: tuple[Worker, ...],
              snapshot: CapacitySnapshot) -> JobState:
    """The policy's view of one ElasticJob with its :func:`live_workers`."""
    spec = view.spec
    return JobState(
        key=view.key,
        min_replicas=spec.minReplicas,
        max_replicas=spec.maxReplicas,
        replicas=desired_replicas(spec),
        gpus_per_worker=view.gpus_per_worker,
        priority=spec.priority,
        created=view.created,
        enabled=spec.autoscale.enabled,
        eligible=snapshot.eligible(view.pod_spec, view.placement),
        workers=workers,
        window_s=float(spec.autoscale.stabilizationWindowSeconds),
        unschedulable_timeout_s=float(spec.autoscale.unschedulableTimeoutSeconds),
    )


def is_protected(pod: PodInfo, protected_priority: int | None) -> bool:
    """Whether a pod belongs to the protected class (see the module docstring)."""
    if pod.labels.get(labels.PROTECTED) == "true":
        return True
    return protected_priority is not None and pod.priority >= protected_priority


def protected_demands(pods: Iterable[PodInfo], snapshot: CapacitySnapshot,
                      protected_priority: int | None) -> list[Demand]:
    """Pending protected pods that ask for GPUs and are not ElasticJob workers."""
    return [Demand(p.key, p.gpus, snapshot.eligible(p.spec), p.created) for p in pods
            if p.pending and p.gpus > 0 and p.job is None and is_protected(p, protected_priority)]


def policy_capacity(snapshot: CapacitySnapshot) -> Capacity:
    """The policy's capacity input from a cache snapshot."""
    return Capacity(free=dict(snapshot.free), releasing=dict(snapshot.releasing),
                    size={n: info.gpus for n, info in snapshot.nodes.items()})
