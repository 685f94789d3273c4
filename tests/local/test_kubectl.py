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
