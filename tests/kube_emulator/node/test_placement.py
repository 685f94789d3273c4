"""The embedded scheduler's placement rules, table-driven and property-based."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kube_emulator.node.placement import (
    NodeView,
    node_usage,
    parse_quantity,
    place,
    pod_requests,
    scheduling_order,
    tolerates,
)

GPU = "nvidia.com/gpu"


def pod(gpus: int = 1, *, name: str = "p", node: str | None = None, phase: str | None = None,
        selector: dict[str, str] | None = None, tolerations: list[dict[str, Any]] | None = None,
        priority: int | None = None, created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": {"limits": {GPU: gpus}}}]}
    if node:
        spec["nodeName"] = node
    if selector:
        spec["nodeSelector"] = selector
    if tolerations:
        spec["tolerations"] = tolerations
    if priority is not None:
        spec["priority"] = priority
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": "default",
                                        "creationTimestamp": created}, "spec": spec}
    if phase:
        obj["status"] = {"phase": phase}
    return obj


def nv(name: str, gpus: float, **kw: Any) -> NodeView:
    return NodeView(name=name, allocatable={GPU: gpus}, **kw)


@pytest.mark.parametrize(("value", "expected"), [
    (2, 2.0), ("3", 3.0), ("500m", 0.5), ("1Gi", 2**30), ("2k", 2000.0), (1.5, 1.5),
])
def test_parse_quantity(value: Any, expected: float) -> None:
    assert parse_quantity(value) == expected


def test_parse_quantity_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="'lots'"):
        parse_quantity("lots")


def test_requests_count_limits_and_init_containers() -> None:
    p = pod(2)
    p["spec"]["containers"].append({"name": "d", "resources": {"requests": {GPU: "1"}}})
    p["spec"]["initContainers"] = [{"name": "i", "resources": {"limits": {GPU: 5}}}]
    assert pod_requests(p, [GPU]) == {GPU: 5.0}
    p["spec"]["initContainers"][0]["resources"]["limits"][GPU] = 1
    assert pod_requests(p, [GPU]) == {GPU: 3.0}


@pytest.mark.parametrize(("nodes", "used", "want", "node", "message"), [
    ([nv("a", 1)], {}, 1, "a", ""),
    ([nv("a", 1)], {"a": {GPU: 1}}, 1, None,
     "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."),
    ([nv("a", 0), nv("b", 0)], {}, 1, None,
     "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."),
    ([nv("a", 8, unschedulable=True), nv("b", 0)], {}, 1, None,
     "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) were unschedulable."),
    ([nv("a", 8, ready=False)], {}, 1, None, "0/1 nodes are available: 1 node(s) were not ready."),
    ([], {}, 1, None, "0/0 nodes are available: no nodes available to schedule pods."),
    # A pod without GPU requests fits anywhere schedulable, even a GPU-less node.
    ([nv("a", 0)], {}, 0, "a", ""),
    # Bin-packing: the node left with fewer free GPUs wins.
    ([nv("a", 4), nv("b", 2)], {}, 1, "b", ""),
    ([nv("a", 4), nv("b", 2)], {"b": {GPU: 2}}, 1, "a", ""),
    # Ties go by name.
    ([nv("b", 2), nv("a", 2)], {}, 2, "a", ""),
])
def test_place_table(nodes: list[NodeView], used: dict[str, dict[str, float]], want: int,
                     node: str | None, message: str) -> None:
    result = place(pod(want), nodes, used)
    assert (result.node, result.message) == (node, message)


def test_taints_and_tolerations() -> None:
    taint = {"key": "gpu", "value": "a100", "effect": "NoSchedule"}
    tainted = nv("a", 1, taints=(taint,))
    rejected = place(pod(1), [tainted], {})
    assert rejected.node is None
    assert "untolerated taint {gpu: a100}" in rejected.message
    ok = place(pod(1, tolerations=[{"key": "gpu", "operator": "Exists"}]), [tainted], {})
    assert ok.node == "a"
    soft = nv("a", 1, taints=({"key": "x", "effect": "PreferNoSchedule"},))
    assert place(pod(1), [soft], {}).node == "a"


@pytest.mark.parametrize(("toleration", "expected"), [
    ({"operator": "Exists"}, True),
    ({"key": "k", "operator": "Equal", "value": "v"}, True),
    ({"key": "k", "value": "w"}, False),
    ({"key": "k", "operator": "Exists", "effect": "NoExecute"}, False),
    ({"key": "other", "operator": "Exists"}, False),
    ({"operator": "Equal"}, False),
])
def test_tolerates(toleration: dict[str, str], expected: bool) -> None:
    assert tolerates([toleration], {"key": "k", "value": "v", "effect": "NoSchedule"}) is expected


def test_node_selector() -> None:
    nodes = [nv("a", 1, labels={"pool": "x"}), nv("b", 1, labels={"pool": "y"})]
    assert place(pod(1, selector={"pool": "y"}), nodes, {}).node == "b"
    miss = place(pod(1, selector={"pool": "z"}), nodes, {})
    assert miss.message == ("0/2 nodes are available: 2 node(s) didn't match Pod's node "
                            "affinity/selector.")


def test_node_view_from_node_object() -> None:
    node = {"metadata": {"name": "n", "labels": {"a": "b"}},
            "spec": {"unschedulable": True, "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {"allocatable": {GPU: "4"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}
    view = NodeView.from_node(node, [GPU])
    assert view == NodeView("n", {GPU: 4.0}, {"a": "b"}, ({"key": "k", "effect": "NoSchedule"},),
                            True, True)
    node["status"]["conditions"][0]["status"] = "False"
    assert not NodeView.from_node(node, [GPU]).ready


def test_usage_skips_unbound_and_finished_pods() -> None:
    pods = [pod(1, node="a"), pod(2, node="a", phase="Running"), pod(4, node="a",
                                                                      phase="Succeeded"),
            pod(3, node="b", phase="Failed"), pod(5)]
    assert node_usage(pods, [GPU]) == {"a": {GPU: 3.0}}


def test_scheduling_order_priority_then_age() -> None:
    pods = [pod(name="young", created="2026-01-02T00:00:00Z"),
            pod(name="old", created="2026-01-01T00:00:00Z"),
            pod(name="vip", priority=10, created="2026-01-03T00:00:00Z")]
    assert [p["metadata"]["name"] for p in scheduling_order(pods)] == ["vip", "old", "young"]


@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), min_size=0, max_size=6),
       st.integers(0, 4))
def test_place_never_overcommits(spec: list[tuple[int, int]], want: int) -> None:
    """Whatever the cluster, a chosen node has room for the pod; no node is refused that had
    room (a schedulable, untainted node with enough free GPUs always yields a placement)."""
    nodes = [nv(f"n{i}", alloc) for i, (alloc, _) in enumerate(spec)]
    used = {f"n{i}": {GPU: float(min(u, alloc))} for i, (alloc, u) in enumerate(spec)}
    result = place(pod(want), nodes, used)
    room = [n.name for n in nodes if n.allocatable[GPU] - used[n.name][GPU] >= want]
    if result.node is None:
        assert room == []
    else:
        assert result.node in room
