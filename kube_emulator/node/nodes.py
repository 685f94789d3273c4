"""Emulated nodes: Node objects with GPUs that exist only as numbers.

A node named ``local-node-<i>`` advertises ``capacity`` and ``allocatable`` of the GPU resource
(``nvidia.com/gpu`` unless configured), generous CPU/memory/pods, and a Ready condition, which
is all the scheduler, the operator's autoscaler and ``get nodes`` look at. GPUs are added or
removed at run time by patching the node's status, as a device plugin changes what a real
kubelet reports; the scheduler reacts to the change through its watch.
"""

from __future__ import annotations

from typing import Any

from kube_emulator.client import ApiClient, ApiError, resource_path
from kube_emulator.controllers.podgc import collect_orphans
from kube_emulator.node.placement import (
    DEFAULT_GPU_RESOURCE,
    TERMINAL_PHASES,
    parse_quantity,
    pod_requests,
)
from kube_emulator.times import now_rfc3339

Obj = dict[str, Any]
NODE_PREFIX = "local-node-"


def node_name(index: int) -> str:
    """The name of the emulated node number ``index``."""
    return f"{NODE_PREFIX}{index}"


def node_manifest(name: str, gpus: int, resource: str = DEFAULT_GPU_RESOURCE) -> Obj:
    """A Ready Node with ``gpus`` allocatable units of ``resource``."""
    stamp = now_rfc3339()
    amounts = {resource: str(gpus), "cpu": "64", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                              "kubernetes.io/os": "linux",
                                              "kube-emulator.local/node": "true"}},
        "spec": {},
        "status": {
            "capacity": dict(amounts), "allocatable": dict(amounts),
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "local kubelet is posting ready status",
                            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "local", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "local-process"},
        },
    }


class NodePool:
    """Creates the emulated nodes and changes their GPU counts through the API server."""

    def __init__(self, client: ApiClient, resource: str = DEFAULT_GPU_RESOURCE) -> None:
        self.client = client
        self.resource = resource

    async def create(self, count: int, gpus_per_node: int) -> list[str]:
        """Create ``count`` nodes (``local-node-0`` ...) with ``gpus_per_node`` GPUs each.

        The status is written through ``/status`` as well, since the API server keeps a
        created object's status only where a kubelet would report it.
        """
        if count < 1 or gpus_per_node < 0:
            raise ValueError(f"--nodes must be >= 1 and --gpus-per-node >= 0 (got {count}, "
                             f"{gpus_per_node})")
        names = []
        for index in range(count):
            manifest = node_manifest(node_name(index), gpus_per_node, self.resource)
            await self.client.create(resource_path("nodes"), manifest)
            await self.client.patch(resource_path("nodes", name=manifest["metadata"]["name"],
                                                  subresource="status"),
                                    {"status": manifest["status"]})
            names.append(manifest["metadata"]["name"])
        return names

    async def gpus(self, name: str) -> int:
        """The node's allocatable GPUs."""
        node = await self.client.get(resource_path("nodes", name=name))
        return int(parse_quantity(((node.get("status") or {}).get("allocatable") or {})
                                  .get(self.resource, 0)))

    async def set_gpus(self, name: str, gpus: int) -> None:
        """Set the node's capacity and allocatable GPUs to ``gpus`` (>= 0)."""
        if gpus < 0:
            raise ValueError(f"a node cannot have {gpus} GPUs; use 0 or more")
        amount = str(gpus)
        await self.client.patch(resource_path("nodes", name=name, subresource="status"),
                                {"status": {"capacity": {self.resource: amount},
                                            "allocatable": {self.resource: amount}}})

    async def add_gpus(self, count: int, name: str | None = None) -> str:
        """Add ``count`` GPUs to node ``name`` (default: the first node); returns the node."""
        name = name or node_name(0)
        await self.set_gpus(name, await self.gpus(name) + count)
        return name

    async def remove_gpus(self, count: int, name: str | None = None) -> list[str]:
        """Remove up to ``count`` GPUs from node ``name`` (default: the node whose pods use
        the most GPUs, then the one with the most GPUs; ties by name).

        GPUs that pods are using are taken too: like a failed device, the pods that no longer
        fit are deleted (gracefully, newest first) and the names of those pods are returned.
        """
        nodes = (await self.client.get(resource_path("nodes")))["items"]
        pods = [p for p in (await self.client.get(resource_path("pods")))["items"]
                if (p.get("status") or {}).get("phase") not in TERMINAL_PHASES
                and not p["metadata"].get("deletionTimestamp")]
        if name is None:
            def key(node: Obj) -> tuple[float, float, str]:
                node_name_ = node["metadata"]["name"]
                used = sum(pod_requests(p, [self.resource])[self.resource] for p in pods
                           if (p.get("spec") or {}).get("nodeName") == node_name_)
                alloc = parse_quantity(((node.get("status") or {}).get("allocatable") or {})
                                       .get(self.resource, 0))
                return used, alloc, node_name_
            name = max(nodes, key=key)["metadata"]["name"]
        left = max(0, await self.gpus(name) - count)
        await self.set_gpus(name, left)
        live = [p for p in pods if (p.get("spec") or {}).get("nodeName") == name]
        live.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)
        used = sum(pod_requests(p, [self.resource])[self.resource] for p in live)
        evicted = []
        for pod in live:
            if used <= left:
                break
            need = pod_requests(pod, [self.resource])[self.resource]
            if not need:
                continue
            meta = pod["metadata"]
            try:
                await self.client.delete(resource_path("pods", meta["namespace"], meta["name"]))
            except ApiError as exc:
                if exc.code != 404:
                    raise
            used -= need
            evicted.append(meta["name"])
        return evicted

    async def lose_node(self, name: str) -> list[str]:
        """The machine behind node ``name`` is gone; returns the names of the pods it ran.

        What Kubernetes does then, in its order: the Node object is deleted (by the cloud's
        node controller, or an admin), and the pod garbage collector marks every pod bound to
        the missing node Failed with a ``DisruptionTarget`` condition (reason
        ``DeletionByPodGC``) and force-deletes it. The local kubelet kills the processes of a
        pod removed outright, which is what the machine's loss did to them. (The local
        cluster's pod GC, :mod:`~kube_emulator.controllers.podgc`, also catches a ``kubectl
        delete node``; this call collects at once, so that it can return the pods.)
        """
        # Listed first: the pod GC may collect them as soon as the node is gone.
        bound = await self.client.get(resource_path("pods"), fieldSelector=f"spec.nodeName={name}")
        try:
            await self.client.delete(resource_path("nodes", name=name))
        except ApiError as exc:
            if exc.code != 404:
                raise
        await collect_orphans(self.client, name)
        return [p["metadata"]["name"] for p in bound["items"]]
