"""kubectl-like helpers of ``elastic-operator local``: manifests, kinds, tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from elastic_operator.local.kubectl import (
    Kind,
    UsageError,
    age,
    by_api_version,
    load_manifests,
    nodes_table,
    pod_status,
    render_table,
    resolve,
)

KINDS = [
    Kind("", "v1", "pods", "Pod", True, frozenset({"pods", "pod", "po"})),
    Kind("", "v1", "events", "Event", True, frozenset({"events", "event", "ev"})),
    Kind("events.k8s.io", "v1", "events", "Event", True,
         frozenset({"events", "event", "ev", "events.events.k8s.io"})),
    Kind("elastic.dev", "v1alpha1", "elasticjobs", "ElasticJob", True,
         frozenset({"elasticjobs", "elasticjob", "ej", "ej.elastic.dev"})),
]


@pytest.mark.parametrize(("name", "plural", "group"), [
    ("ej", "elasticjobs", "elastic.dev"), ("ElasticJob", "elasticjobs", "elastic.dev"),
    ("po", "pods", ""), ("events", "events", ""), ("events.events.k8s.io", "events",
                                                   "events.k8s.io"),
])
def test_resolve(name: str, plural: str, group: str) -> None:
    kind = resolve(KINDS, name)
    assert (kind.plural, kind.group) == (plural, group)


def test_resolve_unknown_lists_known_kinds() -> None:
    with pytest.raises(UsageError, match=r'resource type "jobs".*ej'):
        resolve(KINDS, "jobs")


def test_by_api_version_points_at_the_crd() -> None:
    assert by_api_version(KINDS, "elastic.dev/v1alpha1", "ElasticJob").plural == "elasticjobs"
    with pytest.raises(UsageError, match="is the CRD installed"):
        by_api_version(KINDS, "elastic.dev/v2", "ElasticJob")


@pytest.mark.parametrize(("text", "match"), [
    ("a: [", "not valid YAML"),
    ("- 1\n", "document 1: expected a mapping"),
    ("apiVersion: v1\nmetadata: {name: x}\n", "document 1: kind is missing"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\n",
     "document 2: metadata.name is missing"),
])
def test_load_manifests_errors_name_the_document(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        load_manifests(text, "f.yaml")


def test_load_manifests_skips_empty_documents() -> None:
    docs = load_manifests("---\napiVersion: v1\nkind: Pod\nmetadata: {name: x}\n---\n", "f")
    assert [d["metadata"]["name"] for d in docs] == ["x"]


@pytest.mark.parametrize(("seconds", "expected"), [
    (5, "5s"), (119, "119s"), (120, "2m"), (7199, "119m"), (7200, "2h"), (86400 * 3, "3d"),
])
def test_age(seconds: int, expected: str) -> None:
    now = datetime(2026, 1, 10, tzinfo=UTC)
    then = datetime.fromtimestamp(now.timestamp() - seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert age(then, now) == expected


def test_age_reads_any_rfc3339_and_says_unknown_for_garbage() -> None:
    now = datetime(2026, 1, 10, tzinfo=UTC)
    assert age("2026-01-09T23:59:50.123456Z", now) == "9s"
    assert age("2026-01-10T00:59:00+01:00", now) == "60s"
    assert age("yesterday", now) == age(None, now) == "<unknown>"


GPU = "nvidia.com/gpu"


def _gpu_pod(node: str | None, phase: str, limits: Any, init: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": {"limits": limits}}]}
    if init is not None:
        spec["initContainers"] = [{"name": "i", "resources": {"limits": init}}]
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": "p"}, "spec": spec, "status": {"phase": phase}}


def test_nodes_table_counts_gpus_as_the_controllers_do() -> None:
    """Init containers take their max, "2000m" is 2, finished and unbound pods hold nothing, a
    quantity that is no whole GPU counts nothing (api/kube.py, as the autoscaler counts)."""
    nodes = [{"metadata": {"name": n, "creationTimestamp": None},
              "status": {"allocatable": {GPU: alloc},
                         "conditions": [{"type": "Ready", "status": "True"}]}}
             for n, alloc in (("a", "8"), ("b", "4000m"), ("c", "half"))]
    pods = [_gpu_pod("a", "Running", {GPU: "2000m"}),
            _gpu_pod("a", "Pending", {GPU: 1}, {GPU: "3"}),
            _gpu_pod("a", "Succeeded", {GPU: 4}), _gpu_pod(None, "Pending", {GPU: 4}),
            _gpu_pod("b", "Running", {GPU: "1.5"}), _gpu_pod("b", "Running", {GPU: "1"})]
    header, rows = nodes_table(nodes, pods, GPU)
    assert header[2] == "GPUS(USED/ALLOC)"
    assert [(r[0], r[2]) for r in rows] == [("a", "5/8"), ("b", "1/4"), ("c", "0/?")]


def test_render_table_aligns_columns() -> None:
    assert render_table(["NAME", "READY"], [["a-long-name", "1/1"], ["b", "0/1"]]) == (
        "NAME          READY\na-long-name   1/1\nb             0/1")


def _pod(phase: str, state: dict[str, Any] | None = None, node: str | None = "n",
         deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": phase}
    if state is not None:
        status["containerStatuses"] = [{"state": state}]
    return {"metadata": meta, "spec": {"nodeName": node}, "status": status}


@pytest.mark.parametrize(("pod", "expected"), [
    (_pod("Pending", node=None), "Pending"),
    (_pod("Pending", {"waiting": {"reason": "ContainerCreating"}}), "ContainerCreating"),
    (_pod("Running", {"running": {}}), "Running"),
    (_pod("Running", {"waiting": {"reason": "CrashLoopBackOff"}}), "CrashLoopBackOff"),
    (_pod("Succeeded", {"terminated": {"reason": "Completed"}}), "Completed"),
    (_pod("Failed", {"terminated": {"reason": "Error"}}), "Error"),
    (_pod("Running", {"running": {}}, deleting=True), "Terminating"),
])
def test_pod_status_column(pod: dict[str, Any], expected: str) -> None:
    assert pod_status(pod) == expected
