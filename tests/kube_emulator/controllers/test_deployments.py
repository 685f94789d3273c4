"""The Deployment controller's decisions (pure): pods to create and delete, and the status."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kube_emulator.controllers.deployments import (
    HASH_LABEL,
    plan_deployment,
    pod_for,
    template_hash,
)

NOW = "2026-01-01T00:00:00Z"
Obj = dict[str, Any]


def deployment(replicas: int = 2, image: str = "a", strategy: str = "RollingUpdate",
               generation: int = 1) -> Obj:
    return {"metadata": {"name": "web", "namespace": "ns", "uid": "u1",
                         "generation": generation},
            "spec": {"replicas": replicas, "strategy": {"type": strategy},
                     "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": image}]}}}}


def pod(name: str, template_of: Obj, ready: bool = True, phase: str = "Running",
        deleting: bool = False, created: str = "2026-01-01T00:00:00Z") -> Obj:
    meta: Obj = {"name": name, "creationTimestamp": created,
                 "labels": {"app": "web",
                            HASH_LABEL: template_hash(template_of["spec"]["template"])}}
    if deleting:
        meta["deletionTimestamp"] = NOW
    return {"metadata": meta, "status": {"phase": phase, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}}


def test_missing_pods_are_created_and_status_counts_them() -> None:
    d = deployment(3)
    plan = plan_deployment(d, [pod("a", d)], NOW)
    assert (plan.create, plan.delete) == (2, [])
    assert plan.status["replicas"] == 1 and plan.status["availableReplicas"] == 1
    conditions = {c["type"]: c["reason"] for c in plan.status["conditions"]}
    assert conditions == {"Available": "MinimumReplicasUnavailable",
                          "Progressing": "ReplicaSetUpdated"}


def test_a_complete_rollout_reports_what_rollout_status_waits_for() -> None:
    d = deployment(2, generation=4)
    plan = plan_deployment(d, [pod("a", d), pod("b", d)], NOW)
    assert (plan.create, plan.delete) == (0, [])
    assert {k: plan.status[k] for k in ("observedGeneration", "replicas", "updatedReplicas",
                                        "readyReplicas", "availableReplicas")} == {
        "observedGeneration": 4, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
        "availableReplicas": 2}
    assert "unavailableReplicas" not in plan.status  # zero counts are omitted
    conditions = {c["type"]: c["reason"] for c in plan.status["conditions"]}
    assert conditions["Progressing"] == "NewReplicaSetAvailable"


@pytest.mark.parametrize(("pods", "deleted"), [
    # Not-ready first, then the newest.
    ([("a", True, "1"), ("b", False, "2"), ("c", True, "3")], ["b"]),
    ([("a", True, "1"), ("b", True, "3"), ("c", True, "2")], ["a"]),
])
def test_extra_pods_are_deleted_not_ready_first(pods: list[tuple[str, bool, str]],
                                                deleted: list[str]) -> None:
    d = deployment(2)
    plan = plan_deployment(d, [pod(n, d, ready=r, created=c) for n, r, c in pods], NOW)
    assert plan.create == 0 and plan.delete == deleted


def test_finished_and_deleting_pods_are_replaced_not_counted() -> None:
    d = deployment(2)
    pods = [pod("a", d, phase="Failed", ready=False), pod("b", d, deleting=True)]
    plan = plan_deployment(d, pods, NOW)
    assert (plan.create, plan.delete) == (2, [])
    assert "replicas" not in plan.status


def test_recreate_deletes_old_pods_and_waits_for_them_to_go() -> None:
    old, new = deployment(1, "a", "Recreate"), deployment(1, "b", "Recreate")
    plan = plan_deployment(new, [pod("old", old)], NOW)
    assert (plan.create, plan.delete) == (0, ["old"])
    plan = plan_deployment(new, [pod("old", old, deleting=True)], NOW)
    assert (plan.create, plan.delete) == (0, [])
    plan = plan_deployment(new, [], NOW)
    assert plan.create == 1


def test_rolling_update_retires_an_old_pod_per_ready_new_one() -> None:
    old, new = deployment(2, "a"), deployment(2, "b")
    olds = [pod("o1", old), pod("o2", old)]
    assert plan_deployment(new, olds, NOW).create == 2
    plan = plan_deployment(new, [*olds, pod("n1", new), pod("n2", new, ready=False)], NOW)
    assert (plan.create, plan.delete) == (0, ["o1"])
    assert plan.status["updatedReplicas"] == 2 and plan.status["replicas"] == 4


def test_pods_are_owned_and_labelled() -> None:
    d = deployment()
    p = pod_for(d, template_hash(d["spec"]["template"]))
    assert p["metadata"]["name"].startswith(f"web-{template_hash(d['spec']['template'])}-")
    assert p["metadata"]["ownerReferences"][0] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u1",
        "controller": True, "blockOwnerDeletion": True}
    assert p["metadata"]["labels"]["app"] == "web"


@settings(max_examples=60, deadline=None)
@given(replicas=st.integers(0, 4), start=st.integers(0, 6), old=st.integers(0, 3),
       strategy=st.sampled_from(["RollingUpdate", "Recreate"]))
def test_plans_converge_to_the_wanted_pods(replicas: int, start: int, old: int,
                                           strategy: str) -> None:
    """Applying plans (new pods become Ready at once, deleted pods vanish) always ends with
    exactly ``replicas`` pods of the current template and a complete status."""
    current, previous = deployment(replicas, "b", strategy), deployment(replicas, "a")
    pods = [pod(f"n{i}", current) for i in range(start)] + \
        [pod(f"o{i}", previous) for i in range(old)]
    for step in range(10):
        plan = plan_deployment(current, pods, NOW)
        if not plan.create and not plan.delete:
            break
        pods = [p for p in pods if p["metadata"]["name"] not in plan.delete]
        pods += [pod(f"s{step}-{i}", current) for i in range(plan.create)]
    hashes = {p["metadata"]["labels"][HASH_LABEL] for p in pods}
    assert len(pods) == replicas and hashes <= {template_hash(current["spec"]["template"])}
    assert plan.status.get("availableReplicas", 0) == replicas
