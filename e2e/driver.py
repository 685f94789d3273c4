"""What an end-to-end scenario needs from a cluster, and the job the scenarios run.

Scenarios (:mod:`e2e.scenarios`) are written once against :class:`Driver`; the embedded local
cluster (:mod:`e2e.local_driver`) and a real cluster reached through kubectl
(:mod:`e2e.kube_driver`) implement it, so the two differ only in setup.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from elastic_operator.labels import API_VERSION

Obj = dict[str, Any]
T = TypeVar("T")


class ApplyRefused(Exception):
    """The cluster refused a manifest; the message is what the user would see."""


class Driver(Protocol):
    """One cluster under test. Every method is safe to call while a job runs."""

    namespace: str
    can_add_gpus: bool  # False on a real cluster: scenarios fall back to the scale subresource

    def shared_dir(self, job: str) -> str:
        """A directory that every worker pod of ``job`` can write and :meth:`read_file` read."""

    def decorate(self, job: Obj) -> Obj:
        """The job with what this cluster needs added (image, shared volume)."""

    async def apply(self, docs: list[Obj]) -> None:
        """Create the objects (all or nothing); raises ApplyRefused with the server's message."""

    async def get_job(self, name: str) -> Obj | None:
        """The ElasticJob, or None when it does not exist."""

    async def list_jobs(self) -> list[Obj]:
        """Every ElasticJob of the namespace."""

    async def list_pods(self, job: str) -> list[Obj]:
        """The job's worker pods (label elastic.dev/job-name)."""

    async def pod_log(self, pod: str) -> str:
        """The pod's log (stdout and stderr)."""

    async def job_events(self, job: str) -> list[Obj]:
        """The Events about the ElasticJob ``job`` (involvedObject.name and kind)."""

    async def read_file(self, path: str) -> str:
        """A file under :meth:`shared_dir`."""

    async def kill_training_processes(self, pod: str) -> int:
        """SIGKILL the training processes of a worker pod (not its launcher); returns how many
        processes were signalled."""

    async def add_gpus(self, count: int) -> None:
        """Give the cluster ``count`` more free GPUs (only where ``can_add_gpus``)."""

    async def scale(self, job: str, replicas: int) -> None:
        """Set the job's replicas through the scale subresource (``kubectl scale``)."""

    async def restart_operator(self) -> None:
        """Kill the operator (SIGKILL) and start it again."""

    async def kill_agent(self, pod: str) -> None:
        """SIGKILL a worker pod's launcher (its training processes die with it)."""

    async def hang_training(self, pod: str) -> int:
        """Freeze (SIGSTOP) the training processes of a worker pod, the ones that write a
        heartbeat; returns how many were frozen."""

    async def evict(self, pod: str) -> None:
        """Take the pod's GPU away (local: the node loses it; through kubectl: the node is
        cordoned and the Eviction API evicts the pod), so that the pod is evicted."""

    async def lose_node(self, pod: str) -> str:
        """The machine running ``pod`` is gone (node deleted, its pods garbage-collected by
        the pod GC); returns the node's name once ``pod`` is gone."""

    async def restart_etcd(self) -> None:
        """Stop the rendezvous etcd and start it again (same data)."""

    async def job_processes(self, job: str) -> list[int]:
        """Processes still alive that descend from a pod of ``job`` (empty once it is gone)."""

    async def delete_job(self, name: str) -> None:
        """Delete the job (its pods go with it)."""


def job_manifest(name: str, *, replicas: int, min_replicas: int, max_replicas: int,
                 train_args: list[str], index_log: str, autoscale: bool = False,
                 checkpoint_dir: str, checkpoint_interval: int = 4, priority: int = 0,
                 hang_timeout: float = 300.0) -> Obj:
    """An ElasticJob running ``examples/train_elastic.py`` under the launcher, 1 GPU/worker,
    every rank appending its exactly-once audit records to ``index_log``."""
    return {
        "apiVersion": API_VERSION, "kind": "ElasticJob", "metadata": {"name": name},
        "spec": {
            "minReplicas": min_replicas, "maxReplicas": max_replicas, "replicas": replicas,
            "nprocPerNode": 1, "maxRestarts": 5, "priority": priority,
            "hangTimeoutSeconds": hang_timeout,
            "lrScaling": {"policy": "linear", "baseWorldSize": 2},
            "checkpoint": {"directory": checkpoint_dir, "intervalSteps": checkpoint_interval},
            "autoscale": {"enabled": autoscale, "stabilizationWindowSeconds": 1,
                          "unschedulableTimeoutSeconds": 60},
            "template": {"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 20,
                                  "containers": [{
                                      "name": "trainer", "image": "elastic-operator:latest",
                                      "command": ["python", "-m", "launcher"],
                                      "args": ["examples/train_elastic.py", *train_args],
                                      "env": [{"name": "OMP_NUM_THREADS", "value": "1"},
                                              {"name": "ELASTIC_INDEX_LOG",
                                               "value": index_log}],
                                      "resources": {"limits": {"nvidia.com/gpu": 1}}}]}},
        },
    }


async def wait_until(probe: Callable[[], Awaitable[T | None]], what: str,
                     timeout: float = 180.0, interval: float = 0.5) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` and the last
    value on timeout. Polling with a deadline (never a fixed sleep) keeps this robust under
    load."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
