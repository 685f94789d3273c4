"""The autoscaler's loop logic without kopf: caches fed by events, decisions, and its writes
to the emulated API server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from prometheus_client import CollectorRegistry

from elastic_operator.autoscaler.handlers import Autoscaler, AutoscalerMetrics, AutoscalerSettings
from elastic_operator.autoscaler.policy import Decision
from elastic_operator.kube_client import Kube
from tests.autoscaler.objects import GPU, node, pod
from tests.harness import Api, Cluster, events_for, jobs_path

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


REGISTRY = CollectorRegistry()
METRICS = AutoscalerMetrics(REGISTRY)  # one set: a registry refuses duplicate names


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
async def kube(apiserver: Cluster) -> AsyncIterator[Kube]:
    async with await Kube.login(apiserver.tester_kubeconfig) as client:
        yield client


def served_job(api: Api, namespace: str) -> dict[str, Any]:
    """:func:`job` as the API server stores it in ``namespace`` (real uid, resourceVersion)."""
    body = job()
    body["metadata"] = {"name": "train"}
    return api.create(jobs_path(namespace), body)


def scaler_in(namespace: str) -> Autoscaler:
    a = Autoscaler(AutoscalerSettings(preempt_after_s=0), METRICS)
    a.on_node("ADDED", node("n1", 8))
    a.on_pod(None, pod("other", 2, node_name="n1", namespace=namespace))
    a.on_pod(None, pod("train-worker-0", 1, node_name="n1", job="train", index=0,
                       namespace=namespace))
    return a


@pytest.fixture
def scaler() -> Autoscaler:
    return scaler_in("default")


async def test_decides_from_events_and_writes_the_scale_subresource(
    api: Api, namespace: str, kube: Kube,
) -> None:
    scaler = scaler_in(namespace)
    served = served_job(api, namespace)
    scaler.on_job(None, served)
    key = f"{namespace}/train"
    decision = scaler.decide(NOW)
    assert decision.targets[key].replicas == 6
    assert sample("elastic_autoscaler_free_gpus") == 5
    ups = sample("elastic_autoscaler_scale_ups_total")

    assert await scaler.apply(kube, key, decision.targets[key])
    stored = api.get(jobs_path(namespace, "train"))
    assert stored["spec"]["replicas"] == 6
    (event,) = events_for(api, namespace, "train")
    assert event["reason"] == "AutoscaleUp" and "5 GPUs free on n1" in event["message"]
    assert event["involvedObject"]["uid"] == served["metadata"]["uid"]
    assert scaler.jobs[key]["spec"]["replicas"] == 6
    assert scaler.jobs[key]["metadata"]["resourceVersion"] == (
        stored["metadata"]["resourceVersion"])
    assert sample("elastic_autoscaler_scale_ups_total") == ups + 1
    assert scaler.decide(NOW + 1).targets == {}  # what was written is what it decides from


async def test_a_conflict_or_a_deleted_job_is_not_an_error_and_posts_nothing(
    api: Api, namespace: str, kube: Kube,
) -> None:
    scaler = scaler_in(namespace)
    key = f"{namespace}/train"
    scaler.on_job(None, served_job(api, namespace))
    target = scaler.decide(NOW).targets[key]
    api.patch(jobs_path(namespace, "train"), {"metadata": {"labels": {"edited": "yes"}}})
    assert not await scaler.apply(kube, key, target)  # 409: our resourceVersion is stale
    api.delete(jobs_path(namespace, "train"))
    scaler.on_job(None, served_job(api, namespace))
    api.delete(jobs_path(namespace, "train"))
    assert not await scaler.apply(kube, key, target)  # 404
    assert events_for(api, namespace, "train") == []
    assert scaler.jobs[key]["spec"]["replicas"] == 1


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


async def test_a_window_end_is_decided_at_once_and_a_change_after_the_debounce() -> None:
    """The loop's wake-ups: a growth window's end (``wake_at``) is decided then, with no
    debounce (nothing to coalesce: it added 0.3 s to every grow); a change is decided after
    the debounce, so a burst of events costs one decision."""
    decided: list[float] = []

    class Recording(Autoscaler):
        def decide(self, now: float) -> Decision:
            decided.append(time.monotonic())
            wake = time.time() + 0.1 if len(decided) == 1 else None
            return dataclasses.replace(super().decide(now), wake_at=wake)

    loop = Recording(AutoscalerSettings(interval_s=60, debounce_s=3.0), METRICS)
    started = time.monotonic()
    task = asyncio.create_task(loop.run_forever(kopf.Memo()))
    try:
        loop.on_node("ADDED", node("n1", 8))  # a change: decided after the debounce
        while len(decided) < 2:
            await asyncio.sleep(0.01)
        assert decided[0] - started >= 3.0
        # The window's end 0.1 s later: decided then, not a debounce (3 s) after it.
        assert decided[1] - decided[0] < 2.0
        await asyncio.sleep(0.5)
        assert len(decided) == 2  # nothing else to decide before the 60 s period
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
