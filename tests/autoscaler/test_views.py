"""Reading jobs and pods into the policy's inputs, and the autoscaler's settings."""

from __future__ import annotations

from typing import Any

import pytest

from elastic_operator import labels
from elastic_operator.autoscaler.capacity import PodInfo, compute_snapshot
from elastic_operator.autoscaler.handlers import AutoscalerSettings
from elastic_operator.autoscaler.views import (
    job_state,
    job_view,
    live_workers,
    protected_demands,
    worker_of,
)
from tests.autoscaler.objects import GPU, node, pod

SNAPSHOT = compute_snapshot([node("n1", 8, node_labels={"pool": "a"}), node("n2", 8)], [])


def job(name: str = "train", gpus: str = "2", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "minReplicas": 1, "maxReplicas": 4, "replicas": 3, "priority": 2,
        "autoscale": {"enabled": True, "stabilizationWindowSeconds": 30,
                      "unschedulableTimeoutSeconds": 90},
        "template": {"spec": {"nodeSelector": {"pool": "a"}, "containers": [
            {"name": "w", "resources": {"limits": {GPU: gpus}}}]}},
    }
    body.update(spec)
    return {"metadata": {"name": name, "namespace": "ns",
                         "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": body}


def workers(*specs: dict[str, Any]) -> list[PodInfo]:
    return [PodInfo.from_object(s) for s in specs]


def test_job_state_reads_spec_workers_and_eligible_nodes() -> None:
    pods = workers(
        pod("train-worker-0", 2, node_name="n1", job="train", index=0),
        pod("train-worker-1", 2, job="train", index=1, phase="Pending",
            unschedulable_since="2026-01-01T00:01:00Z"),
        pod("train-worker-2", 2, node_name="n1", job="train", index=2, deleting=True),
        pod("train-worker-3", 2, node_name="n1", job="train", index=3, phase="Failed"),
    )
    view = job_view(job())
    assert view is not None
    state = job_state(view, live_workers(map(worker_of, pods)), SNAPSHOT)
    assert (state.key, state.min_replicas, state.max_replicas, state.replicas) == \
        ("ns/train", 1, 4, 3)
    assert (state.gpus_per_worker, state.priority, state.window_s,
            state.unschedulable_timeout_s) == (2, 2, 30.0, 90.0)
    assert state.eligible == frozenset({"n1"})
    assert [(w.index, w.node) for w in state.workers] == [(0, "n1"), (1, None)]
    assert state.workers[1].unschedulable_since is not None
    assert state.managed


@pytest.mark.parametrize("spec", [{"replicas": None}, {"replicas": 9}])
def test_replicas_are_clamped_like_the_operator_does(spec: dict[str, Any]) -> None:
    view = job_view(job(**spec))
    assert view is not None
    assert job_state(view, (), SNAPSHOT).replicas == (1 if spec["replicas"] is None else 4)


def test_invalid_or_finished_jobs_are_skipped() -> None:
    assert job_view(job(minReplicas=0)) is None
    assert job_view(job(gpus="half")) is None
    done = job() | {"status": {"phase": "Succeeded"}}
    assert job_view(done) is None


def test_autoscale_off_by_default_means_unmanaged() -> None:
    body = job()
    del body["spec"]["autoscale"]
    view = job_view(body)
    assert view is not None and not job_state(view, (), SNAPSHOT).managed


def test_protected_demand_by_label_or_priority_class_value() -> None:
    pods = workers(
        pod("labelled", 1, phase="Pending", pod_labels={labels.PROTECTED: "true"}),
        pod("critical", 2, phase="Pending", priority=2_000_000),
        pod("ordinary", 1, phase="Pending", priority=10),
        pod("bound", 1, node_name="n1", pod_labels={labels.PROTECTED: "true"}),
        pod("worker", 1, phase="Pending", job="x", pod_labels={labels.PROTECTED: "true"}),
        pod("cpu", 0, phase="Pending", pod_labels={labels.PROTECTED: "true"}),
    )
    got = protected_demands(pods, SNAPSHOT, 1_000_000)
    assert sorted(d.key for d in got) == ["default/critical", "default/labelled"]
    assert [d.key for d in protected_demands(pods, SNAPSHOT, None)] == ["default/labelled"]


def test_settings_from_environment() -> None:
    s = AutoscalerSettings.from_env({"ELASTIC_AUTOSCALER_GPU_RESOURCE": "amd.com/gpu",
                                     "ELASTIC_AUTOSCALER_INTERVAL": "2",
                                     "ELASTIC_AUTOSCALER_PREEMPT_AFTER": "0",
                                     "ELASTIC_AUTOSCALER_PROTECTED_PRIORITY": ""})
    assert (s.resource, s.interval_s, s.preempt_after_s, s.protected_priority) == \
        ("amd.com/gpu", 2.0, 0.0, None)
    assert AutoscalerSettings.from_env({}) == AutoscalerSettings()
    with pytest.raises(ValueError, match="ELASTIC_AUTOSCALER_INTERVAL='soon'"):
        AutoscalerSettings.from_env({"ELASTIC_AUTOSCALER_INTERVAL": "soon"})
    with pytest.raises(ValueError, match="negative"):
        AutoscalerSettings.from_env({"ELASTIC_AUTOSCALER_PREEMPT_AFTER": "-1"})
    with pytest.raises(ValueError, match="PROTECTED_PRIORITY"):
        AutoscalerSettings.from_env({"ELASTIC_AUTOSCALER_PROTECTED_PRIORITY": "high"})
