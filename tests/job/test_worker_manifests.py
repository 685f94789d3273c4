"""Worker Pod and Service manifests built from an ElasticJob spec."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from elastic_operator import labels
from elastic_operator.api.elasticjob import ElasticJobSpec
from elastic_operator.job.worker_manifests import (
    CREDENTIALS_DIR,
    CREDENTIALS_VOLUME,
    headless_service,
    rdzv_id,
    worker_pod,
)
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


def test_credentials_secret_is_mounted_into_every_container() -> None:
    s = spec(template={"spec": {"containers": [{"name": "a", "image": "i"},
                                               {"name": "b", "image": "i",
                                                "volumeMounts": [{"name": "data",
                                                                  "mountPath": "/d"}]}],
                                "volumes": [{"name": "data", "emptyDir": {}}]}})
    pod = worker_pod("ns", "job", UID, 0, s, "etcd:2379", credentials="job-rendezvous")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[CREDENTIALS_VOLUME]["secret"] == {"secretName": "job-rendezvous"}
    assert "data" in volumes
    for container in pod["spec"]["containers"]:
        mount = next(m for m in container["volumeMounts"] if m["name"] == CREDENTIALS_VOLUME)
        assert mount == {"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_DIR,
                         "readOnly": True}
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env[PodEnv.RDZV_CREDENTIALS_DIR] == CREDENTIALS_DIR
        assert env[PodEnv.RDZV_SECRET] == "Secret ns/job-rendezvous"
    assert PodEnv.RDZV_SECRET not in env_of(worker_pod("ns", "job", UID, 0, s, "etcd:2379"))


def test_credentials_secret_needs_own_endpoints() -> None:
    with pytest.raises(ValidationError, match=r"set spec\.rendezvous\.endpoints too"):
        spec(rendezvous={"credentialsSecret": "mine"})
    assert spec(rendezvous={"endpoints": ["e:2379"], "credentialsSecret": "mine"})
