"""Worker Pod and headless Service manifests of an ElasticJob (pure functions, no I/O).

Guarantees:

- Names are deterministic (``<job>-worker-<index>``, Service ``<job>-workers``), so a create
  repeated after an operator restart answers 409 instead of making a duplicate.
- Every object carries ``elastic.dev/job-name``, ``elastic.dev/role`` and (pods)
  ``elastic.dev/replica-index`` labels and a controller owner reference with
  ``blockOwnerDeletion``, so deleting the job garbage-collects its workers.
- Pods get ``restartPolicy: Never`` (the operator, not the kubelet, replaces failed workers,
  so each failure is counted and backed off), ``terminationMessagePolicy:
  FallbackToLogsOnError`` (a crash without a FailureReport still explains itself) and the
  launcher's ``ELASTIC_*`` environment from :class:`launcher.contract.PodEnv`; variables the
  user set in the template win over ours.
- With ``credentials`` (the job's etcd credentials Secret), every container mounts it
  read-only at :data:`CREDENTIALS_DIR` and the launcher finds user, password and CA there
  (``PodEnv.RDZV_CREDENTIALS_DIR``); errors name the Secret (``PodEnv.RDZV_SECRET``).
- No node name, node affinity or IP is assumed: the scheduler places workers; peers find
  each other through the rendezvous (etcd) and the headless Service's DNS.
"""

from __future__ import annotations

import copy
from typing import Any

from elastic_operator import labels
from elastic_operator.api.elasticjob import KIND, ElasticJobSpec
from launcher.contract import DEFAULT_TERMINATION_LOG, PodEnv

Obj = dict[str, Any]

# Every member of deploy/'s 3-member etcd by its stable name: clients fail over between them
# themselves (through the one Service name, a gRPC connection to a lost member hangs on).
CREDENTIALS_DIR = "/etc/elastic/rendezvous"
CREDENTIALS_VOLUME = "elastic-rendezvous-credentials"
DEFAULT_RENDEZVOUS_ENDPOINTS = ",".join(
    f"elastic-etcd-{i}.elastic-etcd-peers.elastic-system.svc:2379" for i in range(3))


def pod_name(job: str, index: int) -> str:
    """Name of worker ``index`` of ``job``."""
    return f"{job}-worker-{index}"


def service_name(job: str) -> str:
    """Name of the job's headless Service."""
    return f"{job}-workers"


def rdzv_id(namespace: str, name: str, uid: str) -> str:
    """Rendezvous id (etcd key prefix) unique to this incarnation of the job.

    The uid part keeps a deleted and re-created job from meeting its predecessor's stale keys
    in the shared etcd.
    """
    return f"{namespace}-{name}-{uid[:8]}"


def owner_reference(name: str, uid: str) -> Obj:
    """Controller reference to the job (garbage collection and adoption safety)."""
    return {
        "apiVersion": labels.API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def worker_env(
    namespace: str, name: str, uid: str, index: int, spec: ElasticJobSpec, default_endpoints: str
) -> list[Obj]:
    """The ``ELASTIC_*`` variables the launcher reads (see launcher.contract.PodEnv)."""
    endpoints = ",".join(spec.rendezvous.endpoints) or default_endpoints
    base = spec.lrScaling.baseWorldSize or spec.minReplicas * spec.nprocPerNode
    values = {
        PodEnv.JOB_NAME: name,
        PodEnv.JOB_NAMESPACE: namespace,
        PodEnv.REPLICA_INDEX: str(index),
        PodEnv.RDZV_ENDPOINT: endpoints,
        PodEnv.RDZV_ID: rdzv_id(namespace, name, uid),
        PodEnv.MIN_NODES: str(spec.minReplicas),
        PodEnv.MAX_NODES: str(spec.maxReplicas),
        PodEnv.NPROC_PER_NODE: str(spec.nprocPerNode),
        PodEnv.MAX_RESTARTS: str(spec.maxRestarts),
        PodEnv.HANG_TIMEOUT: f"{spec.hangTimeoutSeconds:g}",
        PodEnv.LR_SCALING: spec.lrScaling.policy.value,
        PodEnv.BASE_WORLD_SIZE: str(base),
        PodEnv.BATCHING: spec.batching.value,
        PodEnv.CHECKPOINT_DIR: spec.checkpoint.directory,
        PodEnv.CHECKPOINT_INTERVAL: str(spec.checkpoint.intervalSteps),
        PodEnv.TERMINATION_LOG: DEFAULT_TERMINATION_LOG,
    }
    return [{"name": k, "value": v} for k, v in values.items()]


def worker_pod(
    namespace: str,
    name: str,
    uid: str,
    index: int,
    spec: ElasticJobSpec,
    default_endpoints: str = DEFAULT_RENDEZVOUS_ENDPOINTS,
    credentials: str | None = None,
) -> Obj:
    """The Pod manifest of worker ``index`` from ``spec.template`` (the template is copied);
    ``credentials`` names the Secret with the job's etcd credentials, if any."""
    template = copy.deepcopy(spec.template)
    meta = template.get("metadata") or {}
    pod_spec: Obj = template.get("spec") or {}
    pod_labels = {
        **(meta.get("labels") or {}),
        labels.JOB_NAME: name,
        labels.REPLICA_INDEX: str(index),
        labels.ROLE: "worker",
    }
    env = worker_env(namespace, name, uid, index, spec, default_endpoints)
    if credentials:
        env += [{"name": PodEnv.RDZV_CREDENTIALS_DIR, "value": CREDENTIALS_DIR},
                {"name": PodEnv.RDZV_SECRET, "value": f"Secret {namespace}/{credentials}"}]
        volumes = [v for v in pod_spec.get("volumes") or [] if v.get("name") != CREDENTIALS_VOLUME]
        pod_spec["volumes"] = [*volumes, {"name": CREDENTIALS_VOLUME,
                                          "secret": {"secretName": credentials}}]
    for container in pod_spec.get("containers") or []:
        if credentials:
            mounts = [m for m in container.get("volumeMounts") or []
                      if m.get("name") != CREDENTIALS_VOLUME]
            container["volumeMounts"] = [*mounts, {"name": CREDENTIALS_VOLUME,
                                                   "mountPath": CREDENTIALS_DIR,
                                                   "readOnly": True}]
        own = container.get("env") or []
        user_names = {e.get("name") for e in own}
        container["env"] = [e for e in env if e["name"] not in user_names] + own
        container.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")
        container.setdefault("terminationMessagePath", DEFAULT_TERMINATION_LOG)
    pod_spec["restartPolicy"] = "Never"
    pod_spec.setdefault("hostname", pod_name(name, index))
    pod_spec.setdefault("subdomain", service_name(name))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(name, index),
            "namespace": namespace,
            "labels": pod_labels,
            "annotations": dict(meta.get("annotations") or {}),
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": pod_spec,
    }


def headless_service(namespace: str, name: str, uid: str) -> Obj:
    """The headless Service giving every worker a DNS name ``<pod>.<job>-workers``.

    No ports: the rendezvous chooses the master port at run time, and a headless Service
    resolves to pod IPs whatever port a peer dials.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(name),
            "namespace": namespace,
            "labels": {labels.JOB_NAME: name, labels.ROLE: "worker"},
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": {labels.JOB_NAME: name, labels.ROLE: "worker"},
            # Peers must resolve each other while still starting (before Ready).
            "publishNotReadyAddresses": True,
        },
    }
