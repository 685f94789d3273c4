"""The autoscaler's per-event bookkeeping is incremental: after any sequence of watch events the
caches equal a rebuild from the final objects, and one event leaves every other pod's entry
alone (issue 13: the cost of an event must not grow with the cluster)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from elastic_operator.autoscaler.capacity import CapacityCache, PodInfo, compute_snapshot
from elastic_operator.autoscaler.handlers import Autoscaler, AutoscalerMetrics, AutoscalerSettings
from tests.autoscaler.objects import GPU, node, pod

NOW = 1767225600.0 + 3600
METRICS = AutoscalerMetrics(CollectorRegistry())


def job(name: str, replicas: int, max_replicas: int = 6) -> dict[str, Any]:
    return {
        "apiVersion": "elastic.dev/v1alpha1", "kind": "ElasticJob",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "1",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"minReplicas": 1, "maxReplicas": max_replicas, "replicas": replicas,
                 "autoscale": {"enabled": True, "stabilizationWindowSeconds": 0},
                 "template": {"spec": {"containers": [
                     {"name": "w", "resources": {"limits": {GPU: "1"}}}]}}},
    }


# (pod name, owning job or None, GPUs, node, phase, terminating, delete instead)
_pod_events = st.lists(
    st.tuples(
        st.sampled_from(["p0", "p1", "p2", "p3", "p4", "p5"]),
        st.sampled_from([None, "j1", "j2"]),
        st.integers(0, 3),
        st.sampled_from([None, "n1", "n2"]),
        st.sampled_from(["Pending", "Running", "Succeeded", "Failed"]),
        st.booleans(),
        st.booleans(),
    ),
    max_size=40,
)
# (job name, replicas, delete instead), interleaved with the pod events by position.
_job_events = st.lists(st.tuples(st.sampled_from(["j1", "j2"]), st.integers(1, 6),
                                 st.booleans()), max_size=10)
# (node name, GPUs, cordoned): a node changed, interleaved by position too.
_node_events = st.lists(st.tuples(st.sampled_from(["n1", "n2"]), st.integers(0, 6),
                                  st.booleans()), max_size=8)


def groups(cache: CapacityCache) -> tuple[dict[str, set[str]], set[str]]:
    return ({j: set(ps) for j, ps in cache.by_job.items()}, set(cache.waiting))


def regrouped(pods: dict[str, PodInfo]) -> tuple[dict[str, set[str]], set[str]]:
    """The groups computed from scratch: what the incremental ones must equal."""
    by_job: dict[str, set[str]] = {}
    for p in pods.values():
        if p.job is not None:
            by_job.setdefault(p.job, set()).add(p.key)
    return by_job, {p.key for p in pods.values() if p.job is None and p.pending and p.gpus > 0}


@settings(max_examples=200, deadline=None)
@given(_pod_events, _job_events, _node_events, st.integers(0, 6), st.integers(0, 6))
def test_incremental_caches_and_decision_equal_a_rebuild_from_the_final_objects(
        pod_events: list[tuple[str, str | None, int, str | None, str, bool, bool]],
        job_events: list[tuple[str, int, bool]], node_events: list[tuple[str, int, bool]],
        g1: int, g2: int) -> None:
    fed = Autoscaler(AutoscalerSettings(preempt_after_s=0), METRICS)
    live_nodes = {"n1": node("n1", g1), "n2": node("n2", g2)}
    for n in live_nodes.values():
        fed.on_node("ADDED", n)
    live_pods: dict[str, dict[str, Any]] = {}
    live_jobs: dict[str, dict[str, Any]] = {}
    for step, (name, owner, gpus, where, phase, deleting, delete) in enumerate(pod_events):
        if step == len(pod_events) // 2:
            fed.decide(NOW)  # fills the per-job caches that the later events must keep true
        if step < len(node_events):
            nname, ngpus, cordoned = node_events[step]
            live_nodes[nname] = node(nname, ngpus, unschedulable=cordoned)
            fed.on_node("MODIFIED", live_nodes[nname])
        if step < len(job_events):
            jname, replicas, jdelete = job_events[step]
            if jdelete and jname in live_jobs:
                fed.on_job("DELETED", live_jobs.pop(jname))
            else:
                live_jobs[jname] = job(jname, replicas)
                fed.on_job("MODIFIED", live_jobs[jname])
        if delete and name in live_pods:
            fed.on_pod("DELETED", live_pods.pop(name))
            continue
        obj = pod(name, gpus, node_name=where, phase=phase, deleting=deleting, job=owner,
                  index=int(name[1:]), pod_labels={"elastic.dev/protected": "true"})
        fed.on_pod("MODIFIED" if name in live_pods else "ADDED", obj)
        live_pods[name] = obj

    assert groups(fed.capacity) == regrouped(fed.capacity.pods)
    rebuilt = Autoscaler(AutoscalerSettings(preempt_after_s=0), METRICS)
    nodes = list(live_nodes.values())
    for n in nodes:
        rebuilt.on_node(None, n)
    for obj in live_pods.values():
        rebuilt.on_pod(None, obj)
    for obj in live_jobs.values():
        rebuilt.on_job(None, obj)
    assert fed.capacity.pods == rebuilt.capacity.pods
    assert groups(fed.capacity) == groups(rebuilt.capacity)
    assert fed.views == rebuilt.views
    expected = compute_snapshot(nodes, live_pods.values())
    assert fed.capacity.snapshot().free == expected.free
    fed.capacity.take_floor()  # no floor and no memory on either side: compare decisions
    fed.memory = {}
    got, want = fed.decide(NOW), rebuilt.decide(NOW)
    assert got.targets == want.targets
    assert got.allocation == want.allocation
    assert fed.states == rebuilt.states  # each job's cached policy input, eligible nodes too


def test_one_pod_event_leaves_every_other_entry_untouched() -> None:
    cache = CapacityCache()
    for n in range(20):
        cache.apply_node("ADDED", node(f"n{n}", 8))
    for i in range(200):
        owner = f"j{i % 10}" if i % 4 else None
        cache.apply_pod("ADDED", pod(f"p{i}", 1, node_name=f"n{i % 20}" if i % 7 else None,
                                     job=owner, index=i, phase="Running" if i % 7 else "Pending"))
    before = {k: id(v) for k, v in cache.pods.items()}
    groups_before = {j: dict(ps) for j, ps in cache.by_job.items()}
    waiting_before = dict(cache.waiting)

    cache.apply_pod("MODIFIED", pod("p5", 1, node_name="n3", job="j5", index=5))

    assert {k: id(v) for k, v in cache.pods.items() if k != "default/p5"} == \
        {k: i for k, i in before.items() if k != "default/p5"}
    for j, ps in cache.by_job.items():
        if j != "default/j5":
            assert ps == groups_before[j] and all(ps[k] is groups_before[j][k] for k in ps)
    assert cache.waiting == waiting_before
    assert cache.by_job["default/j5"]["default/p5"].node == "n3"
