"""LocalCluster: the whole embedded cluster in one process (plus etcd and the operator).

It composes the emulated API server, GPU nodes, the scheduler, the kubelet (pods as local
process groups, ``kubectl exec`` into them), the Deployment controller and pod GC, a real etcd
subprocess and the operator itself, run exactly as on a real cluster (``elastic-operator run
--kubeconfig ...``) as a subprocess, or with ``operator_deployment`` as the pod of the
Deployment ``elastic-system/elastic-operator`` (its log is then the pod's). Everything writes under
one state directory (default ``.local-cluster/``):

- ``kubeconfig``: point ``elastic-operator`` or a real kubectl here;
- ``cluster.json``: URL, pids and etcd endpoint while the cluster runs (removed on stop);
- ``logs/operator.log``, ``logs/cluster.log``, ``etcd/``; ``pods/<ns>/<pod>/<container>.log``;
- ``volumes/<ns>/<claim>/``: what pods mounting a PersistentVolumeClaim share;
- ``checkpoints/``: emptied at start, so jobs never resume a previous cluster's run.

Guarantees: :meth:`LocalCluster.stop` stops every process the cluster started (pods get
SIGTERM and a short grace, then SIGKILL; the operator the same; etcd last); pod processes and
the operator also die with the cluster process if it is killed (Linux parent-death signal),
and ``local down`` kills the recorded etcd and operator pids should the cluster process be
gone. :meth:`serve` turns SIGINT/SIGTERM into a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from elastic_operator.kube_client import ApiException, Kube, is_status, path
from elastic_operator.labels import DEFAULT_GPU_RESOURCE
from kube_emulator.apiserver.server import ApiServer
from kube_emulator.client import ApiClient, cancel_all
from kube_emulator.controllers.deployments import DeploymentController
from kube_emulator.controllers.podgc import PodGarbageCollector
from kube_emulator.etcd import DEFAULT_ETCD_BINARY, EtcdServer
from kube_emulator.node.kubelet import Kubelet
from kube_emulator.node.nodes import NodePool
from kube_emulator.node.runtime import RuntimeSettings, die_with_parent, die_with_parent_script
from kube_emulator.node.scheduler import Scheduler
from launcher.contract import PodEnv

# What the emulated kubelet needs to know about our pods: the launcher writes its failure
# report to the file ELASTIC_TERMINATION_LOG names, and no ELASTIC_* setting of the shell that
# starts the cluster may leak into a job.
POD_RUNTIME = RuntimeSettings(termination_log_env=PodEnv.TERMINATION_LOG,
                              stripped_env_prefixes=("ELASTIC_",))

log = logging.getLogger(__name__)
DEFAULT_STATE_DIR = Path(".local-cluster")
STATE_FILE = "cluster.json"
STOP_GRACE = 10.0
OPERATOR_NAMESPACE = "elastic-system"
OPERATOR_DEPLOYMENT = "elastic-operator"


@dataclass
class ClusterConfig:
    """What to start. ``workdir`` is every pod's working directory (default: the current one,
    normally the project root); ``operator`` False starts no operator (e.g. for tests of the
    operator that start it themselves)."""

    state_dir: Path = DEFAULT_STATE_DIR
    nodes: int = 2
    gpus_per_node: int = 1
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    workdir: Path = field(default_factory=Path.cwd)
    operator: bool = True
    etcd: bool = True
    operator_args: list[str] = field(default_factory=list)
    # Run the operator as a pod of the Deployment elastic-system/elastic-operator (as
    # deploy/ does on a real cluster) instead of a plain subprocess.
    operator_deployment: bool = False


@dataclass
class ClusterState:
    """The content of ``cluster.json`` (read by ``local`` subcommands and ``local down``)."""

    pid: int
    url: str
    kubeconfig: str
    etcd_endpoint: str | None
    etcd_pid: int | None
    operator_pid: int | None
    nodes: int
    gpus_per_node: int
    started: float

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState | None:
        """The recorded state, or None when no cluster runs from ``state_dir``."""
        try:
            data = json.loads((Path(state_dir) / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


class LocalCluster:
    """The embedded cluster; use ``async with`` or start()/stop()."""

    def __init__(self, config: ClusterConfig | None = None) -> None:
        self.config = config or ClusterConfig()
        self.state_dir = Path(self.config.state_dir).resolve()
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.server: ApiServer | None = None
        self.client: ApiClient | None = None  # the emulated node's (kubelet, scheduler)
        self.kube: Kube | None = None  # the product's, for everything else
        self.kubelet: Kubelet | None = None
        self.nodes: NodePool | None = None
        self.etcd: EtcdServer | None = None
        self.operator: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = asyncio.Event()

    @property
    def api(self) -> Kube:
        """The product's client for this cluster, as ``kubectl``-like callers (the CLI, the
        demo, the e2e driver) use it (started clusters only)."""
        assert self.kube is not None, "start() the cluster first"
        return self.kube

    async def start(self) -> LocalCluster:
        """Start every component; returns once pods can be scheduled and run. On failure,
        whatever was started is stopped again before the error propagates."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start(self) -> None:
        cfg = self.config
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        # Checkpoints under the state dir (where examples/elastic-job.yaml keeps them) belong
        # to this cluster's jobs: a job of the same name must not resume a previous run's.
        shutil.rmtree(self.state_dir / "checkpoints", ignore_errors=True)
        self.server = ApiServer(log_source=self._log_source)
        await self.server.start()
        self.server.write_kubeconfig(self.kubeconfig)
        self.client = ApiClient.from_kubeconfig(self.kubeconfig)
        self.kube = await Kube.login(self.kubeconfig)
        await self._install_crds()
        self.kubelet = Kubelet(self.client, self.state_dir, Path(cfg.workdir).resolve(),
                               settings=POD_RUNTIME)
        self.nodes = NodePool(self.client, cfg.gpu_resource)
        await self.nodes.create(cfg.nodes, cfg.gpus_per_node)
        self.server.exec_source = self.kubelet.exec_target
        ready = [asyncio.Event(), asyncio.Event(), asyncio.Event()]
        self._tasks = [
            asyncio.create_task(Scheduler(self.client, (cfg.gpu_resource,)).run(ready[0])),
            asyncio.create_task(self.kubelet.run(ready[1])),
            asyncio.create_task(DeploymentController(self.client).run(ready[2])),
            asyncio.create_task(PodGarbageCollector(self.client).run()),
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 60)
        if cfg.etcd:
            # A fresh data directory per start: a cluster's state never outlives it.
            etcd_dir = self.state_dir / "etcd"
            shutil.rmtree(etcd_dir, ignore_errors=True)
            etcd_dir.mkdir(parents=True)
            etcd_binary = shutil.which("etcd") or DEFAULT_ETCD_BINARY
            if not Path(etcd_binary).exists():
                raise FileNotFoundError(f"etcd not found (looked on PATH and at {etcd_binary});"
                                        " install it (Debian: apt-get install etcd-server)")
            binary = die_with_parent_script(etcd_binary, self.state_dir / "bin" / "etcd")
            self.etcd = EtcdServer(binary=str(binary), data_dir=etcd_dir)
            # Started from the loop's thread: the parent-death signal follows the thread
            # that forks, and this one lives as long as the cluster.
            self.etcd.start()
        if cfg.operator:
            await self.start_operator()
        self._write_state()
        log.info("local cluster up: %s, %d node(s) x %d GPU(s)", self.server.url, cfg.nodes,
                 cfg.gpus_per_node)

    def _log_source(self, namespace: str, name: str, query: dict[str, str]) -> str:
        return self.kubelet.log_source(namespace, name, query) if self.kubelet else ""

    async def _install_crds(self) -> None:
        from elastic_operator.api.registry import all_crds

        for crd in all_crds():
            try:
                await self.api.request("POST", path("customresourcedefinitions",
                                                    group="apiextensions.k8s.io"), body=crd)
            except ApiException as exc:
                if not is_status(exc, 409):
                    raise

    def operator_command(self) -> list[str]:
        """How the operator is run: the real CLI against the written kubeconfig."""
        # Every namespace (the default); no metrics port, so clusters never collide on one.
        cmd = [sys.executable, "-m", "elastic_operator.cli", "run",
               "--kubeconfig", str(self.kubeconfig), "--metrics-port", "0"]
        if self.etcd is not None:
            cmd += ["--default-rendezvous-endpoints", self.etcd.endpoint]
        return cmd + list(self.config.operator_args)

    def operator_deployment(self) -> dict[str, Any]:
        """The Deployment that runs the operator with ``operator_deployment`` (the name,
        namespace, labels and strategy of deploy/operator.yaml; the command of
        :meth:`operator_command`)."""
        labels = {"app.kubernetes.io/name": OPERATOR_DEPLOYMENT}
        return {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": OPERATOR_DEPLOYMENT, "namespace": OPERATOR_NAMESPACE,
                         "labels": labels},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                         "name": "operator", "image": "elastic-operator:local",
                         "command": self.operator_command(),
                         "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}]}]}}},
        }

    async def _apply_operator_deployment(self) -> None:
        for collection, body in (
                (path("namespaces"), {"metadata": {"name": OPERATOR_NAMESPACE}}),
                (path("deployments", OPERATOR_NAMESPACE, group="apps"),
                 self.operator_deployment())):
            try:
                await self.api.request("POST", collection, body=body)
            except ApiException as exc:
                if not is_status(exc, 409):
                    raise

    async def start_operator(self) -> None:
        """Start (or restart) the operator subprocess; its output goes to logs/operator.log.
        With ``operator_deployment``: create its Deployment (if missing) instead."""
        if self.config.operator_deployment:
            await self._apply_operator_deployment()
            return
        if self.operator is not None and self.operator.returncode is None:
            return
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.state_dir / "logs" / "operator.log", "ab") as out:
            self.operator = await asyncio.create_subprocess_exec(
                *die_with_parent(self.operator_command()), cwd=self.config.workdir, env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)
        log.info("operator started, pid %s", self.operator.pid)
        self._write_state()

    async def stop_operator(self, sig: int = signal.SIGTERM, timeout: float = STOP_GRACE) -> None:
        """Stop the operator: ``sig`` to its process group (SIGKILL emulates a crash), SIGKILL
        after ``timeout`` seconds. With ``operator_deployment``: delete its Deployment (its pod
        goes with it, gracefully; ``sig`` and ``timeout`` do not apply)."""
        if self.config.operator_deployment:
            if self.kube is not None:
                with contextlib.suppress(ApiException):
                    await self.api.request("DELETE", path("deployments", OPERATOR_NAMESPACE,
                                                          OPERATOR_DEPLOYMENT, group="apps"))
            return
        process, self.operator = self.operator, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        exited = asyncio.ensure_future(process.wait())
        await asyncio.wait({exited}, timeout=timeout)
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        await exited

    def _write_state(self) -> None:
        if self.server is None:
            return
        state = ClusterState(
            pid=os.getpid(), url=self.server.url, kubeconfig=str(self.kubeconfig),
            etcd_endpoint=self.etcd.endpoint if self.etcd else None,
            etcd_pid=self.etcd.process.pid if self.etcd and self.etcd.process else None,
            operator_pid=self.operator.pid if self.operator else None,
            nodes=self.config.nodes, gpus_per_node=self.config.gpus_per_node,
            started=time.time())
        tmp = self.state_dir / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self.state_dir / STATE_FILE)

    async def stop(self) -> None:
        """Stop everything this cluster started, in reverse order (idempotent)."""
        await self.stop_operator()
        if self.kubelet is not None:
            await self.kubelet.shutdown()
        await cancel_all(self._tasks)
        self._tasks = []
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.kube is not None:
            await self.kube.close()
            self.kube = None
        if self.server is not None:
            await self.server.stop()
            self.server = None
        if self.etcd is not None:
            await asyncio.to_thread(self.etcd.stop)
            self.etcd = None
        with contextlib.suppress(OSError):
            (self.state_dir / STATE_FILE).unlink()
        self._stopped.set()

    async def serve(self) -> None:
        """Run until SIGINT or SIGTERM, then stop cleanly."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.stop()

    async def __aenter__(self) -> LocalCluster:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

