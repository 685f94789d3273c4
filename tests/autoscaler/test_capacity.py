"""Free GPUs per node: node eligibility, pod accounting, and the event-fed cache."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elastic_operator.autoscaler.capacity import (
    CapacityCache,
    CapacitySnapshot,
    NodeInfo,
    PodInfo,
    compute_snapshot,
    node_admits,
)
from tests.autoscaler.objects import node, pod


def test_node_admits_checks_readiness_cordon_taints_selector_and_affinity() -> None:
    plain = NodeInfo.from_object(node("n1", node_labels={"pool": "a100", "gen": "3"}))
    assert node_admits(plain, {})
    assert not node_admits(NodeInfo.from_object(node("n", ready=False)), {})
    assert not node_admits(NodeInfo.from_object(node("n", unschedulable=True)), {})

    tainted = NodeInfo.from_object(node("n", taints=[{"key": "gpu", "effect": "NoSchedule"}]))
    assert not node_admits(tainted, {})
    assert node_admits(tainted, {"tolerations": [{"key": "gpu", "operator": "Exists"}]})
    soft = NodeInfo.from_object(node("n", taints=[{"key": "g", "effect": "PreferNoSchedule"}]))
    assert node_admits(soft, {})

    assert node_admits(plain, {"nodeSelector": {"pool": "a100"}})
    assert not node_admits(plain, {"nodeSelector": {"pool": "h100"}})

    def affinity(*terms: list[dict[str, Any]]) -> dict[str, Any]:
        return {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": t} for t in terms]}}}}

    assert node_admits(plain, affinity([{"key": "pool", "operator": "In", "values": ["a100"]}]))
    assert not node_admits(plain, affinity([{"key": "pool", "operator": "NotIn",
                                              "values": ["a100"]}]))
    assert node_admits(plain, affinity([{"key": "gen", "operator": "Gt", "values": ["2"]},
                                        {"key": "zone", "operator": "DoesNotExist"}]))
    assert not node_admits(plain, affinity([{"key": "gen", "operator": "Lt", "values": ["2"]}]))
    # Terms are ORed.
    assert node_admits(plain, affinity([{"key": "x", "operator": "Exists"}],
                                       [{"key": "pool", "operator": "Exists"}]))


def test_pod_info_reads_binding_phase_job_and_unschedulable_time() -> None:
    info = PodInfo.from_object(pod("w-0", 2, job="train", index=0,
                                   unschedulable_since="2026-01-01T00:01:00Z", phase="Pending"))
    assert info.job == "default/train" and info.gpus == 2 and info.pending
    assert info.unschedulable_since == pytest.approx(1767225660.0)
    assert not info.holds_gpus
    bound = PodInfo.from_object(pod("w-1", 2, node_name="n1"))
    assert bound.holds_gpus and not bound.pending and bound.job is None
    done = PodInfo.from_object(pod("w-2", 2, node_name="n1", phase="Succeeded"))
    assert not done.holds_gpus


def test_snapshot_counts_bound_unfinished_pods_and_terminating_ones_as_releasing() -> None:
    nodes = [node("n1", 8), node("n2", 4), node("n3", 8, unschedulable=True), node("cpu", 0)]
    pods = [
        pod("a", 2, node_name="n1"),
        pod("b", 1, node_name="n1", deleting=True),
        pod("c", 3, node_name="n1", phase="Succeeded"),
        pod("d", 4, node_name="n2"),
        pod("e", 4),  # pending: holds nothing yet
    ]
    snap = compute_snapshot(nodes, pods)
    assert dict(snap.free) == {"n1": 5, "n2": 0}
    assert dict(snap.releasing) == {"n1": 1, "n2": 0}
    assert snap.total_free == 5


def test_overcommitted_node_offers_nothing_and_releases_only_what_brings_it_below_size() -> None:
    snap = compute_snapshot([node("n1", 4)], [pod("a", 4, node_name="n1"),
                                              pod("b", 2, node_name="n1", deleting=True)])
    assert snap.free["n1"] == 0 and snap.releasing["n1"] == 0


def test_cache_follows_events_without_relisting() -> None:
    cache = CapacityCache()
    cache.apply_node("ADDED", node("n1", 8))
    cache.apply_pod("ADDED", pod("other", 2))
    assert cache.snapshot().free == {"n1": 8}
    cache.apply_pod("MODIFIED", pod("other", 2, node_name="n1"))
    assert cache.snapshot().free == {"n1": 6}
    cache.apply_pod("MODIFIED", pod("other", 2, node_name="n1", deleting=True))
    assert cache.snapshot().free == {"n1": 6} and cache.snapshot().releasing == {"n1": 2}
    cache.apply_pod("DELETED", pod("other", 2, node_name="n1", deleting=True))
    assert cache.snapshot().free == {"n1": 8}
    cache.apply_node("MODIFIED", node("n1", 8, ready=False))
    assert cache.snapshot().free == {}
    cache.apply_node("DELETED", node("n1", 8))
    assert cache.nodes == {}


def test_cache_ignores_cpu_pods_that_are_not_workers() -> None:
    cache = CapacityCache()
    cache.apply_pod("ADDED", pod("web", 0, node_name="n1"))
    cache.apply_pod("ADDED", pod("w", 0, job="cpu-job"))
    assert list(cache.pods) == ["default/w"]


_events = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(0, 4),
        st.sampled_from([None, "n1", "n2"]),
        st.sampled_from(["Pending", "Running", "Succeeded", "Failed"]),
        st.booleans(),
        st.booleans(),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(_events, st.integers(0, 8), st.integers(0, 8))
def test_cache_agrees_with_a_full_listing_after_any_event_sequence(
        events: list[tuple[str, int, str | None, str, bool, bool]], g1: int, g2: int) -> None:
    cache = CapacityCache()
    nodes = [node("n1", g1), node("n2", g2)]
    for n in nodes:
        cache.apply_node("ADDED", n)
    live: dict[str, dict[str, Any]] = {}
    for name, gpus, where, phase, deleting, delete in events:
        obj = pod(name, gpus, node_name=where, phase=phase, deleting=deleting)
        if delete and name in live:
            cache.apply_pod("DELETED", live.pop(name))
            continue
        cache.apply_pod("MODIFIED" if name in live else "ADDED", obj)
        live[name] = obj
    expected = compute_snapshot(nodes, live.values())
    got = cache.snapshot()
    assert got.free == expected.free and got.releasing == expected.releasing


def floor_of(cache: CapacityCache) -> CapacitySnapshot:
    """What a decision gets as the floor (and the start of a new period)."""
    return cache.snapshot().lowered(cache.take_floor())


def test_floor_remembers_gpus_taken_and_freed_again_between_decisions() -> None:
    cache = CapacityCache()
    cache.apply_node("ADDED", node("n1", 8))
    cache.apply_node("ADDED", node("n2", 4))
    assert floor_of(cache).free == {"n1": 8, "n2": 4}  # the first call: no history yet
    cache.apply_pod("ADDED", pod("flap", 2))
    cache.apply_pod("MODIFIED", pod("flap", 2, node_name="n1"))
    cache.apply_pod("DELETED", pod("flap", 2, node_name="n1"))
    floor = floor_of(cache)
    assert cache.snapshot().free == {"n1": 8, "n2": 4}
    assert floor.free == {"n1": 6, "n2": 4} and floor.releasing == {"n1": 0, "n2": 0}
    # A new period starts from the state at the previous call.
    assert floor_of(cache).free == {"n1": 8, "n2": 4}


def test_floor_counts_a_node_that_was_cordoned_or_gone_meanwhile_as_offering_nothing() -> None:
    cache = CapacityCache()
    cache.apply_node("ADDED", node("n1", 8))
    assert floor_of(cache).free == {"n1": 8}
    cache.apply_node("MODIFIED", node("n1", 8, unschedulable=True))
    cache.apply_node("MODIFIED", node("n1", 8))
    assert floor_of(cache).free == {"n1": 0}
    cache.apply_node("DELETED", node("n1", 8))
    cache.apply_node("ADDED", node("n1", 8))
    assert floor_of(cache).free == {"n1": 0}
    assert floor_of(cache).free == {"n1": 8}


def test_floor_keeps_what_terminating_pods_release_apart_from_what_is_free() -> None:
    cache = CapacityCache()
    cache.apply_node("ADDED", node("n1", 8))
    cache.apply_pod("ADDED", pod("a", 3, node_name="n1"))
    cache.take_floor()
    cache.apply_pod("MODIFIED", pod("a", 3, node_name="n1", deleting=True))
    floor = floor_of(cache)  # it was not terminating at the previous call
    assert (floor.free, floor.releasing) == ({"n1": 5}, {"n1": 0})
    floor = floor_of(cache)
    assert (floor.free, floor.releasing) == ({"n1": 5}, {"n1": 3})


@settings(max_examples=150, deadline=None)
@given(_events, st.integers(0, 8), st.integers(0, 8), st.integers(0, 30))
def test_floor_is_the_least_offer_of_every_state_since_the_previous_call(
        events: list[tuple[str, int, str | None, str, bool, bool]], g1: int, g2: int,
        cut: int) -> None:
    cache = CapacityCache()
    nodes = [node("n1", g1), node("n2", g2)]
    for n in nodes:
        cache.apply_node("ADDED", n)
    cache.take_floor()
    live: dict[str, dict[str, Any]] = {}
    states = [cache.snapshot()]
    for step, (name, gpus, where, phase, deleting, delete) in enumerate(events):
        if step == cut:
            cache.take_floor()
            states = [cache.snapshot()]
        if delete and name in live:
            cache.apply_pod("DELETED", live.pop(name))
        else:
            obj = pod(name, gpus, node_name=where, phase=phase, deleting=deleting)
            cache.apply_pod("MODIFIED" if name in live else "ADDED", obj)
            live[name] = obj
        states.append(compute_snapshot(nodes, live.values()))
    now = cache.snapshot()
    floor = now.lowered(cache.take_floor())
    states.append(now)
    for n in now.free:
        assert floor.free[n] <= now.free[n]
        assert floor.free[n] + floor.releasing[n] == min(
            s.free[n] + s.releasing[n] for s in states)
