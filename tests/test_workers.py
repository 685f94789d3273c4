"""Worker Pod and Service manifests built from an ElasticJob spec."""

from __future__ import annotations

from elastic_operator import labels
from elastic_operator.api.elasticjob import ElasticJobSpec
from elastic_operator.workers import headless_service, rdzv_id, worker_pod
from launcher.contract import PodEnv

UID = "0123456789abcdef"


def spec(**over: object) -> ElasticJobSpec:
    template = {
        "metadata": {"labels": {"team": "nlp"}, "annotations": {"a": "b"}},
        "spec": {"containers": [{"name": "w", "image": "img",
                                 "env": [{"name": PodEnv.HANG_TIMEOUT, "value": "9"}]}]},
    }
    return ElasticJobSpec.model_validate({"minReplicas": 2, "maxReplicas": 4,
                                          "template": template, **over})


def env_of(pod: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}


def test_pod_keeps_template_and_adds_contract() -> None:
    s = spec(nprocPerNode=4, lrScaling={"policy": "sqrt"})
    pod = worker_pod("ns", "job", UID, 3, s, "etcd:2379")
    meta = pod["metadata"]
    assert meta["name"] == "job-worker-3"
    assert meta["labels"] == {"team": "nlp", labels.JOB_NAME: "job",
                              labels.REPLICA_INDEX: "3", labels.ROLE: "worker"}
    assert meta["annotations"] == {"a": "b"}
    env = env_of(pod)
    assert env[PodEnv.RDZV_ENDPOINT] == "etcd:2379"
    assert env[PodEnv.RDZV_ID] == rdzv_id("ns", "job", UID) == "ns-job-01234567"
    assert env[PodEnv.BASE_WORLD_SIZE] == "8"  # minReplicas x nprocPerNode
    assert env[PodEnv.LR_SCALING] == "sqrt"
    assert env[PodEnv.HANG_TIMEOUT] == "9"  # the user's own value wins
    assert [e["name"] for e in pod["spec"]["containers"][0]["env"]].count(
        PodEnv.HANG_TIMEOUT) == 1
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["subdomain"] == "job-workers"
    assert s.template["spec"]["containers"][0].get("terminationMessagePolicy") is None


def test_job_endpoints_override_the_default() -> None:
    pod = worker_pod("ns", "job", UID, 0, spec(rendezvous={"endpoints": ["a:1", "b:2"]}))
    assert env_of(pod)[PodEnv.RDZV_ENDPOINT] == "a:1,b:2"


def test_service_is_headless_and_owned() -> None:
    service = headless_service("ns", "job", UID)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"][labels.JOB_NAME] == "job"
    assert service["metadata"]["ownerReferences"][0]["uid"] == UID
