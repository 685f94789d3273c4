"""One check of a policy against a fake Kubernetes: the failure paths decide nothing, say why
in status and an event, count a metric, and keep the token out of every message."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from elastic_operator.api.kernelreclaim import KernelReclaimPolicyStatus
from elastic_operator.reclaim.handlers import check_policy, previous_status
from elastic_operator.reclaim.kube import KubeError
from elastic_operator.reclaim.metrics import ReclaimMetrics

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeKube:
    """Records writes; the Secret is missing; anything else a check must not reach fails."""

    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        raise KubeError(f"reading Secret {namespace}/{name}", 404)

    async def patch_policy_status(self, namespace: str, name: str, status: dict) -> None:
        self.statuses.append(status)

    async def post_event(self, regarding: dict, *, reason: str, message: str,
                         warning: bool = False, now: datetime) -> None:
        self.events.append((reason, message))


def body(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "p", "generation": 2},
            "spec": {"jupyter": {"url": "http://j:8888", "tokenSecretRef": {"name": "tok"}},
                     **spec}}


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


async def test_missing_token_secret_decides_nothing() -> None:
    kube = FakeKube()
    registry = CollectorRegistry()
    interval, status = await check_policy(
        kube, ReclaimMetrics(registry), body(checkEvery="30s"), KernelReclaimPolicyStatus(), NOW,
        [],
    )
    assert interval == 30
    (written,) = kube.statuses
    assert ready(written)["status"] == "False"
    assert ready(written)["reason"] == "TokenUnavailable"
    assert "Secret ns/tok: HTTP 404" in ready(written)["message"]
    assert kube.events == [("CheckTokenUnavailable", ready(written)["message"])]
    assert written["observedGeneration"] == 2 and status.reclaimed == 0
    assert registry.get_sample_value(
        "elastic_operator_reclaim_check_failures_total",
        {"namespace": "ns", "policy": "p", "reason": "TokenUnavailable"},
    ) == 1

    # The same failure again: status is rewritten, but no second event.
    await check_policy(kube, ReclaimMetrics(CollectorRegistry()), body(), status, NOW, [])
    assert len(kube.events) == 1 and len(kube.statuses) == 2


async def test_invalid_spec_names_the_field() -> None:
    kube = FakeKube()
    interval, _ = await check_policy(
        kube, ReclaimMetrics(CollectorRegistry()), body(idleAfter="ten minutes"),
        KernelReclaimPolicyStatus(), NOW, [],
    )
    assert interval == 60
    condition = ready(kube.statuses[0])
    assert condition["reason"] == "Invalid"
    assert condition["message"].startswith("spec.idleAfter:")
    assert '"30m"' in condition["message"]


async def test_counters_survive_a_lagging_body() -> None:
    """The daemon passes what it wrote last; a body without status does not reset counters."""
    kube = FakeKube()
    earlier = KernelReclaimPolicyStatus(reclaimed=4, gpusReclaimed=8)
    _, status = await check_policy(kube, ReclaimMetrics(CollectorRegistry()), body(), earlier,
                                   NOW, [])
    assert (status.reclaimed, status.gpusReclaimed) == (4, 8)
    assert kube.statuses[-1]["reclaimed"] == 4
    assert previous_status({"status": {"reclaimed": "many"}}) == KernelReclaimPolicyStatus()


async def test_a_gpu_window_shorter_than_ten_samples_is_invalid() -> None:
    kube = FakeKube()
    await check_policy(
        kube, ReclaimMetrics(CollectorRegistry()),
        body(gpuIdle={"prometheusUrl": "http://p:9090", "window": "2m"}),
        KernelReclaimPolicyStatus(), NOW, [],
    )
    condition = ready(kube.statuses[0])
    assert condition["reason"] == "Invalid"
    assert condition["message"].startswith("spec.gpuIdle:")
    assert "window: '2m' is shorter than 10 samples of sampleInterval '30s'" in (
        condition["message"])
    assert "at least 300s" in condition["message"]
