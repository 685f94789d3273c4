"""Builders of Node and Pod objects as the API server returns them, for the autoscaler tests."""

from __future__ import annotations

from typing import Any

from elastic_operator import labels

GPU = labels.DEFAULT_GPU_RESOURCE


def node(name: str, gpus: int | str = 8, *, ready: bool = True, unschedulable: bool = False,
         node_labels: dict[str, str] | None = None,
         taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A Node with ``gpus`` allocatable."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels or {}},
        "spec": {"unschedulable": unschedulable, "taints": taints or []},
        "status": {
            "allocatable": {GPU: str(gpus), "cpu": "64"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(name: str, gpus: int = 1, *, node_name: str | None = None, phase: str = "Running",
        namespace: str = "default", job: str | None = None, index: int | None = None,
        deleting: bool = False, created: str = "2026-01-01T00:00:00Z",
        pod_labels: dict[str, str] | None = None, priority: int | None = None,
        unschedulable_since: str | None = None) -> dict[str, Any]:
    """A Pod asking for ``gpus`` as a limit (the usual way GPUs are requested)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace,
                            "creationTimestamp": created, "labels": dict(pod_labels or {})}
    if job:
        meta["labels"][labels.JOB_NAME] = job
        meta["labels"][labels.REPLICA_INDEX] = str(index or 0)
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:10Z"
    spec: dict[str, Any] = {"containers": [
        {"name": "main", "resources": {"limits": {GPU: str(gpus)}} if gpus else {}}]}
    if node_name:
        spec["nodeName"] = node_name
    if priority is not None:
        spec["priority"] = priority
    status: dict[str, Any] = {"phase": phase}
    if unschedulable_since:
        status["conditions"] = [{"type": "PodScheduled", "status": "False",
                                 "reason": "Unschedulable",
                                 "lastTransitionTime": unschedulable_since}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}
