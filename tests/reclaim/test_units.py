"""Pure parts around the rule: the API model, pod and kernel parsing, the check plan and the
status it produces, the metrics, and the client's redaction (the GPU verdict:
``test_gpu_metrics.py``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from elastic_operator import labels
from elastic_operator.api.common import Condition
from elastic_operator.api.kernelreclaim import (
    GpuIdleSpec,
    KernelReclaimPolicySpec,
    KernelReclaimPolicyStatus,
    duration_seconds,
)
from elastic_operator.api.registry import all_crds
from elastic_operator.reclaim import plan, pods
from elastic_operator.reclaim.jupyter import JupyterClient, kernel_facts
from elastic_operator.reclaim.metrics import ReclaimMetrics
from elastic_operator.reclaim.rule import KernelFacts

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPEC = {"jupyter": {"url": "http://jupyter:8888"}}


def policy(**fields: object) -> KernelReclaimPolicySpec:
    return KernelReclaimPolicySpec.model_validate({**SPEC, **fields})


@pytest.mark.parametrize(
    ("text", "seconds"), [("45s", 45), ("30m", 1800), ("1h30m", 5400), ("2.5s", 2.5),
                          ("500ms", 0.5), ("0s", 0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"idleAfter": "30"}, "idleAfter"),
        ({"idleAfter": "ten minutes"}, "idleAfter"),
        ({"checkEvery": "0s"}, "checkEvery"),
        ({"action": "kill"}, "action"),
        ({"jupyter": {"url": "jupyter:8888"}}, "url"),
        ({"jupyter": {"url": "http://j:8888/?token=abc"}}, "url"),
        ({"gpuIdle": {"prometheusUrl": "http://p:9090", "threshold": 101}}, "threshold"),
        ({"gpuIdle": {"prometheusUrl": "http://p:9090", "window": "4m"}}, "window: '4m'"),
        ({"gpuIdle": {"prometheusUrl": "http://p:9090", "sampleInterval": "0s"}},
         "sampleInterval"),
        ({"gpuIdle": {"prometheusUrl": "http://p:9090", "metric": "my_util"}}, "unit:"),
        ({"gpuIdle": {"prometheusUrl": "http://p:9090", "unit": "fraction"}}, "unit"),
        ({"startingGrace": "5"}, "startingGrace"),
        ({"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "needs"),
        ({"cullbusy": True}, "cullbusy"),
    ],
)
def test_spec_errors_name_the_field(fields: dict, named: str) -> None:
    with pytest.raises(ValidationError) as info:
        policy(**fields)
    assert named in str(info.value)


def test_duration_error_says_how_to_fix() -> None:
    with pytest.raises(ValidationError, match=r'e\.g\. "45s", "30m" or "1h30m"'):
        policy(warningPeriod="5 min")


def test_short_window_error_says_how_to_fix() -> None:
    with pytest.raises(ValidationError, match=r"shorter than 10 samples of sampleInterval "
                       r"'30s'; make window at least 300s"):
        policy(gpuIdle={"prometheusUrl": "http://p:9090", "window": "299s"})
    # Ten samples exactly is enough, and a faster exporter allows a shorter window.
    policy(gpuIdle={"prometheusUrl": "http://p:9090", "window": "5m"})
    policy(gpuIdle={"prometheusUrl": "http://p:9090", "window": "10s", "sampleInterval": "1s"})


def test_gpu_defaults_follow_dcgm_exporter() -> None:
    gpu = GpuIdleSpec(prometheusUrl="http://p:9090")
    assert (gpu.metric, gpu.metric_unit(), gpu.sampleInterval) == (
        "DCGM_FI_DEV_GPU_UTIL", "percent", "30s")
    profiling = GpuIdleSpec(prometheusUrl="http://p:9090", metric="DCGM_FI_PROF_GR_ENGINE_ACTIVE")
    assert profiling.metric_unit() == "ratio"
    custom = GpuIdleSpec(prometheusUrl="http://p:9090", metric="my_util", unit="ratio")
    assert custom.metric_unit() == "ratio"
    assert policy().startingGrace == "5m"


def test_defaults_select_enterprise_gateway_kernel_pods() -> None:
    spec = policy()
    assert spec.selector.query() == "app=enterprise-gateway,component=kernel"
    assert spec.kernelIdLabel == "kernel_id"
    assert (spec.cullBusy, spec.cullConnected, spec.gpuOnly, spec.dryRun) == (
        False, False, True, False)
    assert spec.action == "shutdown" and spec.gpuResourceName == "nvidia.com/gpu"


def test_selector_query_with_expressions() -> None:
    spec = policy(selector={"matchLabels": {"team": "ml"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["a", "b"]},
        {"key": "skip", "operator": "DoesNotExist"},
        {"key": "kernel_id", "operator": "Exists"},
    ]})
    assert spec.selector.query() == "team=ml,tier in (a,b),!skip,kernel_id"


def test_crd_is_generated_with_duration_patterns() -> None:
    manifest = next(c for c in all_crds() if c["spec"]["names"]["kind"] ==
                    "KernelReclaimPolicy")
    assert manifest["spec"]["names"]["shortNames"] == ["krp"]
    version = manifest["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert props["idleAfter"]["pattern"].startswith("^(")
    assert props["action"]["enum"] == ["shutdown", "deletePod"]
    assert props["gpuIdle"]["properties"]["metric"]["default"] == "DCGM_FI_DEV_GPU_UTIL"
    assert props["gpuIdle"]["properties"]["sampleInterval"]["default"] == "30s"
    assert props["gpuIdle"]["properties"]["unit"]["enum"] == ["percent", "ratio"]
    assert props["startingGrace"]["default"] == "5m"
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Seen", "Idle", "Warned", "Reclaimed", "GPUs", "GPU-Hours",
                             "DryRun", "Age"]
    assert columns["Idle"] == ".status.eligible"
    assert columns["GPU-Hours"] == ".status.gpuHoursReclaimed"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["gpuHoursReclaimed"]["type"] == "number"


def kernel_pod(name: str, kernel_id: str | None, gpus: int = 1, **annotations: str) -> dict:
    meta: dict = {"name": name, "namespace": "ns", "annotations": annotations,
                  "labels": {"app": "enterprise-gateway", "component": "kernel"},
                  "creationTimestamp": "2026-01-01T10:00:00Z"}
    if kernel_id:
        meta["labels"]["kernel_id"] = kernel_id
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {"metadata": meta, "spec": {"containers": [{"name": "k", "resources": resources}]},
            "status": {"phase": "Running"}}


def test_running_since_is_when_the_last_container_ran() -> None:
    body = kernel_pod("p", "k1")
    assert plan.pod_facts(pods.observe(body), policy()).running_since is None  # no container status
    body["status"]["containerStatuses"] = [
        {"name": "a", "state": {"running": {"startedAt": "2026-01-01T11:00:00Z"}}},
        {"name": "b", "state": {"running": {"startedAt": "2026-01-01T11:30:00Z"}}}]
    assert plan.pod_facts(pods.observe(body), policy()).running_since == NOW - timedelta(minutes=30)
    body["status"]["containerStatuses"][1]["state"] = {"waiting": {"reason": "PullBackOff"}}
    assert pods.running_since(body) is None
    pending = {**body, "status": {**body["status"], "phase": "Pending"}}
    assert pods.running_since(pending) is None


def test_pod_facts() -> None:
    body = kernel_pod("p", "k1", gpus=2, **{labels.RECLAIM: "never",
                                              labels.RECLAIM_AT: "2026-01-01T12:05:00Z"})
    facts = plan.pod_facts(pods.observe(body), policy())
    assert (facts.name, facts.kernel_id, facts.gpus, facts.exempt) == ("p", "k1", 2, True)
    assert facts.reclaim_at == NOW + timedelta(minutes=5)
    assert facts.started_at == NOW - timedelta(hours=2)
    assert plan.pod_facts(pods.observe(kernel_pod("q", None, gpus=0)), policy()).kernel_id is None


def test_kernel_facts_parse_and_reject_partial_models() -> None:
    facts = kernel_facts({"id": "k1", "name": "python3", "execution_state": "idle",
                          "connections": 1, "last_activity": "2026-01-01T11:00:00.123456Z"})
    assert facts == KernelFacts("k1", "idle", NOW - timedelta(minutes=59, seconds=59.876544), 1)
    partial = kernel_facts({"id": "k2", "last_activity": "yesterday", "connections": "1"})
    assert partial == KernelFacts("k2", None, None, None)
    assert kernel_facts({"name": "no id"}) is None


def test_client_repr_redacts_the_token() -> None:
    client = JupyterClient("http://user:pw@jupyter:8888/base", "s3cr3t-token")
    assert "s3cr3t" not in repr(client) and "pw" not in repr(client)
    assert "<redacted>" in repr(client)


def test_plan_and_status_counters() -> None:
    spec = policy(idleAfter="10m", warningPeriod="0s", minRunning="0s")
    bodies = [kernel_pod("a", "ka"), kernel_pod("b", "kb", gpus=2),
            kernel_pod("c", "kc", **{labels.RECLAIM: "never"}),
            kernel_pod("d", "kd", **{labels.RECLAIM_AT: "2026-01-01T13:00:00Z"})]
    bodies.append({**kernel_pod("e", "ke"), "status": {"phase": "Succeeded"}})
    idle = NOW - timedelta(hours=1)
    kernels = [KernelFacts("ka", "idle", idle, 0), KernelFacts("kb", "idle", idle, 0),
               KernelFacts("kc", "idle", idle, 0), KernelFacts("kd", "busy", idle, 0)]
    observed = [pods.observe(b) for b in bodies]
    verdicts = plan.decide_all(observed, kernels, {}, spec, NOW)
    assert [(v.pod.name, v.decision.action) for v in verdicts] == [
        ("a", "reclaim"), ("b", "reclaim"), ("c", "keep"), ("d", "clearWarning")]
    assert plan.candidates_for_gpu_check(observed, spec) == ["a", "b", "d"]

    outcomes = [plan.Outcome(v.pod, str(plan.record_action(v.decision, False)), "r",
                             v.decision.idle_seconds)
                for v in verdicts if plan.record_action(v.decision, False)]
    outcomes[0] = plan.Outcome(outcomes[0].pod, "failed", "shutdown failed")
    previous = KernelReclaimPolicyStatus(reclaimed=3, gpusReclaimed=5, gpuHoursReclaimed=1.5)
    ready = Condition(type=plan.READY, status="True", reason="Checked")
    status = plan.next_status(previous, now=NOW, verdicts=verdicts, outcomes=outcomes,
                              ready=ready, gpu_condition=None, generation=4)
    assert (status.kernelsSeen, status.eligible, status.warned) == (4, 2, 0)
    assert (status.reclaimed, status.gpusReclaimed) == (4, 7)  # only b succeeded (2 GPUs)
    assert status.gpuHoursReclaimed == 3.5  # + 2 GPUs x 1 h idle
    assert [r.action for r in status.recentDecisions] == ["failed", "reclaim", "clearWarning"]
    assert status.observedGeneration == 4 and status.conditions[0].type == "Ready"

    # A failed check keeps the last numbers and says why.
    down = Condition(type=plan.READY, status="False", reason="JupyterUnreachable")
    after = plan.next_status(status, now=NOW, verdicts=[], outcomes=[], ready=down,
                             gpu_condition=None, generation=4)
    assert (after.kernelsSeen, after.reclaimed) == (4, 4)
    assert after.conditions[0].reason == "JupyterUnreachable"


def test_gauges_show_the_last_check_and_go_with_the_policy() -> None:
    registry = CollectorRegistry()
    metrics = ReclaimMetrics(registry)
    metrics.checked("ns", "p", seen=4, idle=2, warned=1, idle_gpus=3)
    metrics.reclaimed("ns", "p", "shutdown", gpus=2, idle_seconds=5400)

    def value(name: str, **extra: str) -> float | None:
        return registry.get_sample_value(name, {"namespace": "ns", "policy": "p", **extra})

    assert value("elastic_operator_reclaim_kernels", state="idle") == 2
    assert value("elastic_operator_reclaim_kernels", state="warned") == 1
    assert value("elastic_operator_reclaim_idle_gpus") == 3
    assert value("elastic_operator_reclaimed_gpu_hours_total") == 3.0
    metrics.forget("ns", "p")
    metrics.forget("ns", "p")  # twice is fine (the daemon may stop before a first check)
    assert value("elastic_operator_reclaim_kernels", state="seen") is None
    assert value("elastic_operator_reclaim_idle_gpus") is None
    assert value("elastic_operator_reclaimed_gpu_hours_total") == 3.0  # counters stay


def test_dry_run_records_would_reclaim_only() -> None:
    spec = policy(idleAfter="10m", dryRun=True)
    kernels = [KernelFacts("ka", "idle", NOW - timedelta(hours=1), 0)]
    (verdict,) = plan.decide_all([pods.observe(kernel_pod("a", "ka"))], kernels, {}, spec, NOW)
    assert verdict.decision.action == "warn"
    assert plan.record_action(verdict.decision, dry_run=True) == "wouldReclaim"


def test_example_policy_is_valid() -> None:
    import yaml

    path = Path(__file__).resolve().parents[2] / "examples" / "kernel-reclaim-policy.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (policy_doc,) = [d for d in docs if d["kind"] == "KernelReclaimPolicy"]
    spec = KernelReclaimPolicySpec.model_validate(policy_doc["spec"])
    assert spec.dryRun and spec.gpuIdle is not None
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert spec.jupyter.tokenSecretRef is not None
    assert spec.jupyter.tokenSecretRef.name == secret["metadata"]["name"]


async def test_client_sends_the_token_and_maps_errors_without_it() -> None:
    from aiohttp import web

    from elastic_operator.reclaim.jupyter import JupyterError

    token = "s3cr3t-" + "x" * 8
    deleted: list[str] = []

    async def kernels(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"token {token}":
            return web.json_response({"message": "Forbidden"}, status=403)
        return web.json_response([{"id": "k1", "execution_state": "idle", "connections": 0,
                                   "last_activity": "2026-01-01T11:00:00Z"}, {"bad": 1}])

    async def delete(request: web.Request) -> web.Response:
        deleted.append(request.match_info["kid"])
        return web.Response(status=204)

    async def not_json(request: web.Request) -> web.Response:
        return web.Response(text="<html>proxy error</html>")

    app = web.Application()
    app.router.add_get("/api/kernels", kernels)
    app.router.add_delete("/api/kernels/{kid}", delete)
    app.router.add_get("/broken/api/kernels", not_json)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    try:
        async with JupyterClient(url, token) as client:
            assert [k.kernel_id for k in await client.list_kernels()] == ["k1"]
            await client.shutdown("k1")
        assert deleted == ["k1"]
        async with JupyterClient(url, "wrong") as client:
            with pytest.raises(JupyterError) as info:
                await client.list_kernels()
        assert info.value.reason == "Unauthorized" and "tokenSecretRef" in str(info.value)
        assert "EG_LIST_KERNELS" in str(info.value)  # 403: also the gateway's listing switch
        async with JupyterClient(url + "/broken", token) as client:
            with pytest.raises(JupyterError) as info:
                await client.list_kernels()
        assert info.value.reason == "BadResponse"
        assert token not in str(info.value) and token not in repr(info.value)
    finally:
        await runner.cleanup()
