"""What kube-apiserver adds to or converts in built-in objects when they are written.

A client reading back what it wrote sees these, as on a real cluster (``kubectl get -o yaml``
of a pod shows ``dnsPolicy: ClusterFirst``), and a controller judged by the emulator must cope
with them:

- Secret: ``stringData`` is merged into ``data`` (base64; a key in both takes the
  ``stringData`` value) and never stored; ``type`` defaults to ``Opaque``;
- Secret and ConfigMap with ``immutable: true``: ``data``, ``binaryData`` and ``immutable``
  itself can no longer change (422);
- Namespace: the ``kubernetes.io/metadata.name`` label, always equal to the name;
- Pod: ``dnsPolicy``, ``schedulerName``, ``securityContext``,
  ``serviceAccountName`` (the ServiceAccount admission plugin; no token volume is mounted),
  ``enableServiceLinks``, ``priority`` and ``preemptionPolicy``; per container
  ``terminationMessagePath``/``Policy``, ``imagePullPolicy`` (``Always`` for ``:latest`` or
  no tag), ``resources.requests`` copied from ``limits`` where unset, port ``protocol``; and
  on create ``status.qosClass`` (Guaranteed, Burstable, BestEffort) from the resources;
- Service: ``type``, ``sessionAffinity``, on create a ``clusterIP`` from 10.96.0.0/16
  (unless ``None``: headless), ``ipFamilies``/``ipFamilyPolicy``, ``internalTrafficPolicy``,
  port ``protocol`` and ``targetPort``;
- Deployment: ``replicas`` 1, ``strategy`` RollingUpdate 25%/25%, ``revisionHistoryLimit``
  10, ``progressDeadlineSeconds`` 600, and the pod defaults above on ``template.spec``;
- PersistentVolumeClaim: ``volumeMode`` Filesystem; on create it is Bound at once (status
  ``phase``, ``accessModes``, ``capacity`` = the request), as with a dynamic provisioner.

Defaults apply on every write, as kube-apiserver defaults every decoded object: an update or
a server-side apply that replaces a list (containers, ports) gets them again, so it does not
look like a change of the defaulted fields.

Not emulated: the DefaultTolerationSeconds admission plugin's not-ready/unreachable
tolerations, LimitRange defaults, and the many defaults of fields the local runtime ignores
(probes, volumes' own defaults).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from kube_emulator.apiserver.resources import (
    DEPLOYMENT_KEY,
    NAMESPACE_KEY,
    POD_KEY,
    PVC_KEY,
    SERVICE_KEY,
    ResourceInfo,
)

Obj = dict[str, Any]
SECRET_KEY = ("", "secrets")
CONFIGMAP_KEY = ("", "configmaps")
NAME_LABEL = "kubernetes.io/metadata.name"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
_QOS_RESOURCES = ("cpu", "memory")


def on_write(info: ResourceInfo, obj: Obj, grace_seconds: int) -> None:
    """The conversions and defaults of every create and update (``obj`` changed in place);
    ``grace_seconds`` is a pod's default ``terminationGracePeriodSeconds``."""
    if info.storage_key == SECRET_KEY:
        _convert_secret(obj)
    elif info.storage_key == POD_KEY:
        _default_pod_spec(obj.setdefault("spec", {}), grace_seconds)
    elif info.storage_key == SERVICE_KEY:
        _default_service_spec(obj.setdefault("spec", {}))
    elif info.storage_key == DEPLOYMENT_KEY:
        _default_deployment_spec(obj.setdefault("spec", {}), grace_seconds)
    elif info.storage_key == PVC_KEY:
        obj.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
    elif info.storage_key == NAMESPACE_KEY:
        labels = obj.setdefault("metadata", {}).get("labels") or {}
        obj["metadata"]["labels"] = {**labels, NAME_LABEL: obj["metadata"].get("name", "")}


def _convert_secret(secret: Obj) -> None:
    stringdata = secret.pop("stringData", None)
    if isinstance(stringdata, dict) and stringdata:
        data = dict(secret.get("data") or {})
        for key, value in stringdata.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        secret["data"] = data
    secret.setdefault("type", "Opaque")


def check_immutable(info: ResourceInfo, old: Obj, new: Obj) -> list[Obj]:
    """The 422 causes of an update to an immutable Secret or ConfigMap (empty: allowed)."""
    if info.storage_key not in (SECRET_KEY, CONFIGMAP_KEY) or not old.get("immutable"):
        return []
    causes = []
    for field in ("data", "binaryData"):
        if (old.get(field) or {}) != (new.get(field) or {}):
            causes.append({"reason": "FieldValueForbidden", "field": field,
                           "message": "Forbidden: field is immutable when `immutable` is set"})
    if new.get("immutable") is not True:
        causes.append({"reason": "FieldValueForbidden", "field": "immutable",
                       "message": "Forbidden: field is immutable when `immutable` is set"})
    return causes


def _pull_policy(image: str) -> str:
    name = image.rsplit("/", 1)[-1].split("@", 1)[0]
    tag = name.partition(":")[2]
    return "Always" if "@" not in image and tag in ("", "latest") else "IfNotPresent"


def _default_container(container: Obj) -> None:
    container.setdefault("terminationMessagePath", TERMINATION_MESSAGE_PATH)
    container.setdefault("terminationMessagePolicy", "File")
    if container.get("image"):
        container.setdefault("imagePullPolicy", _pull_policy(str(container["image"])))
    resources = container.setdefault("resources", {})
    limits = resources.get("limits") or {}
    if limits:
        resources["requests"] = {**limits, **(resources.get("requests") or {})}
    for port in container.get("ports") or ():
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def qos_class(spec: Obj) -> str:
    """Kubernetes' QoS class of a pod spec: Guaranteed when every container limits and
    requests cpu and memory equally, BestEffort when none asks for either, else Burstable."""
    containers = [c for key in ("containers", "initContainers")
                  for c in spec.get(key) or () if isinstance(c, dict)]
    requested = False
    guaranteed = bool(containers)
    for container in containers:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        if any(r in requests or r in limits for r in _QOS_RESOURCES):
            requested = True
        if any(r not in limits or requests.get(r, limits[r]) != limits[r]
               for r in _QOS_RESOURCES):
            guaranteed = False
    if not requested:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def initial_pod_status(pod: Obj) -> Obj:
    """A new pod's status: Pending, with its QoS class (after the defaults)."""
    return {"phase": "Pending", "qosClass": qos_class(pod.get("spec") or {})}


def _default_pod_spec(spec: Obj, grace_seconds: int) -> None:
    spec.setdefault("terminationGracePeriodSeconds", grace_seconds)
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or ():
            if isinstance(container, dict):
                _default_container(container)


def _default_deployment_spec(spec: Obj, grace_seconds: int) -> None:
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxSurge", "25%")
        rolling.setdefault("maxUnavailable", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    template = spec.get("template")
    if isinstance(template, dict):
        _default_pod_spec(template.setdefault("spec", {}), grace_seconds)


def bound_claim_status(claim: Obj) -> Obj:
    """A new claim's status: Bound to a volume of the requested size (the local cluster
    provisions every claim as a directory, see :mod:`kube_emulator.node.runtime`)."""
    spec = claim.get("spec") or {}
    requested = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    return {"phase": "Bound", "accessModes": list(spec.get("accessModes") or ()),
            **({"capacity": {"storage": requested}} if requested else {})}


def new_service(service: Obj, service_ip: Callable[[], str]) -> None:
    """A new Service's clusterIP from ``service_ip`` (unless headless) and empty status."""
    spec = service.setdefault("spec", {})
    if not spec.get("clusterIP"):
        spec["clusterIP"] = service_ip()
    spec.setdefault("clusterIPs", [spec["clusterIP"]])
    service["status"] = {"loadBalancer": {}}


def _default_service_spec(spec: Obj) -> None:
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or ():
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "port" in port:
                port.setdefault("targetPort", port["port"])

