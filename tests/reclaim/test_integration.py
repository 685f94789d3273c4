"""The reclaim controller end to end: a real jupyter_server with real ipykernel kernels, kernel
"pods" in the emulated API server, and ``elastic-operator run`` (with the reclaim handlers) as a
subprocess from the shared harness, in debug logging so the token check covers every line.

Durations are seconds so a scenario takes a few checks; waits have generous deadlines because
the CI machine is loaded, and nothing sleeps to synchronise.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from elastic_operator import labels
from tests.harness import (
    Api,
    Cluster,
    OperatorProcess,
    calls_rbac_denies,
    free_port,
    operator_calls,
    pods_path,
)
from tests.reclaim.conftest import SCRAPE_INTERVAL, Exporter, Jupyter, wait_for
from tests.reclaim.scenario import (
    POLICY,
    WAIT,
    annotations,
    assert_no_token,
    checks_after,
    make_pod,
    make_policy,
    policy_path,
    ready_reason,
    reasons,
    status,
)

pytestmark = pytest.mark.slow


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

    assert wait_for(lambda: ready_reason(api, ns), WAIT, "Ready=False") == "JupyterUnreachable"
    assert "CheckJupyterUnreachable" in reasons(api, ns, POLICY)

    api.patch(policy_path(ns, POLICY), {"spec": {"jupyter": {"url": failing_jupyter.url}}})
    wait_for(lambda: ready_reason(api, ns) == "JupyterHttpError", WAIT, "JupyterHttpError")
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
    # The profiling metric (a 0-1 ratio) with threshold 0: only a GPU that read zero is idle.
    make_policy(api, ns, jupyter.url, warningPeriod="1s", gpuIdle={
        "prometheusUrl": url, "metric": "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "threshold": 0,
        "sampleInterval": SCRAPE_INTERVAL, "window": "5s", "metricLagGrace": "3s"})

    wait_for(lambda: gpu_idle not in jupyter.kernels(), WAIT * 1.5,
             "the GPU-idle kernel to be shut down")
    checks_after(api, ns, 2)
    assert gpu_busy in jupyter.kernels()
    conditions = {c["type"]: c for c in status(api, ns)["conditions"]}
    assert conditions["GpuMetricsAvailable"]["status"] == "True"
    decisions = status(api, ns)["recentDecisions"]
    assert [d["pod"] for d in decisions if d["action"] == "reclaim"] == [idle_pod]
    reason = next(d["reason"] for d in decisions if d["action"] == "reclaim")
    assert "GPU idle: peak 0% <= 0%" in reason
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
