"""The autoscaler's loop logic without kopf: caches fed by events, decisions, writes."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from elastic_operator import k8s
from elastic_operator.api.kube import Event
from elastic_operator.autoscaler.handlers import Autoscaler, AutoscalerMetrics, AutoscalerSettings
from tests.autoscaler.objects import GPU, node, pod

NOW = 1767225600.0 + 3600  # an hour after the objects' creationTimestamp


def job(name: str = "train", *, enabled: bool = True, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "elastic.dev/v1alpha1", "kind": "ElasticJob",
        "metadata": {"name": name, "namespace": "default", "uid": "u1", "resourceVersion": "7",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"minReplicas": 1, "maxReplicas": 8, "replicas": replicas,
                 "autoscale": {"enabled": enabled, "stabilizationWindowSeconds": 0},
                 "template": {"spec": {"containers": [
                     {"name": "w", "resources": {"limits": {GPU: "1"}}}]}}},
    }


class FakeApi:
    """Records scale writes; answers with ``fail`` when set."""

    def __init__(self, fail: int | None = None) -> None:
        self.fail = fail
        self.writes: list[tuple[str, dict[str, Any]]] = []

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append((path, body))
        if self.fail:
            raise k8s.ApiError(self.fail, {"reason": "Conflict"}, "PATCH", path)
        return {"metadata": {"resourceVersion": "8"}, "spec": body["spec"]}


REGISTRY = CollectorRegistry()
METRICS = AutoscalerMetrics(REGISTRY)  # one set: a registry refuses duplicate names


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
def scaler() -> Autoscaler:
    a = Autoscaler(AutoscalerSettings(preempt_after_s=0), METRICS)
    a.on_node("ADDED", node("n1", 8))
    a.on_pod(None, pod("other", 2, node_name="n1"))
    a.on_pod(None, pod("train-worker-0", 1, node_name="n1", job="train", index=0))
    return a


async def test_decides_from_events_and_writes_the_scale_subresource(scaler: Autoscaler) -> None:
    scaler.on_job(None, job())
    decision = scaler.decide(NOW)
    assert decision.targets["default/train"].replicas == 6
    assert sample("elastic_autoscaler_free_gpus") == 5
    ups = sample("elastic_autoscaler_scale_ups_total")

    api, events = FakeApi(), []

    async def post(body: dict[str, Any], event: Event) -> None:
        events.append((body["metadata"]["name"], event))

    assert await scaler.apply(api, post, "default/train", decision.targets["default/train"])
    path, body = api.writes[0]
    assert path == "/apis/elastic.dev/v1alpha1/namespaces/default/elasticjobs/train/scale"
    assert body == {"metadata": {"resourceVersion": "7"}, "spec": {"replicas": 6}}
    assert events[0][0] == "train" and events[0][1].reason == "AutoscaleUp"
    assert "5 GPUs free on n1" in events[0][1].message
    assert scaler.jobs["default/train"]["spec"]["replicas"] == 6
    assert scaler.jobs["default/train"]["metadata"]["resourceVersion"] == "8"
    assert sample("elastic_autoscaler_scale_ups_total") == ups + 1
    assert scaler.decide(NOW + 1).targets == {}  # what was written is what it decides from


async def test_a_conflict_is_not_an_error_and_posts_nothing(scaler: Autoscaler) -> None:
    scaler.on_job(None, job())
    target = scaler.decide(NOW).targets["default/train"]
    events: list[Event] = []

    async def post(body: dict[str, Any], event: Event) -> None:
        events.append(event)

    assert not await scaler.apply(FakeApi(fail=409), post, "default/train", target)
    assert events == [] and scaler.jobs["default/train"]["spec"]["replicas"] == 1
    with pytest.raises(k8s.ApiError):
        await scaler.apply(FakeApi(fail=500), post, "default/train", target)


def test_disabled_jobs_get_no_target_and_deleted_ones_are_forgotten(scaler: Autoscaler) -> None:
    scaler.on_job(None, job(enabled=False))
    assert scaler.decide(NOW).targets == {}
    scaler.on_job("DELETED", job())
    assert scaler.jobs == {} and scaler.memory == {}


def test_deleted_pods_free_their_gpus(scaler: Autoscaler) -> None:
    scaler.on_job(None, job())
    scaler.on_pod("DELETED", pod("other", 2, node_name="n1"))
    assert scaler.decide(NOW).targets["default/train"].replicas == 8


def test_gpus_taken_and_freed_between_decisions_hold_growth_back() -> None:
    """Decisions that each see the GPUs free must not grow the job when the events show the
    GPUs were taken in between (what a debounced loop and a fast-flapping pod can line up)."""
    scaler = Autoscaler(AutoscalerSettings(preempt_after_s=0), METRICS)
    scaler.on_node("ADDED", node("n1", 8))
    for i in range(6):
        scaler.on_pod(None, pod(f"train-worker-{i}", 1, node_name="n1", job="train", index=i))
    windowed = job(replicas=6)
    windowed["spec"]["autoscale"]["stabilizationWindowSeconds"] = 6
    scaler.on_job(None, windowed)
    for t in range(20):
        assert scaler.decide(NOW + t).targets == {}, t
        scaler.on_pod("ADDED", pod("flap", 2))
        scaler.on_pod("MODIFIED", pod("flap", 2, node_name="n1"))
        scaler.on_pod("DELETED", pod("flap", 2, node_name="n1"))
    for t in range(20, 28):  # the decision at 20 still sees the last flap
        decision = scaler.decide(NOW + t)
    assert decision.targets["default/train"].replicas == 8
