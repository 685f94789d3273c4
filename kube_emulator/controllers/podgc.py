"""The local cluster's pod garbage collector: pods bound to a node that no longer exists.

What kube-controller-manager's PodGC does for them: each such pod is marked Failed with a
``DisruptionTarget`` condition (reason ``DeletionByPodGC``) and force-deleted; the local
kubelet kills the processes of a pod removed outright, as the machine's loss did. So a
``kubectl delete node`` takes the node's pods with it, as on a real cluster. Not emulated: the
real collector's quarantine (it waits about 40 s after the node is gone; this one acts at once)
and its collection of finished pods beyond ``--terminated-pod-gc-threshold``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kube_emulator.client import ApiClient, ApiError, cancel_all, informer, resource_path
from kube_emulator.times import now_rfc3339

log = logging.getLogger(__name__)
Obj = dict[str, Any]


async def collect_orphans(client: ApiClient, node: str) -> list[str]:
    """Collect every pod bound to ``node`` (which must be gone); returns their names."""
    pods = [p for p in (await client.get(resource_path("pods"),
                                         fieldSelector=f"spec.nodeName={node}"))["items"]]
    stamp = now_rfc3339()
    for pod in pods:
        meta = pod["metadata"]
        path = resource_path("pods", meta["namespace"], meta["name"])
        condition = {"type": "DisruptionTarget", "status": "True",
                     "reason": "DeletionByPodGC", "lastTransitionTime": stamp,
                     "message": "PodGC: node no longer exists"}
        conditions = [c for c in (pod.get("status") or {}).get("conditions") or []
                      if c.get("type") != "DisruptionTarget"]
        try:
            await client.patch(f"{path}/status", {"status": {
                "phase": "Failed", "conditions": [*conditions, condition]}})
            await client.delete(path, gracePeriodSeconds=0)
        except ApiError as exc:
            if exc.code != 404:
                raise
        log.info("pod %s/%s: node %s no longer exists, deleted", meta["namespace"],
                 meta["name"], node)
    return [p["metadata"]["name"] for p in pods]


class PodGarbageCollector:
    """Watches nodes and pods; collects the pods of a node once it is deleted, and a pod
    bound to a node that does not exist (checked with a GET, so a node this watch has not
    seen yet is never taken for gone)."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    async def run(self) -> None:
        """Run until cancelled."""
        tasks = [asyncio.create_task(informer(self.client, "/api/v1/nodes", self._on_node)),
                 asyncio.create_task(informer(self.client, "/api/v1/pods", self._on_pod,
                                              fieldSelector="spec.nodeName!="))]
        try:
            await asyncio.gather(*tasks)
        finally:
            await cancel_all(tasks)

    async def _on_node(self, kind: str, node: Obj) -> None:
        if kind == "DELETED":
            await collect_orphans(self.client, node["metadata"]["name"])

    async def _on_pod(self, kind: str, pod: Obj) -> None:
        if kind != "ADDED":
            return
        node = (pod.get("spec") or {}).get("nodeName")
        try:
            await self.client.get(resource_path("nodes", name=node))
        except ApiError as exc:
            if exc.code == 404:
                await collect_orphans(self.client, str(node))
