"""The local cluster's scheduler: binds pending pods to emulated nodes over HTTP.

It watches pods and nodes, and whenever either changes it gives every unbound pod (higher
priority first, then older) a chance: :func:`~kube_emulator.node.placement.place` picks a
node and the pod is bound through the ``pods/binding`` subresource, as kube-scheduler does
(the API server then sets ``spec.nodeName`` and ``PodScheduled=True``). A pod that fits
nowhere stays Pending with ``PodScheduled=False``, reason ``Unschedulable`` and a
``FailedScheduling`` event whose message says why; it is retried on the next change of
capacity (a node's GPUs added, a pod finishing or deleted), with no polling needed.
Only pods whose ``spec.schedulerName`` is unset or ``default-scheduler`` are considered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from kube_emulator.client import (
    ApiClient,
    ApiError,
    cancel_all,
    informer,
    record_event,
    resource_path,
    wait_event,
)
from kube_emulator.node.placement import (
    DEFAULT_GPU_RESOURCE,
    TERMINAL_PHASES,
    NodeView,
    node_usage,
    place,
    pod_requests,
    scheduling_order,
)
from kube_emulator.times import now_rfc3339

log = logging.getLogger(__name__)
Obj = dict[str, Any]
SCHEDULER_NAME = "default-scheduler"
RESYNC_SECONDS = 5.0  # a pass also runs this often, as a safety net for lost wake-ups


class Scheduler:
    """Binds pods to nodes. ``resources`` are the counted resources (the first is the one
    bin-packing minimises, by default ``nvidia.com/gpu``)."""

    def __init__(self, client: ApiClient,
                 resources: Iterable[str] = (DEFAULT_GPU_RESOURCE,)) -> None:
        self.client = client
        self.resources = tuple(resources)
        self._pods: dict[str, Obj] = {}
        self._nodes: dict[str, Obj] = {}
        self._wake = asyncio.Event()
        self._unschedulable: dict[str, str] = {}  # uid -> message last reported

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Schedule until cancelled; ``ready`` is set once pods and nodes were listed."""
        pods_ready, nodes_ready = asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.create_task(informer(self.client, "/api/v1/pods", self._on_pod,
                                         ready=pods_ready)),
            asyncio.create_task(informer(self.client, "/api/v1/nodes", self._on_node,
                                         ready=nodes_ready)),
        ]
        try:
            await pods_ready.wait()
            await nodes_ready.wait()
            if ready is not None:
                ready.set()
            while True:
                await wait_event(self._wake, RESYNC_SECONDS)
                self._wake.clear()
                try:
                    await self.schedule_pending()
                except (ApiError, OSError) as exc:
                    log.warning("scheduling pass failed: %s; retrying", exc)
        finally:
            await cancel_all(tasks)

    def _on_pod(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        if kind == "DELETED":
            self._pods.pop(uid, None)
            self._unschedulable.pop(uid, None)
        else:
            self._pods[uid] = pod
        self._wake.set()

    def _on_node(self, kind: str, node: Obj) -> None:
        name = node["metadata"]["name"]
        if kind == "DELETED":
            self._nodes.pop(name, None)
        else:
            self._nodes[name] = node
        self._wake.set()

    def _pending(self) -> list[Obj]:
        out = []
        for pod in self._pods.values():
            spec, meta = pod.get("spec") or {}, pod["metadata"]
            if spec.get("nodeName") or meta.get("deletionTimestamp"):
                continue
            if spec.get("schedulerName") not in (None, "", SCHEDULER_NAME):
                continue
            if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
                continue
            out.append(pod)
        return out

    async def schedule_pending(self) -> None:
        """One pass over the pending pods, in scheduling order. Each binding is counted
        against its node at once, so one pass never over-commits a node."""
        usage = node_usage(self._pods.values(), self.resources)
        views = [NodeView.from_node(n, self.resources) for n in self._nodes.values()]
        for pod in scheduling_order(self._pending()):
            placement = place(pod, views, usage, self.resources)
            if placement.node is None:
                await self._unschedulable_pod(pod, placement.message)
                continue
            if await self._bind(pod, placement.node):
                into = usage.setdefault(placement.node, dict.fromkeys(self.resources, 0.0))
                for resource, amount in pod_requests(pod, self.resources).items():
                    into[resource] = into.get(resource, 0.0) + amount

    async def _bind(self, pod: Obj, node: str) -> bool:
        meta = pod["metadata"]
        namespace, name = meta.get("namespace", "default"), meta["name"]
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": namespace, "uid": meta.get("uid")},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        try:
            await self.client.create(resource_path("pods", namespace, name, "binding"), body)
        except ApiError as exc:
            if exc.code in (404, 409):  # gone, or bound meanwhile: the next event tells
                return False
            raise
        pod.setdefault("spec", {})["nodeName"] = node  # until the watch event arrives
        self._unschedulable.pop(meta.get("uid", ""), None)
        log.info("pod %s/%s: bound to %s", namespace, name, node)
        await record_event(self.client, pod, "Scheduled",
                           f"Successfully assigned {namespace}/{name} to {node}",
                           component=SCHEDULER_NAME)
        return True

    async def _unschedulable_pod(self, pod: Obj, message: str) -> None:
        meta = pod["metadata"]
        uid = meta.get("uid", "")
        if self._unschedulable.get(uid) == message:
            return
        self._unschedulable[uid] = message
        namespace, name = meta.get("namespace", "default"), meta["name"]
        log.info("pod %s/%s: unschedulable: %s", namespace, name, message)
        status = pod.get("status") or {}
        conditions = [c for c in status.get("conditions") or ()
                      if c.get("type") != "PodScheduled"]
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                           "message": message,
                           "lastTransitionTime": now_rfc3339()})
        try:
            await self.client.patch(resource_path("pods", namespace, name, "status"),
                                    {"status": {"phase": "Pending", "conditions": conditions}})
        except ApiError as exc:
            if exc.code != 404:
                raise
            return
        await record_event(self.client, pod, "FailedScheduling", message,
                           component=SCHEDULER_NAME, event_type="Warning")
