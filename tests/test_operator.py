"""The real operator (``elastic-operator run`` subprocess) over HTTP against the emulator.

One emulator and one operator for the module; every test works in its own namespace. Pods
never run (no kubelet): the tests play the kubelet by patching pod ``/status``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import etcd3
import pytest

from elastic_operator import labels
from elastic_operator.api.common import Condition
from kube_emulator.etcd import EtcdServer
from launcher.contract import Completion, FailureReport, PodEnv, failure_key, round_key
from tests.harness import (
    Api,
    Cluster,
    HttpError,
    OperatorProcess,
    calls_rbac_denies,
    elastic_job,
    events_for,
    jobs_path,
    operator_calls,
    pods_path,
    set_pod_phase,
    worker_pods,
)

pytestmark = pytest.mark.slow
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def operator_args() -> list[str]:
    return ["--backoff-base", "0.3", "--backoff-cap", "1", "--resync", "1"]


def names(pods: list[Obj]) -> list[str]:
    return [p["metadata"]["name"] for p in pods]


def wait_workers(api: Api, ns: str, job: str, count: int, timeout: float = 30) -> list[Obj]:
    def check() -> tuple[list[Obj]] | None:
        pods = worker_pods(api, ns, job)
        return (pods,) if len(pods) == count else None  # a tuple: truthy even with no pods

    return api.wait_for(check, timeout, f"{count} workers of {ns}/{job}")[0]


def status_of(api: Api, ns: str, job: str) -> Obj:
    return api.get(jobs_path(ns, job)).get("status") or {}


def condition(status: Obj, kind: str) -> Condition | None:
    for raw in status.get("conditions") or []:
        if raw["type"] == kind:
            return Condition.model_validate(raw)
    return None


def wait_status(api: Api, ns: str, job: str, check: Any, what: str, timeout: float = 30) -> Obj:
    def probe() -> Obj | None:
        status = status_of(api, ns, job)
        return status if check(status) else None

    return api.wait_for(probe, timeout, what)


def make_ready(api: Api, ns: str, pods: list[Obj]) -> None:
    for pod in pods:
        set_pod_phase(api, ns, pod["metadata"]["name"], "Running", ready=True)


def test_create_makes_labelled_owned_workers_and_service(
    api: Api, namespace: str, operator_process: OperatorProcess
) -> None:
    job = api.create(jobs_path(namespace), elastic_job("train", 2, 4, replicas=3,
                                                        nprocPerNode=2))
    pods = wait_workers(api, namespace, "train", 3)
    assert names(pods) == ["train-worker-0", "train-worker-1", "train-worker-2"]
    uid = job["metadata"]["uid"]
    for index, pod in enumerate(pods):
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["labels"][labels.JOB_NAME] == "train"
        assert meta["labels"][labels.REPLICA_INDEX] == str(index)
        assert meta["labels"][labels.ROLE] == "worker"
        (owner,) = meta["ownerReferences"]
        assert (owner["uid"], owner["controller"], owner["blockOwnerDeletion"]) == (uid, True, True)
        assert spec["restartPolicy"] == "Never"
        container = spec["containers"][0]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env[PodEnv.REPLICA_INDEX] == str(index)
        assert env[PodEnv.MIN_NODES] == "2" and env[PodEnv.MAX_NODES] == "4"
        assert env[PodEnv.NPROC_PER_NODE] == "2"
        assert env[PodEnv.RDZV_ID] == f"{namespace}-train-{uid[:8]}"
        assert env[PodEnv.RDZV_ENDPOINT] == "127.0.0.1:1"  # the operator's default endpoints
        assert "nodeName" not in spec
    service = api.get(f"/api/v1/namespaces/{namespace}/services/train-workers")
    assert service["spec"]["clusterIP"] == "None"
    status = wait_status(api, namespace, "train", lambda s: s.get("replicas") == 3, "replicas=3")
    assert status["selector"] == f"{labels.JOB_NAME}=train"
    assert status["phase"] == "Pending"
    assert status["observedGeneration"] == job["metadata"]["generation"]

    make_ready(api, namespace, pods)
    status = wait_status(api, namespace, "train", lambda s: s.get("phase") == "Running",
                         "phase Running")
    assert status["readyReplicas"] == 3 and status["worldSize"] == 6
    assert condition(status, "Ready").status == "True"  # type: ignore[union-attr]


def test_replicas_out_of_range_are_clamped_with_an_event(
    api: Api, namespace: str, operator_process: OperatorProcess
) -> None:
    api.create(jobs_path(namespace), elastic_job("big", 1, 2, replicas=7))
    wait_workers(api, namespace, "big", 2)
    api.wait_for(lambda: [e for e in events_for(api, namespace, "big")
                          if e["reason"] == "ReplicasClamped"], 20, "ReplicasClamped event")
    assert api.get(jobs_path(namespace, "big"))["spec"]["replicas"] == 7  # spec untouched


def test_scale_subresource_grows_and_shrinks_highest_index_first(
    api: Api, namespace: str, operator_process: OperatorProcess
) -> None:
    api.create(jobs_path(namespace), elastic_job("sc", 1, 5, replicas=2))
    make_ready(api, namespace, wait_workers(api, namespace, "sc", 2))
    scale = api.get(jobs_path(namespace, "sc", "scale"))
    assert scale["spec"]["replicas"] == 2
    api.patch(jobs_path(namespace, "sc", "scale"), {"spec": {"replicas": 4}})
    assert names(wait_workers(api, namespace, "sc", 4))[-1] == "sc-worker-3"
    make_ready(api, namespace, worker_pods(api, namespace, "sc"))
    api.patch(jobs_path(namespace, "sc", "scale"), {"spec": {"replicas": 1}})
    assert names(wait_workers(api, namespace, "sc", 1)) == ["sc-worker-0"]
    status = wait_status(api, namespace, "sc", lambda s: s.get("replicas") == 1, "replicas=1")
    assert status["lastScaleTime"]
    scale = api.wait_for(lambda: api.get(jobs_path(namespace, "sc", "scale"))["status"]
                         .get("replicas") == 1 and api.get(jobs_path(namespace, "sc", "scale")),
                         20, "scale status 1")
    assert scale["status"]["selector"] == f"{labels.JOB_NAME}=sc"


def test_failed_worker_is_reported_replaced_and_counted(
    api: Api, namespace: str, operator_process: OperatorProcess
) -> None:
    api.create(jobs_path(namespace), elastic_job("fl", 2, 2, maxRestarts=5))
    pods = wait_workers(api, namespace, "fl", 2)
    make_ready(api, namespace, pods)
    first_uid = pods[1]["metadata"]["uid"]
    report = FailureReport("ProcessCrashed", "CUDA error: an illegal memory access", "node-b",
                           rank=1, exit_code=1)
    set_pod_phase(api, namespace, "fl-worker-1", "Failed", exit_code=1,
                  message=report.to_json())
    status = wait_status(api, namespace, "fl", lambda s: s.get("restarts") == 1, "restarts=1")
    failure = status["lastFailure"]
    assert (failure["pod"], failure["reason"], failure["rank"]) == ("fl-worker-1",
                                                                    "ProcessCrashed", 1)
    assert "illegal memory access" in failure["message"]

    def replaced() -> Obj | None:
        pod = api.get_or_none(pods_path(namespace, "fl-worker-1"))
        return pod if pod and pod["metadata"]["uid"] != first_uid else None

    new = api.wait_for(replaced, 20, "fl-worker-1 recreated")
    assert new["status"].get("phase", "Pending") == "Pending"
    warning = api.wait_for(lambda: [e for e in events_for(api, namespace, "fl")
                                    if e["reason"] == "WorkerFailed"], 20, "WorkerFailed event")
    assert "fl-worker-1" in warning[0]["message"] and "ProcessCrashed" in warning[0]["message"]
    assert warning[0]["type"] == "Warning"
    assert status_of(api, namespace, "fl")["restarts"] == 1  # the failure counted once


def test_raw_termination_message_is_kept(
    api: Api, namespace: str, operator_process: OperatorProcess
) -> None:
    api.create(jobs_path(namespace), elastic_job("raw", 1, 1, maxRestarts=3))
    wait_workers(api, namespace, "raw", 1)
    set_pod_phase(api, namespace, "raw-worker-0", "Failed", exit_code=137,
                  message="Killed: out of memory")
    status = wait_status(api, namespace, "raw", lambda s: s.get("lastFailure"), "lastFailure")
    assert status["lastFailure"]["message"] == "Killed: out of memory"
    assert status["lastFailure"]["exitCode"] == 137


def test_max_restarts_exceeded_fails_the_job(
    api: Api, namespace: str, operator_process: OperatorProcess
) -> None:
    api.create(jobs_path(namespace), elastic_job("mr", 1, 2, replicas=2, maxRestarts=1))
    wait_workers(api, namespace, "mr", 2)
    set_pod_phase(api, namespace, "mr-worker-0", "Failed", exit_code=1, message="first")
    wait_status(api, namespace, "mr", lambda s: s.get("restarts") == 1, "restarts=1")
    set_pod_phase(api, namespace, "mr-worker-1", "Failed", exit_code=1, message="second")
    status = wait_status(api, namespace, "mr", lambda s: s.get("phase") == "Failed",
                         "phase Failed")
    failed = condition(status, "Failed")
    assert failed is not None and failed.reason == "MaxRestartsExceeded"
    assert "mr-worker-1" in failed.message and "second" in failed.message
    wait_workers(api, namespace, "mr", 0)


def test_a_completion_finishes_the_job_and_exit_0_alone_does_not(
    api: Api, namespace: str, operator_process: OperatorProcess
) -> None:
    api.create(jobs_path(namespace), elastic_job("ok", 2, 2))
    pods = wait_workers(api, namespace, "ok", 2)
    first = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
    # Exit 0 without a Completion (a worker stopped for a resize): replaced, not counted.
    for pod in pods:
        set_pod_phase(api, namespace, pod["metadata"]["name"], "Succeeded", exit_code=0)

    def replaced() -> list[Obj] | None:
        now = wait_workers(api, namespace, "ok", 2)
        return now if all(first[p["metadata"]["name"]] != p["metadata"]["uid"]
                          for p in now) else None
    pods = api.wait_for(replaced, 20, "both workers replaced")
    status = api.get(jobs_path(namespace, "ok"))["status"]
    assert status["phase"] != "Succeeded" and status.get("restarts", 0) == 0, status
    # The agents' Completion in the termination messages: Succeeded.
    names = [p["metadata"]["name"] for p in pods]
    record = Completion(3, tuple(f"{n}-1-abc" for n in names), f"{names[0]}-1-abc", time.time())
    for pod in pods:
        set_pod_phase(api, namespace, pod["metadata"]["name"], "Succeeded", exit_code=0,
                      message=record.to_json())
    status = wait_status(api, namespace, "ok", lambda s: s.get("phase") == "Succeeded",
                         "phase Succeeded")
    assert condition(status, "Succeeded").reason == "TrainingCompleted"  # type: ignore[union-attr]
    assert status.get("restarts", 0) == 0
    wait_workers(api, namespace, "ok", 0)
    assert api.get(jobs_path(namespace, "ok"))  # the job is kept


def test_deleting_the_job_removes_its_workers(
    api: Api, namespace: str, operator_process: OperatorProcess
) -> None:
    api.create(jobs_path(namespace), elastic_job("gone", 3, 3))
    wait_workers(api, namespace, "gone", 3)
    api.delete(jobs_path(namespace, "gone"))
    api.wait_for(lambda: api.get_or_none(jobs_path(namespace, "gone")) is None, 20, "job gone")
    wait_workers(api, namespace, "gone", 0)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"minReplicas": 0}, "spec.minReplicas"),
        ({"minReplicas": 3, "maxReplicas": 2}, "spec.minReplicas"),
        ({"lrScaling": {"policy": "cubic"}}, "spec.lrScaling.policy"),
        ({"maxRestarts": -1}, "spec.maxRestarts"),
    ],
)
def test_schema_rejects_invalid_specs_naming_the_field(
    api: Api, namespace: str, spec: Obj, field: str
) -> None:
    manifest = elastic_job("bad")
    manifest["spec"].update(spec)
    with pytest.raises(HttpError) as err:
        api.create(jobs_path(namespace), manifest)
    assert err.value.code == 422
    assert field in err.value.body["message"]


def test_operator_only_rules_fail_the_job_until_fixed(
    api: Api, namespace: str, operator_process: OperatorProcess
) -> None:
    manifest = elastic_job("inv", 1, 2)
    manifest["spec"]["template"] = {"spec": {"containers": [
        {"name": "w", "image": "x"}], "restartPolicy": "Always"}}
    api.create(jobs_path(namespace), manifest)
    status = wait_status(api, namespace, "inv", lambda s: s.get("phase") == "Failed",
                         "phase Failed")
    invalid = condition(status, "Invalid")
    assert invalid is not None and invalid.status == "True"
    assert "spec.template.spec.restartPolicy" in invalid.message
    event = api.wait_for(lambda: [e for e in events_for(api, namespace, "inv")
                                  if e["reason"] == "InvalidSpec"], 20, "InvalidSpec event")
    assert "restartPolicy" in event[0]["message"] and "fix" in event[0]["message"]
    assert worker_pods(api, namespace, "inv") == []
    # No hot loop: the status stops changing.
    version = api.get(jobs_path(namespace, "inv"))["metadata"]["resourceVersion"]
    time.sleep(1.5)  # a resync period passes; nothing may be written
    assert api.get(jobs_path(namespace, "inv"))["metadata"]["resourceVersion"] == version
    # A fixed spec (new generation) recovers.
    api.patch(jobs_path(namespace, "inv"),
              {"spec": {"template": {"spec": {"restartPolicy": "Never"}}}})
    wait_workers(api, namespace, "inv", 1)
    status = wait_status(api, namespace, "inv", lambda s: s.get("phase") == "Pending",
                         "phase Pending")
    assert condition(status, "Invalid").status == "False"  # type: ignore[union-attr]


def test_operator_killed_mid_scale_converges_without_duplicates(
    api: Api, namespace: str, operator_process: OperatorProcess
) -> None:
    api.create(jobs_path(namespace), elastic_job("rs", 1, 12, replicas=1))
    wait_workers(api, namespace, "rs", 1)
    api.patch(jobs_path(namespace, "rs", "scale"), {"spec": {"replicas": 12}})
    api.wait_for(lambda: len(worker_pods(api, namespace, "rs")) >= 2, 20, "scaling started")
    operator_process.kill()
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in worker_pods(api, namespace,
                                                                              "rs")}
    operator_process.start()
    pods = wait_workers(api, namespace, "rs", 12)
    assert names(pods) == [f"rs-worker-{i}" for i in range(12)]
    # The restarted operator kept what existed (no delete-and-recreate churn).
    assert all(before[p["metadata"]["name"]] == p["metadata"]["uid"] for p in pods
               if p["metadata"]["name"] in before)
    api.patch(jobs_path(namespace, "rs", "scale"), {"spec": {"replicas": 3}})
    api.wait_for(lambda: len(worker_pods(api, namespace, "rs")) <= 10, 20, "shrink started")
    operator_process.kill()
    kept = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods[:3]}
    operator_process.start()
    pods = wait_workers(api, namespace, "rs", 3)
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods} == kept
    status = wait_status(api, namespace, "rs", lambda s: s.get("replicas") == 3, "replicas=3")
    assert status["restarts"] == 0


def test_metrics_are_served(operator_process: OperatorProcess) -> None:
    text = operator_process.metrics()
    assert "elastic_operator_pods_created_total" in text
    assert "elastic_operator_reconcile_duration_seconds_bucket" in text
    assert 'elastic_operator_jobs{phase="Running"}' in text


def test_below_min_for_too_long_fails_the_job(
    api: Api, namespace: str, operator_process: OperatorProcess
) -> None:
    api.create(jobs_path(namespace), elastic_job("low", 1, 1, belowMinTimeoutSeconds=1))
    (pod,) = wait_workers(api, namespace, "low", 1)
    make_ready(api, namespace, [pod])
    wait_status(api, namespace, "low", lambda s: s.get("phase") == "Running", "Running")
    set_pod_phase(api, namespace, "low-worker-0", "Running", ready=False)
    status = wait_status(api, namespace, "low", lambda s: s.get("phase") == "Failed",
                         "phase Failed after the below-min timeout")
    assert condition(status, "Failed").reason == "BelowMinTimeout"  # type: ignore[union-attr]
    wait_workers(api, namespace, "low", 0)


def test_world_size_and_generation_come_from_the_rendezvous_round(
    api: Api, namespace: str, operator_process: OperatorProcess
) -> None:
    with EtcdServer() as etcd:
        job = api.create(jobs_path(namespace), elastic_job(
            "rd", 1, 2, rendezvous={"endpoints": [etcd.endpoint]}))
        pods = wait_workers(api, namespace, "rd", 1)
        env = {e["name"]: e["value"] for e in pods[0]["spec"]["containers"][0]["env"]}
        assert env[PodEnv.RDZV_ENDPOINT] == etcd.endpoint
        client = etcd3.client(*etcd.endpoint.split(":"))
        key = round_key(env[PodEnv.RDZV_ID])
        assert env[PodEnv.RDZV_ID].endswith(job["metadata"]["uid"][:8])
        # (A round larger than maxReplicas x nprocPerNode would be refused: rounds.check_view.)
        client.put(key, json.dumps({"generation": 3, "worldSize": 2, "nodes": ["a", "b"]}))
        # A failure the agent handled inside its pod (it restarted the training process).
        report = FailureReport("ProcessHung", "no heartbeat for 300s", "rd-worker-0-41-9f2c1a",
                               rank=0, timestamp=time.time())
        client.put(failure_key(env[PodEnv.RDZV_ID], report.node_id), report.to_json())
        client.close()
        status = wait_status(api, namespace, "rd", lambda s: s.get("generation") == 3,
                             "generation from etcd")
        assert status["worldSize"] == 2
        status = wait_status(api, namespace, "rd", lambda s: s.get("lastFailure"),
                             "the reported failure")
        failure = status["lastFailure"]
        assert (failure["pod"], failure["reason"], failure["rank"]) == ("rd-worker-0",
                                                                        "ProcessHung", 0)
        assert status["restarts"] == 0
        event = api.wait_for(lambda: [e for e in events_for(api, namespace, "rd")
                                      if e["reason"] == "WorkerReportedFailure"], 20, "event")
        assert "no heartbeat" in event[0]["message"]


def test_rbac_allows_every_call_the_operator_made(
    apiserver: Cluster, operator_process: OperatorProcess
) -> None:
    """Runs last in the module, so the audit holds every scenario above."""
    calls = operator_calls(apiserver)
    assert ("create", "", "pods") in calls  # the audit did see the operator's work
    missing = calls_rbac_denies(calls)
    assert not missing, f"deploy/rbac.yaml does not allow: {missing}"
