"""The reclaim controller end to end: a real jupyter_server with real ipykernel kernels, kernel
"pods" in the emulated API server, and the handlers running in a kopf operator subprocess.

Durations are seconds so a scenario takes a few checks; waits have generous deadlines because
the CI machine is loaded, and nothing sleeps to synchronise.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from elastic_operator import labels
from tests.reclaim.conftest import TOKEN, Cluster, Exporter, Jupyter, free_port, wait_for

pytestmark = pytest.mark.slow

WAIT = 60.0
POLICIES = "/apis/elastic.dev/v1alpha1/namespaces/{ns}/kernelreclaimpolicies"


def make_pod(cluster: Cluster, ns: str, kernel_id: str, gpus: int = 1,
             annotations: dict[str, str] | None = None) -> str:
    """A kernel pod as Enterprise Gateway would create it, labelled with the kernel id."""
    name = f"kernel-{kernel_id[:8]}"
    resources = {"limits": {"nvidia.com/gpu": str(gpus)},
                 "requests": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    cluster.call("POST", f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {},
                     "labels": {"app": "enterprise-gateway", "component": "kernel",
                                "kernel_id": kernel_id}},
        "spec": {"containers": [{"name": "kernel", "image": "elyra/kernel-py",
                                 "resources": resources}]},
    })
    return name


def make_policy(cluster: Cluster, ns: str, url: str, **spec: Any) -> str:
    """A KernelReclaimPolicy with the token Secret, short durations unless given."""
    cluster.call("POST", f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "jupyter-token"},
        "data": {"token": base64.b64encode(TOKEN.encode()).decode()},
    })
    body = {"apiVersion": labels.API_VERSION, "kind": "KernelReclaimPolicy",
            "metadata": {"name": "notebooks"},
            "spec": {"jupyter": {"url": url, "tokenSecretRef": {"name": "jupyter-token"}},
                     "idleAfter": "2s", "warningPeriod": "3s", "checkEvery": "1s", **spec}}
    cluster.call("POST", POLICIES.format(ns=ns), body)
    return "notebooks"


def status(cluster: Cluster, ns: str) -> dict[str, Any]:
    return cluster.policy(ns, "notebooks").get("status") or {}


def checks_after(cluster: Cluster, ns: str, count: int) -> None:
    """Wait until the operator has finished ``count`` more checks of the policy."""
    seen: list[str] = []

    def advanced() -> bool:
        stamp = status(cluster, ns).get("lastCheckTime")
        if stamp and (not seen or seen[-1] != stamp):
            seen.append(stamp)
        return len(seen) > count

    wait_for(advanced, WAIT, f"{count} more checks")


def reasons(cluster: Cluster, ns: str, name: str) -> list[str]:
    return [e["reason"] for e in cluster.events(ns) if e["involvedObject"]["name"] == name]


def assert_no_token(cluster: Cluster, *namespaces: str) -> None:
    """The Jupyter token appears in no operator log line, event or status."""
    assert TOKEN not in cluster.operator_log.read_text(errors="replace")
    for ns in namespaces:
        assert TOKEN not in json.dumps(cluster.events(ns))
        assert TOKEN not in json.dumps(cluster.policy(ns, "notebooks"))


def test_idle_kernel_is_warned_then_reclaimed_others_kept(
    cluster: Cluster, jupyter: Jupyter
) -> None:
    ns = cluster.namespace("krp-mixed")
    idle, busy, connected, exempt = (jupyter.start_kernel() for _ in range(4))
    jupyter.use(idle)
    jupyter.use(busy, "import time; time.sleep(600)", wait=False)  # then disconnects
    jupyter.use(connected, keep_open=True)
    jupyter.use(exempt)
    pods = {
        "idle": make_pod(cluster, ns, idle),
        "busy": make_pod(cluster, ns, busy),
        "connected": make_pod(cluster, ns, connected),
        "exempt": make_pod(cluster, ns, exempt, annotations={labels.RECLAIM: "never"}),
    }
    make_policy(cluster, ns, jupyter.url, warningPeriod="5s")

    # Warned first: the mark and a Warning event with the time it will go ...
    mark = wait_for(lambda: cluster.pod(ns, pods["idle"])["metadata"].get("annotations", {})
                    .get(labels.RECLAIM_AT), WAIT, "the reclaim-at mark")
    assert idle in jupyter.kernels()
    assert "ReclaimScheduled" in reasons(cluster, ns, pods["idle"])
    # ... then shut down through the Jupyter API.
    wait_for(lambda: idle not in jupyter.kernels(), WAIT, "the idle kernel to be shut down")
    assert mark, "reclaimed without being warned first"
    wait_for(lambda: status(cluster, ns).get("reclaimed") == 1, WAIT, "status.reclaimed")
    st = status(cluster, ns)
    assert st["gpusReclaimed"] == 1
    assert any(d["action"] == "reclaim" and d["pod"] == pods["idle"]
               for d in st["recentDecisions"])
    assert "Reclaimed" in reasons(cluster, ns, pods["idle"])
    assert "Reclaimed" in reasons(cluster, ns, "notebooks")

    checks_after(cluster, ns, 2)
    kernels = jupyter.kernels()
    assert {busy, connected, exempt} <= set(kernels)
    assert kernels[busy]["execution_state"] == "busy"
    assert kernels[connected]["connections"] >= 1
    for key in ("busy", "connected", "exempt"):
        annotations = cluster.pod(ns, pods[key])["metadata"].get("annotations", {})
        assert labels.RECLAIM_AT not in annotations, key
    assert status(cluster, ns)["reclaimed"] == 1
    assert_no_token(cluster, ns)
    for kernel in (busy, connected, exempt):
        jupyter.shutdown(kernel)


def test_dry_run_reports_and_changes_nothing(cluster: Cluster, jupyter: Jupyter) -> None:
    ns = cluster.namespace("krp-dry")
    kernel = jupyter.start_kernel()
    jupyter.use(kernel)
    pod = make_pod(cluster, ns, kernel)
    make_policy(cluster, ns, jupyter.url, dryRun=True, warningPeriod="0s")

    wait_for(lambda: any(d["action"] == "wouldReclaim" for d in
                         status(cluster, ns).get("recentDecisions", [])), WAIT, "wouldReclaim")
    assert "WouldReclaim" in reasons(cluster, ns, "notebooks")
    checks_after(cluster, ns, 2)
    assert kernel in jupyter.kernels()
    st = status(cluster, ns)
    assert st["reclaimed"] == 0 and st["eligible"] == 1
    assert st["conditions"][0]["reason"] == "DryRun"
    assert labels.RECLAIM_AT not in cluster.pod(ns, pod)["metadata"].get("annotations", {})
    assert_no_token(cluster, ns)
    jupyter.shutdown(kernel)


def test_connected_kernel_reclaimed_with_cull_connected(
    cluster: Cluster, jupyter: Jupyter
) -> None:
    ns = cluster.namespace("krp-connected")
    kernel = jupyter.start_kernel()
    jupyter.use(kernel, keep_open=True)
    pod = make_pod(cluster, ns, kernel)
    make_policy(cluster, ns, jupyter.url, cullConnected=True, action="deletePod",
                warningPeriod="1s")

    def pod_gone() -> bool:
        return not any(p["metadata"]["name"] == pod for p in cluster.call(
            "GET", f"/api/v1/namespaces/{ns}/pods")["items"])

    wait_for(pod_gone, WAIT, "the connected kernel's pod to be deleted")
    wait_for(lambda: status(cluster, ns).get("reclaimed") == 1, WAIT, "status.reclaimed")
    assert jupyter.kernels()[kernel]["connections"] >= 1  # deletePod leaves Jupyter alone
    assert_no_token(cluster, ns)
    jupyter.shutdown(kernel)


class FailingJupyter:
    """A stub that answers every request with HTTP 500 and counts DELETEs."""

    def __init__(self) -> None:
        self.deletes = 0
        self.gets = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _fail(self) -> None:
                body = b'{"message": "internal error"}'
                self.send_response(500)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                stub.gets += 1
                self._fail()

            def do_DELETE(self) -> None:
                stub.deletes += 1
                self._fail()

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def failing_jupyter() -> Iterator[FailingJupyter]:
    stub = FailingJupyter()
    try:
        yield stub
    finally:
        stub.close()


def test_unreachable_or_failing_jupyter_reclaims_nothing(
    cluster: Cluster, failing_jupyter: FailingJupyter
) -> None:
    ns = cluster.namespace("krp-down")
    pod = make_pod(cluster, ns, "0c2d9e7a-dead-4bee-8f00-000000000001")
    make_policy(cluster, ns, f"http://127.0.0.1:{free_port()}", warningPeriod="0s")

    def ready_reason() -> str | None:
        conditions = {c["type"]: c for c in status(cluster, ns).get("conditions", [])}
        ready = conditions.get("Ready", {})
        return ready.get("reason") if ready.get("status") == "False" else None

    assert wait_for(ready_reason, WAIT, "Ready=False") == "JupyterUnreachable"
    assert "CheckJupyterUnreachable" in reasons(cluster, ns, "notebooks")

    cluster.call("PATCH", POLICIES.format(ns=ns) + "/notebooks",
                 {"spec": {"jupyter": {"url": failing_jupyter.url}}},
                 "application/merge-patch+json")
    wait_for(lambda: ready_reason() == "JupyterHttpError", WAIT, "JupyterHttpError")
    message = {c["type"]: c for c in status(cluster, ns)["conditions"]}["Ready"]["message"]
    assert "HTTP 500" in message and "nothing reclaimed" in message
    checks_after(cluster, ns, 1)
    assert failing_jupyter.gets >= 2 and failing_jupyter.deletes == 0
    st = status(cluster, ns)
    assert st["reclaimed"] == 0
    assert labels.RECLAIM_AT not in cluster.pod(ns, pod)["metadata"].get("annotations", {})
    assert_no_token(cluster, ns)


def test_gpu_busy_kernel_is_kept_gpu_idle_is_reclaimed(
    cluster: Cluster, jupyter: Jupyter, prometheus: tuple[str, Exporter]
) -> None:
    url, exporter = prometheus
    ns = cluster.namespace("krp-gpu")
    gpu_busy, gpu_idle = jupyter.start_kernel(), jupyter.start_kernel()
    jupyter.use(gpu_busy)
    jupyter.use(gpu_idle)
    busy_pod, idle_pod = make_pod(cluster, ns, gpu_busy), make_pod(cluster, ns, gpu_idle)
    exporter.util[(ns, busy_pod)] = 87.0
    exporter.util[(ns, idle_pod)] = 0.0
    make_policy(cluster, ns, jupyter.url, warningPeriod="1s", gpuIdle={
        "prometheusUrl": url, "threshold": 5, "window": "4s", "metricLagGrace": "3s"})

    wait_for(lambda: gpu_idle not in jupyter.kernels(), WAIT * 1.5,
             "the GPU-idle kernel to be shut down")
    checks_after(cluster, ns, 2)
    assert gpu_busy in jupyter.kernels()
    conditions = {c["type"]: c for c in status(cluster, ns)["conditions"]}
    assert conditions["GpuMetricsAvailable"]["status"] == "True"
    decisions = status(cluster, ns)["recentDecisions"]
    assert [d["pod"] for d in decisions if d["action"] == "reclaim"] == [idle_pod]
    assert "GPU idle" in next(d["reason"] for d in decisions if d["action"] == "reclaim")
    assert labels.RECLAIM_AT not in cluster.pod(ns, busy_pod)["metadata"].get("annotations", {})
    assert_no_token(cluster, ns)
    jupyter.shutdown(gpu_busy)
