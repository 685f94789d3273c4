"""What the reclaim controller knows of pods without asking the API server.

A check used to LIST the selected pods of its namespace every ``checkEvery``, so the cost of a
check on the API server grew with the namespace, and every check parsed every pod again. Now
the pod watch feeds a kopf index (registered in :mod:`~elastic_operator.reclaim.handlers`)
whose entries are made here, once per watch event: :func:`observe` turns a pod body into an
:class:`ObservedPod` whose timestamps are already parsed. kopf fills an index from its initial
listing before it calls any handler, so a check never decides on a partial view. A check then
picks its pods with :func:`select` (the policy's label selector) and
:func:`~elastic_operator.reclaim.plan.pod_facts` reads the policy-specific facts (the kernel
id label, the GPU resource) from the entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from elastic_operator import labels
from elastic_operator.api.kernelreclaim import LabelSelector
from elastic_operator.api.kube import TERMINAL_PHASES, QuantityError, parse_time, pod_gpu_request
from elastic_operator.reclaim import rule

Obj = Mapping[str, Any]


def running_since(pod: Obj) -> datetime | None:
    """When the pod's last container started running: the moment the pod as a whole ran.
    None unless the pod is Running with every container's ``running.startedAt`` known."""
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return None
    starts = [
        parse_time(((c.get("state") or {}).get("running") or {}).get("startedAt"))
        for c in status.get("containerStatuses") or []
    ]
    if not starts or any(s is None for s in starts):
        return None
    return max(s for s in starts if s is not None)


def is_finished(pod: Obj) -> bool:
    """A pod that no longer runs (or is being deleted) holds nothing worth reclaiming."""
    phase = (pod.get("status") or {}).get("phase")
    return phase in TERMINAL_PHASES or bool(
        (pod.get("metadata") or {}).get("deletionTimestamp")
    )


@dataclass(frozen=True)
class ObservedPod:
    """One pod as a check needs it, whatever policy selects it."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    pod_spec: Obj = field(repr=False)
    started_at: datetime | None
    exempt: bool
    reclaim_at: datetime | None  # the warning mark; None when absent or unparseable
    running_since: datetime | None
    finished: bool
    # GPUs per resource name, counted on first use: policies may name different resources.
    _gpus: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def gpus(self, resource: str) -> int:
        """GPUs the pod holds, counted as the autoscaler counts them
        (:func:`~elastic_operator.api.kube.pod_gpu_request`); a malformed quantity counts 0,
        as the API server rejects those."""
        count = self._gpus.get(resource)
        if count is None:
            try:
                count = pod_gpu_request(self.pod_spec, resource)
            except QuantityError:
                count = 0
            self._gpus[resource] = count
        return count


def observe(pod: Obj) -> ObservedPod:
    """The entry for a pod body as the API returned it (never raises on odd content)."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    status = pod.get("status") or {}
    return ObservedPod(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        pod_spec=pod.get("spec") or {},
        started_at=parse_time(status.get("startTime")) or parse_time(meta.get("creationTimestamp")),
        exempt=annotations.get(labels.RECLAIM) == rule.EXEMPT_VALUE,
        reclaim_at=parse_time(annotations.get(labels.RECLAIM_AT)),
        running_since=running_since(pod),
        finished=is_finished(pod),
    )


def select(pods: Iterable[ObservedPod], selector: LabelSelector) -> list[ObservedPod]:
    """The pods the selector matches (what a LIST with its ``labelSelector`` returned)."""
    return [p for p in pods if selector.matches(p.labels)]
