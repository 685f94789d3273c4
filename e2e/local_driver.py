"""The scenarios' driver for the embedded local cluster (:class:`LocalCluster`)."""

from __future__ import annotations

import signal
from pathlib import Path

from e2e.driver import ApplyRefused, Obj
from elastic_operator.labels import JOB_NAME
from elastic_operator.local import kubectl
from elastic_operator.local.cluster import LocalCluster
from kube_emulator.client import ApiError, resource_path


def _job_path(namespace: str, name: str | None = None) -> str:
    return resource_path("elasticjobs", namespace, name, group="elastic.dev",
                         version="v1alpha1")


class LocalDriver:
    """Drives a started LocalCluster in the same event loop."""

    can_add_gpus = True

    def __init__(self, cluster: LocalCluster, namespace: str = "default") -> None:
        self.cluster = cluster
        self.namespace = namespace

    def shared_dir(self, job: str) -> str:
        path = self.cluster.state_dir / "shared" / job
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def decorate(self, job: Obj) -> Obj:
        return job  # images are ignored and every pod sees the same file system

    async def apply(self, docs: list[Obj]) -> None:
        try:
            await kubectl.apply(self.cluster.api, docs, self.namespace)
        except ApiError as exc:
            raise ApplyRefused(exc.message) from exc

    async def get_job(self, name: str) -> Obj | None:
        try:
            return await self.cluster.api.get(_job_path(self.namespace, name))
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    async def list_jobs(self) -> list[Obj]:
        return list((await self.cluster.api.get(_job_path(self.namespace)))["items"])

    async def list_pods(self, job: str) -> list[Obj]:
        listing = await self.cluster.api.get(resource_path("pods", self.namespace),
                                             labelSelector=f"{JOB_NAME}={job}")
        return list(listing["items"])

    async def pod_log(self, pod: str) -> str:
        assert self.cluster.kubelet is not None
        try:
            return self.cluster.kubelet.log_path(self.namespace, pod).read_text(
                errors="replace")
        except OSError:
            return ""

    async def read_file(self, path: str) -> str:
        return Path(path).read_text()

    async def kill_training_processes(self, pod: str) -> int:
        assert self.cluster.kubelet is not None
        return self.cluster.kubelet.kill_pod(pod, signal.SIGKILL, self.namespace,
                                             children_only=True)

    async def add_gpus(self, count: int) -> None:
        assert self.cluster.nodes is not None
        await self.cluster.nodes.add_gpus(count)

    async def scale(self, job: str, replicas: int) -> None:
        await self.cluster.api.patch(_job_path(self.namespace, job) + "/scale",
                                     {"spec": {"replicas": replicas}})

    async def restart_operator(self) -> None:
        await self.cluster.stop_operator(signal.SIGKILL)
        await self.cluster.start_operator()

    async def delete_job(self, name: str) -> None:
        await self.cluster.api.delete(_job_path(self.namespace, name))
