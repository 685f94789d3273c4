"""The reclaim controller end to end: a real jupyter_server with real ipykernel kernels, kernel
"pods" in the emulated API server, and ``elastic-operator run`` (with the reclaim handlers) as a
subprocess from the shared harness, in debug logging so the token check covers every line.

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

from elastic_operator import k8s, labels
from tests.harness import (
    Api,
    Cluster,
    OperatorProcess,
    calls_rbac_denies,
    events_for,
    free_port,
    operator_calls,
    pods_path,
)
from tests.reclaim.conftest import TOKEN, Exporter, Jupyter, wait_for

pytestmark = pytest.mark.slow

WAIT = 60.0
POLICY = "notebooks"


@pytest.fixture(scope="module")
def operator_args() -> list[str]:
    """Debug logging: the token must not appear even there."""
    return ["--verbose"]


@pytest.fixture
def operator(operator_process: OperatorProcess) -> OperatorProcess:
    return operator_process


def policy_path(ns: str, name: str | None = None, sub: str | None = None) -> str:
    return k8s.path("kernelreclaimpolicies", ns, name, sub, group=labels.GROUP,
                    version=labels.VERSION)


def make_pod(api: Api, ns: str, kernel_id: str, gpus: int = 1,
             annotations: dict[str, str] | None = None) -> str:
    """A kernel pod as Enterprise Gateway would create it, labelled with the kernel id."""
    name = f"kernel-{kernel_id[:8]}"
    resources = {"limits": {"nvidia.com/gpu": str(gpus)},
                 "requests": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    api.create(pods_path(ns), {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {},
                     "labels": {"app": "enterprise-gateway", "component": "kernel",
                                "kernel_id": kernel_id}},
        "spec": {"containers": [{"name": "kernel", "image": "elyra/kernel-py",
                                 "resources": resources}]},
    })
    return name


def make_policy(api: Api, ns: str, url: str, **spec: Any) -> None:
    """A KernelReclaimPolicy with the token Secret, short durations unless given."""
    api.create(k8s.path("secrets", ns), {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "jupyter-token"},
        "data": {"token": base64.b64encode(TOKEN.encode()).decode()},
    })
    api.create(policy_path(ns), {
        "apiVersion": labels.API_VERSION, "kind": "KernelReclaimPolicy",
        "metadata": {"name": POLICY},
        "spec": {"jupyter": {"url": url, "tokenSecretRef": {"name": "jupyter-token"}},
                 "idleAfter": "2s", "warningPeriod": "3s", "checkEvery": "1s", **spec},
    })


def status(api: Api, ns: str) -> dict[str, Any]:
    return api.get(policy_path(ns, POLICY)).get("status") or {}


def annotations(api: Api, ns: str, pod: str) -> dict[str, str]:
    return api.get(pods_path(ns, pod))["metadata"].get("annotations") or {}


def checks_after(api: Api, ns: str, count: int) -> None:
    """Wait until the operator has finished ``count`` more checks of the policy."""
    seen: list[str] = []

    def advanced() -> bool:
        stamp = status(api, ns).get("lastCheckTime")
        if stamp and (not seen or seen[-1] != stamp):
            seen.append(stamp)
        return len(seen) > count

    wait_for(advanced, WAIT, f"{count} more checks")


def reasons(api: Api, ns: str, name: str) -> list[str]:
    return [e["reason"] for e in events_for(api, ns, name)]


def assert_no_token(api: Api, operator: OperatorProcess, ns: str) -> None:
    """The Jupyter token (plain or as the Secret stores it) is in no log line, event or
    status."""
    encoded = base64.b64encode(TOKEN.encode()).decode()
    texts = {"operator log": operator.log(),
             "events": json.dumps(api.list(k8s.path("events", ns))),
             "policy": json.dumps(api.get(policy_path(ns, POLICY)))}
    for what, text in texts.items():
        assert TOKEN not in text and encoded not in text, f"token leaked into the {what}"


def test_idle_kernel_is_warned_then_reclaimed_others_kept(
    api: Api, operator: OperatorProcess, namespace: str,
    jupyter: Jupyter
) -> None:
    ns = namespace
    idle, busy, connected, exempt = (jupyter.start_kernel() for _ in range(4))
    jupyter.use(idle)
    jupyter.use(busy, "import time; time.sleep(600)", wait=False)  # then disconnects
    jupyter.use(connected, keep_open=True)
    jupyter.use(exempt)
    pods = {
        "idle": make_pod(api, ns, idle),
        "busy": make_pod(api, ns, busy),
        "connected": make_pod(api, ns, connected),
        "exempt": make_pod(api, ns, exempt, annotations={labels.RECLAIM: "never"}),
    }
    make_policy(api, ns, jupyter.url, warningPeriod="5s")

    # Warned first: the mark and a Warning event with the time it will go ...
    mark = wait_for(lambda: annotations(api, ns, pods["idle"]).get(labels.RECLAIM_AT), WAIT,
                    "the reclaim-at mark")
    assert idle in jupyter.kernels()
    assert "ReclaimScheduled" in reasons(api, ns, pods["idle"])
    # ... then shut down through the Jupyter API.
    wait_for(lambda: idle not in jupyter.kernels(), WAIT, "the idle kernel to be shut down")
    assert mark, "reclaimed without being warned first"
    wait_for(lambda: status(api, ns).get("reclaimed") == 1, WAIT, "status.reclaimed")
    st = status(api, ns)
    assert st["gpusReclaimed"] == 1
    assert any(d["action"] == "reclaim" and d["pod"] == pods["idle"]
               for d in st["recentDecisions"])
    assert "Reclaimed" in reasons(api, ns, pods["idle"])
    assert "Reclaimed" in reasons(api, ns, POLICY)
    metrics = operator.metrics()
    labelled = f'namespace="{ns}",policy="{POLICY}"'
    assert f'elastic_operator_reclaimed_kernels_total{{action="shutdown",{labelled}}} 1.0' in (
        metrics)
    assert f"elastic_operator_reclaimed_gpus_total{{{labelled}}} 1.0" in metrics
    assert f"elastic_operator_reclaimed_gpu_hours_total{{{labelled}}}" in metrics

    checks_after(api, ns, 2)
    kernels = jupyter.kernels()
    assert {busy, connected, exempt} <= set(kernels)
    assert kernels[busy]["execution_state"] == "busy"
    assert kernels[connected]["connections"] >= 1
    for key in ("busy", "connected", "exempt"):
        assert labels.RECLAIM_AT not in annotations(api, ns, pods[key]), key
    assert status(api, ns)["reclaimed"] == 1
    assert_no_token(api, operator, ns)
    for kernel in (busy, connected, exempt):
        jupyter.shutdown(kernel)


def test_activity_during_the_warning_clears_the_mark(
    api: Api, operator: OperatorProcess, namespace: str,
    jupyter: Jupyter
) -> None:
    ns = namespace
    kernel = jupyter.start_kernel()
    jupyter.use(kernel)
    pod = make_pod(api, ns, kernel)
    make_policy(api, ns, jupyter.url, idleAfter="2s", warningPeriod="10m")

    mark = wait_for(lambda: annotations(api, ns, pod).get(labels.RECLAIM_AT), WAIT, "the mark")
    wait_for(lambda: status(api, ns).get("warned") == 1, WAIT, "status.warned")
    jupyter.use(kernel, "y = 2")  # the user comes back

    def actions() -> list[str]:
        return [d["action"] for d in status(api, ns).get("recentDecisions", [])]

    wait_for(lambda: "clearWarning" in actions(), WAIT, "the mark to be cleared")
    assert actions()[:2] == ["warn", "clearWarning"]
    assert "ReclaimCancelled" in reasons(api, ns, pod)
    assert kernel in jupyter.kernels()
    assert status(api, ns)["reclaimed"] == 0
    # Idle again afterwards, it may be warned again, but only with a new deadline.
    again = annotations(api, ns, pod).get(labels.RECLAIM_AT)
    assert again is None or again != mark
    jupyter.shutdown(kernel)


def test_dry_run_reports_and_changes_nothing(api: Api, operator: OperatorProcess, namespace: str,
    jupyter: Jupyter) -> None:
    ns = namespace
    kernel = jupyter.start_kernel()
    jupyter.use(kernel)
    pod = make_pod(api, ns, kernel)
    make_policy(api, ns, jupyter.url, dryRun=True, warningPeriod="0s")

    wait_for(lambda: any(d["action"] == "wouldReclaim" for d in
                         status(api, ns).get("recentDecisions", [])), WAIT, "wouldReclaim")
    assert "WouldReclaim" in reasons(api, ns, POLICY)
    checks_after(api, ns, 2)
    assert kernel in jupyter.kernels()
    st = status(api, ns)
    assert st["reclaimed"] == 0 and st["eligible"] == 1
    assert st["conditions"][0]["reason"] == "DryRun"
    assert labels.RECLAIM_AT not in annotations(api, ns, pod)
    assert_no_token(api, operator, ns)
    jupyter.shutdown(kernel)


def test_connected_kernel_reclaimed_with_cull_connected(
    api: Api, operator: OperatorProcess, namespace: str,
    jupyter: Jupyter
) -> None:
    ns = namespace
    kernel = jupyter.start_kernel()
    jupyter.use(kernel, keep_open=True)
    pod = make_pod(api, ns, kernel)
    make_policy(api, ns, jupyter.url, cullConnected=True, action="deletePod",
                warningPeriod="1s")

    wait_for(lambda: api.get_or_none(pods_path(ns, pod)) is None, WAIT,
             "the connected kernel's pod to be deleted")
    wait_for(lambda: status(api, ns).get("reclaimed") == 1, WAIT, "status.reclaimed")
    assert jupyter.kernels()[kernel]["connections"] >= 1  # deletePod leaves Jupyter alone
    assert_no_token(api, operator, ns)
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
    api: Api, operator: OperatorProcess, namespace: str,
    failing_jupyter: FailingJupyter
) -> None:
    ns = namespace
    pod = make_pod(api, ns, "0c2d9e7a-dead-4bee-8f00-000000000001")
    make_policy(api, ns, f"http://127.0.0.1:{free_port()}", warningPeriod="0s")

    def ready_reason() -> str | None:
        conditions = {c["type"]: c for c in status(api, ns).get("conditions", [])}
        ready = conditions.get("Ready", {})
        return ready.get("reason") if ready.get("status") == "False" else None

    assert wait_for(ready_reason, WAIT, "Ready=False") == "JupyterUnreachable"
    assert "CheckJupyterUnreachable" in reasons(api, ns, POLICY)

    api.patch(policy_path(ns, POLICY), {"spec": {"jupyter": {"url": failing_jupyter.url}}})
    wait_for(lambda: ready_reason() == "JupyterHttpError", WAIT, "JupyterHttpError")
    message = {c["type"]: c for c in status(api, ns)["conditions"]}["Ready"]["message"]
    assert "HTTP 500" in message and "nothing reclaimed" in message
    checks_after(api, ns, 1)
    assert failing_jupyter.gets >= 2 and failing_jupyter.deletes == 0
    st = status(api, ns)
    assert st["reclaimed"] == 0
    assert labels.RECLAIM_AT not in annotations(api, ns, pod)
    assert_no_token(api, operator, ns)


def test_gpu_busy_kernel_is_kept_gpu_idle_is_reclaimed(
    api: Api, operator: OperatorProcess, namespace: str,
    jupyter: Jupyter, prometheus: tuple[str, Exporter]
) -> None:
    url, exporter = prometheus
    ns = namespace
    gpu_busy, gpu_idle = jupyter.start_kernel(), jupyter.start_kernel()
    jupyter.use(gpu_busy)
    jupyter.use(gpu_idle)
    busy_pod, idle_pod = make_pod(api, ns, gpu_busy), make_pod(api, ns, gpu_idle)
    exporter.util[(ns, busy_pod)] = 87.0
    exporter.util[(ns, idle_pod)] = 0.0
    make_policy(api, ns, jupyter.url, warningPeriod="1s", gpuIdle={
        "prometheusUrl": url, "threshold": 5, "window": "4s", "metricLagGrace": "3s"})

    wait_for(lambda: gpu_idle not in jupyter.kernels(), WAIT * 1.5,
             "the GPU-idle kernel to be shut down")
    checks_after(api, ns, 2)
    assert gpu_busy in jupyter.kernels()
    conditions = {c["type"]: c for c in status(api, ns)["conditions"]}
    assert conditions["GpuMetricsAvailable"]["status"] == "True"
    decisions = status(api, ns)["recentDecisions"]
    assert [d["pod"] for d in decisions if d["action"] == "reclaim"] == [idle_pod]
    assert "GPU idle" in next(d["reason"] for d in decisions if d["action"] == "reclaim")
    assert labels.RECLAIM_AT not in annotations(api, ns, busy_pod)
    assert_no_token(api, operator, ns)
    jupyter.shutdown(gpu_busy)


def test_rbac_allows_every_call_the_reclaim_controller_made(
    apiserver: Cluster, operator: OperatorProcess
) -> None:
    """Runs last in the module, so the audit holds every scenario above."""
    calls = operator_calls(apiserver)
    # The audit did see the reclaim work: token, marks, status.
    assert {("get", "", "secrets"), ("patch", "", "pods"),
            ("patch", labels.GROUP, "kernelreclaimpolicies/status")} <= calls
    missing = calls_rbac_denies(calls)
    assert not missing, f"deploy/rbac.yaml does not allow: {missing}"
