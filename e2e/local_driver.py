"""The scenarios' driver for the embedded local cluster (:class:`LocalCluster`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

from e2e.driver import ApplyRefused, Obj
from elastic_operator.kube_client import ApiException, is_status, status_message
from elastic_operator.labels import GROUP, JOB_NAME, VERSION
from elastic_operator.local import kubectl
from elastic_operator.local.cluster import LocalCluster

JOBS = "elasticjobs"


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
        except ApiException as exc:
            raise ApplyRefused(status_message(exc)) from exc

    async def get_job(self, name: str) -> Obj | None:
        kube = self.cluster.api
        try:
            return await kube.call(kube.custom.get_namespaced_custom_object, GROUP, VERSION,
                                   self.namespace, JOBS, name)
        except ApiException as exc:
            if is_status(exc, 404):
                return None
            raise

    async def list_jobs(self) -> list[Obj]:
        kube = self.cluster.api
        return list((await kube.call(kube.custom.list_namespaced_custom_object, GROUP,
                                     VERSION, self.namespace, JOBS))["items"])

    async def list_pods(self, job: str) -> list[Obj]:
        kube = self.cluster.api
        listing = await kube.call(kube.core.list_namespaced_pod, self.namespace,
                                  label_selector=f"{JOB_NAME}={job}")
        return list(listing["items"])

    async def job_events(self, job: str) -> list[Obj]:
        kube = self.cluster.api
        listing = await kube.call(
            kube.core.list_namespaced_event, self.namespace,
            field_selector=f"involvedObject.name={job},involvedObject.kind=ElasticJob")
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

    async def kubectl(self, *args: str) -> str:
        """The machine's real ``kubectl`` against the cluster's kubeconfig; what a user types."""
        binary = shutil.which("kubectl")
        assert binary, "kubectl is not installed (scripts/setup.sh --test installs it)"
        proc = await asyncio.create_subprocess_exec(
            binary, "--kubeconfig", str(self.cluster.kubeconfig), "-n", self.namespace, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {err.decode().strip()}"
        return out.decode()

    async def scale(self, job: str, replicas: int) -> None:
        await self.kubectl("scale", f"elasticjob/{job}", f"--replicas={replicas}")

    async def restart_operator(self) -> None:
        await self.cluster.stop_operator(signal.SIGKILL)
        await self.cluster.start_operator()

    async def kill_agent(self, pod: str) -> None:
        assert self.cluster.kubelet is not None
        assert self.cluster.kubelet.kill_pod(pod, signal.SIGKILL, self.namespace) >= 1

    async def hang_training(self, pod: str) -> int:
        assert self.cluster.kubelet is not None
        frozen = 0
        for pid in self.cluster.kubelet.pids(pod, self.namespace):
            if writes_heartbeat(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    frozen += 1
        return frozen

    async def evict(self, pod: str) -> None:
        assert self.cluster.nodes is not None
        node = await self._node_of(pod)
        evicted = await self.cluster.nodes.remove_gpus(1, node)
        assert pod in evicted, f"removing a GPU of {node} evicted {evicted}, not {pod}"

    async def lose_node(self, pod: str) -> str:
        assert self.cluster.nodes is not None
        node = await self._node_of(pod)
        lost = await self.cluster.nodes.lose_node(node)
        assert pod in lost, f"losing {node} took {lost}, not {pod}"
        return node

    async def restart_etcd(self) -> None:
        assert self.cluster.etcd is not None
        await asyncio.to_thread(self.cluster.etcd.stop)
        # Started from the loop's thread, as the cluster does: etcd's parent-death signal
        # follows the thread that forks it, and a pool thread may end before the cluster.
        self.cluster.etcd.start()

    async def job_processes(self, job: str) -> list[int]:
        marks = (f"ELASTIC_JOB_NAME={job}".encode(),
                 f"ELASTIC_JOB_NAMESPACE={self.namespace}".encode())
        alive = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as env:
                    variables = env.read().split(b"\0")
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    state = stat.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if state != b"Z" and all(mark in variables for mark in marks):
                alive.append(int(entry))
        return alive

    async def _node_of(self, pod: str) -> str:
        kube = self.cluster.api
        obj = await kube.call(kube.core.read_namespaced_pod, pod, self.namespace)
        node = (obj.get("spec") or {}).get("nodeName")
        assert node, f"pod {pod} is not bound to a node"
        return str(node)

    async def delete_job(self, name: str) -> None:
        kube = self.cluster.api
        await kube.call(kube.custom.delete_namespaced_custom_object, GROUP, VERSION,
                        self.namespace, JOBS, name)


def writes_heartbeat(pid: int) -> bool:
    """Whether ``pid`` holds a training heartbeat file open (the helpers keep it open), which
    tells a training process from the launcher and its idle pre-warmed processes."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.path.basename(os.readlink(f"/proc/{pid}/fd/{fd}")).startswith("heartbeat-"):
                return True
    return False
