"""The ``scale`` subresource of custom resources (autoscaling/v1 ``Scale``).

Reads map ``specReplicasPath`` to ``spec.replicas``, ``statusReplicasPath`` to
``status.replicas`` (0 when unset) and ``labelSelectorPath`` to ``status.selector``. Writes
(PUT, or PATCH applied to the current Scale) set the resource's ``specReplicasPath`` through
a normal update, so schema validation, generation and watch events behave as for any spec
change; a ``metadata.resourceVersion`` in the written Scale is a precondition (409 Conflict).
That is what ``kubectl scale`` and a HorizontalPodAutoscaler rely on.
"""

from __future__ import annotations

from typing import Any

from kube_emulator.apiserver import errors
from kube_emulator.apiserver.resources import ResourceInfo
from kube_emulator.apiserver.store import Obj, ObjectStore


def _path(json_path: str) -> list[str]:
    return [part for part in json_path.strip().lstrip(".").split(".") if part]


def _read(obj: Obj, json_path: str) -> Any:
    current: Any = obj
    for part in _path(json_path):
        if not isinstance(current, dict):
            return None
        current = current.get(part)
    return current


def read_scale(info: ResourceInfo, obj: Obj) -> Obj:
    """The Scale view of ``obj``."""
    assert info.scale is not None
    meta = obj["metadata"]
    status: dict[str, Any] = {"replicas": _read(obj, info.scale.status_replicas_path) or 0}
    if info.scale.label_selector_path:
        selector = _read(obj, info.scale.label_selector_path)
        if selector:
            status["selector"] = selector
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {key: meta[key] for key in (
            "name", "namespace", "uid", "resourceVersion", "creationTimestamp") if key in meta},
        "spec": {"replicas": _read(obj, info.scale.spec_replicas_path) or 0},
        "status": status,
    }


def write_scale(store: ObjectStore, info: ResourceInfo, namespace: str | None, name: str,
                scale: Obj, manager: str | None = None) -> Obj:
    """Set the resource's replicas from a Scale body and return the new Scale; ``manager``
    then owns the replicas field (managedFields entry with subresource ``scale``)."""
    assert info.scale is not None
    replicas = (scale.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise errors.invalid("Scale.autoscaling", name, "autoscaling", "Scale", [{
            "reason": "FieldValueInvalid", "field": "spec.replicas",
            "message": f"Invalid value: {replicas}: must be greater than or equal to 0"}])
    obj = store.get(info, namespace, name)
    wanted_rv = (scale.get("metadata") or {}).get("resourceVersion")
    if wanted_rv and wanted_rv != obj["metadata"]["resourceVersion"]:
        raise errors.conflict(info.group, info.plural, name,
                                 "the object has been modified; please apply your changes "
                                 "to the latest version and try again")
    target: Any = obj
    parts = _path(info.scale.spec_replicas_path)
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = replicas
    return read_scale(info, store.update(info, namespace, name, obj, manager=manager,
                                         owner_subresource="scale"))
