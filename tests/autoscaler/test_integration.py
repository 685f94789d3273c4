"""The autoscaler inside the real operator, over HTTP against the emulated API server.

Worker pods are bound by the local cluster's scheduler (:mod:`kube_emulator.node.scheduler`,
run in a thread against the same emulator, over HTTP as kube-scheduler would), so binding,
``PodScheduled`` conditions and GPU accounting follow the same rules as in the embedded
cluster. No kubelet runs: bound pods stay ``Pending``, which holds their GPUs all the same.

Each test gets its own namespace and its own 8-GPU node labelled with that namespace, and
every pod it makes selects that node, so the tests of this module share one operator without
seeing each other's capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from elastic_operator import labels
from kube_emulator.client import ApiClient
from kube_emulator.node.nodes import node_manifest
from kube_emulator.node.scheduler import Scheduler
from tests.harness import (
    OPERATOR_USER,
    Api,
    Cluster,
    OperatorProcess,
    calls_rbac_denies,
    elastic_job,
    events_for,
    jobs_path,
    operator_calls,
    pods_path,
    worker_pods,
)

pytestmark = pytest.mark.slow

GPU = labels.DEFAULT_GPU_RESOURCE
AUTOSCALER_ENV = {
    "ELASTIC_AUTOSCALER_INTERVAL": "0.5",
    "ELASTIC_AUTOSCALER_PREEMPT_AFTER": "0.5",
}


class SchedulerThread:
    """The local scheduler in its own thread and event loop, stopped by :meth:`stop`."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="scheduler", daemon=True)
        self._task: asyncio.Task[None] | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._run())

    async def _run(self) -> None:
        client = ApiClient(self.url, self.token)
        ready = asyncio.Event()
        self._task = asyncio.create_task(Scheduler(client).run(ready))
        try:
            await ready.wait()
            self.ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            await client.close()

    def start(self) -> SchedulerThread:
        self.thread.start()
        if not self.ready.wait(30):
            raise TimeoutError("the scheduler did not list pods and nodes within 30s")
        return self

    def stop(self) -> None:
        if self._task is not None:
            self.loop.call_soon_threadsafe(self._task.cancel)
        self.thread.join(30)


@pytest.fixture(scope="module")
def scheduler(apiserver: Cluster) -> Iterator[SchedulerThread]:
    thread = SchedulerThread(apiserver.url, apiserver.server.server.add_user("scheduler"))
    try:
        yield thread.start()
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def operator_process(apiserver: Cluster, scheduler: SchedulerThread,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator with short autoscaler intervals (its environment is read at start)."""
    process = OperatorProcess(apiserver, tmp_path_factory.mktemp("operator"))
    saved = {k: os.environ.get(k) for k in AUTOSCALER_ENV}
    try:
        os.environ.update(AUTOSCALER_ENV)
        try:
            process.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        yield process
    finally:
        process.stop()
        print(f"----- operator log ({process.log_path}) -----\n{process.log()[-20000:]}")


@pytest.fixture
def node(api: Api, apiserver: Cluster, namespace: str) -> Iterator[str]:
    """An 8-GPU node only this test's pods select."""
    name = f"gpu-{namespace}"
    manifest = node_manifest(name, 8)
    manifest["metadata"]["labels"]["test"] = namespace
    apiserver.client("admin").create("/api/v1/nodes", manifest)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            for job in api.list(jobs_path(namespace)):
                api.delete(jobs_path(namespace, job["metadata"]["name"]))
        apiserver.client("admin").delete(f"/api/v1/nodes/{name}")


def gpu_job(name: str, namespace: str, *, min_r: int, max_r: int, window: int = 2,
            priority: int = 0, autoscale: bool = True,
            replicas: int | None = None) -> dict[str, Any]:
    body = elastic_job(name, min_r, max_r, replicas=replicas, priority=priority,
                       autoscale={"enabled": autoscale, "stabilizationWindowSeconds": window})
    pod_spec = body["spec"]["template"]["spec"]
    pod_spec["nodeSelector"] = {"test": namespace}
    pod_spec["containers"][0]["resources"] = {"limits": {GPU: "1"}}
    return body


def gpu_pod(name: str, namespace: str, gpus: int, **pod_labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": pod_labels},
            "spec": {"nodeSelector": {"test": namespace},
                     "containers": [{"name": "c", "image": "x",
                                     "resources": {"limits": {GPU: str(gpus)}}}]}}


def replicas(api: Api, namespace: str, name: str) -> int | None:
    return api.get(jobs_path(namespace, name))["spec"].get("replicas")


def bound(api: Api, namespace: str, job: str) -> int:
    return sum(1 for p in worker_pods(api, namespace, job) if p["spec"].get("nodeName"))


def metric(process: OperatorProcess, name: str) -> float:
    """Sum of a metric's samples (0 when absent)."""
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.M)
    return sum(float(v) for v in pattern.findall(process.metrics()))


def autoscale_events(api: Api, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in events_for(api, namespace, name) if e.get("reason") == reason]


def test_job_grows_into_free_gpus_and_into_gpus_freed_later(
        api: Api, namespace: str, node: str, operator_process: OperatorProcess) -> None:
    api.create(pods_path(namespace), gpu_pod("other", namespace, 2))
    api.wait_for(lambda: api.get(pods_path(namespace, "other"))["spec"].get("nodeName"),
                 30, "the other pod bound")
    api.create(jobs_path(namespace), gpu_job("train", namespace, min_r=1, max_r=8, window=2))

    api.wait_for(lambda: replicas(api, namespace, "train") == 6, 40, "spec.replicas 6")
    api.wait_for(lambda: bound(api, namespace, "train") == 6, 30, "6 workers bound")
    grew = api.wait_for(lambda: autoscale_events(api, namespace, "train", "AutoscaleUp"), 10)
    assert f"5 GPUs free on {node}" in grew[0]["message"], grew[0]["message"]

    freed_at = time.monotonic()
    api.delete(pods_path(namespace, "other"))
    api.wait_for(lambda: replicas(api, namespace, "train") == 8, 40, "spec.replicas 8")
    assert time.monotonic() - freed_at >= 2 - 0.5  # waited for the stabilization window
    api.wait_for(lambda: bound(api, namespace, "train") == 8, 30, "8 workers bound")
    assert any(f"2 GPUs free on {node}" in e["message"]
               for e in autoscale_events(api, namespace, "train", "AutoscaleUp"))
    assert metric(operator_process, "elastic_autoscaler_scale_ups_total") >= 2


def test_higher_priority_job_shrinks_the_lower_one_but_never_below_min(
        api: Api, namespace: str, node: str, operator_process: OperatorProcess) -> None:
    api.create(jobs_path(namespace), gpu_job("low", namespace, min_r=2, max_r=8, window=1))
    api.wait_for(lambda: bound(api, namespace, "low") == 8, 40, "low at 8 bound workers")

    api.create(jobs_path(namespace), gpu_job("high", namespace, min_r=3, max_r=3, priority=10,
                                             autoscale=False))
    api.wait_for(lambda: replicas(api, namespace, "low") == 5, 40, "low shrunk to 5")
    api.wait_for(lambda: bound(api, namespace, "high") == 3, 30, "high's 3 workers bound")
    shrunk = autoscale_events(api, namespace, "low", "AutoscaleDownForPriority")
    assert shrunk and f"{namespace}/high" in shrunk[0]["message"]

    # A bigger high-priority job than low can make room for: low stops at its min of 2.
    api.patch(jobs_path(namespace, "high"), {"spec": {"minReplicas": 7, "maxReplicas": 7,
                                                      "replicas": 7}})
    api.wait_for(lambda: replicas(api, namespace, "low") == 2, 40, "low shrunk to its min")
    rounds = metric(operator_process, "elastic_autoscaler_decisions_total")
    api.wait_for(lambda: metric(operator_process, "elastic_autoscaler_decisions_total")
                 >= rounds + 6, 30, "six more decision rounds")
    assert replicas(api, namespace, "low") == 2
    assert api.wait_for(lambda: bound(api, namespace, "high") == 6, 30, "6 of high bound")


def test_protected_pod_makes_room_and_disabled_jobs_are_left_alone(
        api: Api, namespace: str, node: str, operator_process: OperatorProcess) -> None:
    api.create(jobs_path(namespace), gpu_job("fixed", namespace, min_r=1, max_r=8,
                                             autoscale=False, replicas=2))
    api.create(jobs_path(namespace), gpu_job("elastic", namespace, min_r=1, max_r=8, window=1))
    api.wait_for(lambda: bound(api, namespace, "elastic") == 6, 40, "elastic at 6")
    api.create(pods_path(namespace), gpu_pod("notebook", namespace, 2,
                                             **{labels.PROTECTED: "true"}))
    api.wait_for(lambda: api.get(pods_path(namespace, "notebook"))["spec"].get("nodeName"),
                 40, "the protected pod bound")
    assert replicas(api, namespace, "elastic") == 4
    assert replicas(api, namespace, "fixed") == 2
    assert not [e for e in events_for(api, namespace, "fixed")
                if e.get("reason", "").startswith("Autoscale")]


def test_flapping_capacity_does_not_resize_repeatedly(
        api: Api, namespace: str, node: str, operator_process: OperatorProcess) -> None:
    api.create(pods_path(namespace), gpu_pod("flap", namespace, 2))
    api.wait_for(lambda: api.get(pods_path(namespace, "flap"))["spec"].get("nodeName"), 30)
    api.create(jobs_path(namespace), gpu_job("train", namespace, min_r=1, max_r=8, window=6))
    api.wait_for(lambda: replicas(api, namespace, "train") == 6, 40, "spec.replicas 6")
    # The event follows the resize it reports: count the ups once the one to 6 is recorded.
    api.wait_for(lambda: any("->6:" in e.get("message", "") for e in autoscale_events(
        api, namespace, "train", "AutoscaleUp")), 30, "the AutoscaleUp event to 6")
    ups = len(autoscale_events(api, namespace, "train", "AutoscaleUp"))

    # The 2 GPUs come and go about twice a second, far faster than the 6 s window.
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        api.delete(pods_path(namespace, "flap"))
        time.sleep(0.25)  # paces the load we generate; not synchronisation
        api.create(pods_path(namespace), gpu_pod("flap", namespace, 2))
        api.wait_for(lambda: api.get(pods_path(namespace, "flap"))["spec"].get("nodeName"),
                     30, "the flapping pod bound again")
        time.sleep(0.25)
    assert replicas(api, namespace, "train") == 6
    assert len(autoscale_events(api, namespace, "train", "AutoscaleUp")) == ups
    assert not autoscale_events(api, namespace, "train", "AutoscaleDownForPriority")

    # Once the GPUs stay free, the job does take them: the test above could have failed.
    api.delete(pods_path(namespace, "flap"))
    api.wait_for(lambda: replicas(api, namespace, "train") == 8, 40, "spec.replicas 8")


def test_rbac_allows_every_call_and_nodes_are_watched_not_relisted(
        apiserver: Cluster, operator_process: OperatorProcess) -> None:
    """Runs last in the module, so the audit holds every scenario above."""
    calls = [r for r in apiserver.audit(OPERATOR_USER)]
    assert any(r.resource == "elasticjobs" and r.subresource == "scale" for r in calls)
    # Decisions never list the cluster: nodes are listed once per start (then watched).
    node_lists = [r for r in calls if r.resource == "nodes" and r.verb == "list"]
    assert len(node_lists) <= operator_process.starts
    missing = calls_rbac_denies(operator_calls(apiserver))
    assert not missing, f"deploy/rbac.yaml does not allow: {missing}"
