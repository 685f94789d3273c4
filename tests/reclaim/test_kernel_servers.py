"""The reclaim controller against both real kernel servers it is deployed with: jupyter_server
2 and Jupyter Enterprise Gateway 3.3 (local kernels), each with real ipykernel kernels and
token auth; kernel "pods" in the emulated API server and ``elastic-operator run`` as in
``test_integration.py``. Every test runs once per server.

What differs between the two and matters here: the gateway refuses to list kernels unless
``list_kernels`` is on (403), refuses kernels for root (``KERNEL_USERNAME`` names the user),
and answers a wrong token with 401. Both leave a kernel nobody connected to ``starting``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from elastic_operator import labels
from tests.harness import Api, OperatorProcess
from tests.reclaim.conftest import TOKEN, Jupyter, wait_for
from tests.reclaim.gateway import running_gateway
from tests.reclaim.scenario import (
    POLICY,
    WAIT,
    annotations,
    assert_no_token,
    checks_after,
    make_pod,
    make_policy,
    ready_reason,
    reasons,
    run_pod,
    status,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["jupyter_server", "enterprise_gateway"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jupyter]:
    """The kernel server under test, started once per module and kind."""
    if request.param == "jupyter_server":
        yield request.getfixturevalue("jupyter")
        return
    with running_gateway(tmp_path_factory.mktemp("gateway"), TOKEN) as gateway:
        yield gateway


def test_idle_kernel_is_warned_then_reclaimed_others_kept(
    api: Api, operator: OperatorProcess, namespace: str,
    server: Jupyter
) -> None:
    ns = namespace
    idle, busy, connected, exempt = (server.start_kernel() for _ in range(4))
    server.use(idle)
    server.use(busy, "import time; time.sleep(600)", wait=False)  # then disconnects
    server.use(connected, keep_open=True)
    server.use(exempt)
    pods = {
        "idle": make_pod(api, ns, idle),
        "busy": make_pod(api, ns, busy),
        "connected": make_pod(api, ns, connected),
        "exempt": make_pod(api, ns, exempt, annotations={labels.RECLAIM: "never"}),
    }
    make_policy(api, ns, server.url, warningPeriod="5s")

    # Warned first: the mark and a Warning event with the time it will go ...
    mark = wait_for(lambda: annotations(api, ns, pods["idle"]).get(labels.RECLAIM_AT), WAIT,
                    "the reclaim-at mark")
    assert idle in server.kernels()
    assert "ReclaimScheduled" in reasons(api, ns, pods["idle"])
    # ... then shut down through the Jupyter API.
    wait_for(lambda: idle not in server.kernels(), WAIT, "the idle kernel to be shut down")
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
    assert st["gpuHoursReclaimed"] > 0

    checks_after(api, ns, 2)
    kernels = server.kernels()
    assert {busy, connected, exempt} <= set(kernels)
    assert kernels[busy]["execution_state"] == "busy"
    assert kernels[connected]["connections"] >= 1
    for key in ("busy", "connected", "exempt"):
        assert labels.RECLAIM_AT not in annotations(api, ns, pods[key]), key
    assert status(api, ns)["reclaimed"] == 1
    # The gauges a dashboard charts: the idle kernel is gone, the other three are not idle.
    metrics = operator.metrics()
    assert f'elastic_operator_reclaim_kernels{{{labelled},state="idle"}} 0.0' in metrics
    assert f"elastic_operator_reclaim_idle_gpus{{{labelled}}} 0.0" in metrics
    assert_no_token(api, operator, ns)
    for kernel in (busy, connected, exempt):
        server.shutdown(kernel)


def test_kernel_nobody_connected_to_is_reclaimed_after_the_starting_grace(
    api: Api, operator: OperatorProcess, namespace: str, server: Jupyter
) -> None:
    ns = namespace
    abandoned, pending = server.start_kernel(), server.start_kernel()
    pods = {"abandoned": make_pod(api, ns, abandoned), "pending": make_pod(api, ns, pending)}
    run_pod(api, ns, pods["abandoned"])  # the other pod never reports Running
    make_policy(api, ns, server.url, startingGrace="3s", warningPeriod="2s")

    mark = wait_for(lambda: annotations(api, ns, pods["abandoned"]).get(labels.RECLAIM_AT),
                    WAIT, "the abandoned kernel's mark")
    # Still "starting" as the server reports it: nobody ever connected.
    assert server.kernels()[abandoned]["execution_state"] == "starting"
    wait_for(lambda: abandoned not in server.kernels(), WAIT,
             "the abandoned kernel to be shut down")
    assert mark
    decision = next(d for d in status(api, ns)["recentDecisions"] if d["action"] == "reclaim")
    assert decision["pod"] == pods["abandoned"]
    assert "never left starting" in decision["reason"]
    checks_after(api, ns, 1)
    assert server.kernels()[pending]["execution_state"] == "starting"
    assert labels.RECLAIM_AT not in annotations(api, ns, pods["pending"])
    assert status(api, ns)["reclaimed"] == 1
    server.shutdown(pending)


def test_wrong_token_reclaims_nothing(
    api: Api, operator: OperatorProcess, namespace: str, server: Jupyter
) -> None:
    ns = namespace
    kernel = server.start_kernel()
    server.use(kernel)
    pod = make_pod(api, ns, kernel)
    make_policy(api, ns, server.url, token="not-" + TOKEN, warningPeriod="0s")

    assert wait_for(lambda: ready_reason(api, ns), WAIT, "Ready=False") == "JupyterUnauthorized"
    message = {c["type"]: c for c in status(api, ns)["conditions"]}["Ready"]["message"]
    assert "tokenSecretRef" in message and "nothing reclaimed" in message
    # The gateway answers a wrong token 401, jupyter_server 403.
    assert ("HTTP 401" if server.kind == "enterprise_gateway" else "HTTP 403") in message
    assert "CheckJupyterUnauthorized" in reasons(api, ns, POLICY)
    checks_after(api, ns, 2)
    assert kernel in server.kernels()
    assert status(api, ns).get("reclaimed", 0) == 0
    assert labels.RECLAIM_AT not in annotations(api, ns, pod)
    assert_no_token(api, operator, ns)
    server.shutdown(kernel)
