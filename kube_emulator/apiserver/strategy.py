"""Per-resource rules of the emulated API server (what kube-apiserver calls strategies).

What a create or update does beyond storing the body: the body's kind and namespace must
fit the URL; names are RFC 1123 subdomains; namespaces start Active with the ``kubernetes``
finalizer; pods start Pending and their spec is immutable afterwards (but for images,
tolerations and deadlines); the defaults and write-time conversions of built-in kinds are
:mod:`~kube_emulator.apiserver.defaults`'s; unknown fields are dropped (an error with
``fieldValidation=Strict``, a warning with ``Warn``); custom resources with a status
subresource drop status on create and are admitted against their schema; CRDs are checked
and become Established. Deletion rules decide the grace period
(graceful only for bound, unfinished pods) and when a deleting object is gone.

Not emulated (documented differences): the rest of pod and service validation (a pod without
``image`` is accepted, since the local runtime ignores images), resource quotas, limit ranges.
"""

from __future__ import annotations

import contextvars
import copy
import re
from collections.abc import Callable
from typing import Any

from kube_emulator.apiserver import defaults, errors
from kube_emulator.apiserver.openapi import prune_builtin
from kube_emulator.apiserver.resources import (
    CRD_KEY,
    DEPLOYMENT_KEY,
    NAMESPACE_KEY,
    POD_KEY,
    PVC_KEY,
    SERVICE_KEY,
    ResourceInfo,
    validate_crd,
)
from kube_emulator.apiserver.schema import admit_custom_resource
from kube_emulator.times import now_rfc3339

Obj = dict[str, Any]

# Warnings of the request being served (a fresh list per request, set by the HTTP layer),
# sent back as ``Warning`` headers, which kubectl prints.
WARNINGS: contextvars.ContextVar[list[str]] = contextvars.ContextVar("warnings")
FOREGROUND = "foregroundDeletion"
DEFAULT_POD_GRACE = 30
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_body_kind(info: ResourceInfo, body: Any) -> None:
    """400 unless ``body`` is an object whose kind/apiVersion (when given) fit ``info``."""
    if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
        raise errors.bad_request("the request body must be a JSON object with a "
                                    "'metadata' object")
    kind = body.get("kind")
    if kind not in (None, "", info.kind):
        raise errors.bad_request(
            f"the body's kind {kind!r} does not match the resource {info.qualified} "
            f"(kind {info.kind!r})")
    api_version = body.get("apiVersion")
    group = api_version.rpartition("/")[0] if isinstance(api_version, str) else ""
    if api_version not in (None, "") and group != info.group:
        raise errors.bad_request(
            f"the body's apiVersion {api_version!r} does not match {info.api_version!r}")


def place_namespace(info: ResourceInfo, namespace: str | None, body: Obj) -> str:
    """Set the body's namespace from the URL (400 on a mismatch); "" for cluster scope."""
    meta = body.setdefault("metadata", {})
    if not info.namespaced:
        meta.pop("namespace", None)
        return ""
    if not namespace:
        raise errors.bad_request(f"{info.plural} is namespaced: the request needs a "
                                    "namespace (/namespaces/NAMESPACE/...)")
    if meta.get("namespace") not in (None, "", namespace):
        raise errors.bad_request(
            "the namespace of the provided object does not match the namespace sent on "
            f"the request ({meta.get('namespace')!r} != {namespace!r})")
    meta["namespace"] = namespace
    return namespace


def _invalid(info: ResourceInfo, name: str, causes: list[dict[str, str]]) -> errors.ApiError:
    return errors.invalid(info.kind_qualified, name, info.group, info.plural, causes)


def admit(info: ResourceInfo, obj: Obj, field_validation: str | None = None) -> None:
    """Validate, prune unknown fields and (for custom resources) default ``obj`` in place;
    422 if bad. Unknown fields are a 400 under ``fieldValidation=Strict`` and a warning in
    :data:`WARNINGS` under ``Warn``, as kube-apiserver's decoder treats them."""
    name = obj["metadata"].get("name", "")
    if info.storage_key == CRD_KEY:
        problems = validate_crd(obj)
        if problems:
            raise _invalid(info, name, [{"reason": "FieldValueInvalid", "field": f,
                                         "message": m} for f, m in problems])
    causes: list[dict[str, str]] = []
    pruned: list[str] = []
    if info.schema is not None:
        causes = admit_custom_resource(info.schema, obj, pruned)
    else:
        pruned = prune_builtin(info, obj)
    directive = (field_validation or "").lower()
    if pruned and directive == "strict":
        unknown = ", ".join(f'unknown field "{p}"' for p in pruned)
        raise errors.bad_request(f"strict decoding error: {unknown}")
    sink = WARNINGS.get(None)
    if pruned and directive == "warn" and sink is not None:
        sink.extend(f'unknown field "{p}"' for p in pruned)
    if causes:
        raise _invalid(info, name, causes)
    if not _NAME_RE.match(name) or len(name) > 253:
        raise _invalid(info, name, [{
            "reason": "FieldValueInvalid", "field": "metadata.name",
            "message": f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist '
                       "of lower case alphanumeric characters, '-' or '.', and must start and "
                       "end with an alphanumeric character"}])


def prepare_create(info: ResourceInfo, obj: Obj, service_ip: Callable[[], str]) -> None:
    """Initial status and create-only defaults of a new object, per resource, after
    :func:`~kube_emulator.apiserver.defaults.on_write` (``service_ip`` allocates a Service's
    clusterIP)."""
    if info.storage_key == NAMESPACE_KEY:
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
    elif info.storage_key == POD_KEY:
        obj["status"] = defaults.initial_pod_status(obj)
    elif info.storage_key == SERVICE_KEY:
        defaults.new_service(obj, service_ip)
    elif info.storage_key == PVC_KEY:
        obj["status"] = defaults.bound_claim_status(obj)
    elif info.storage_key == DEPLOYMENT_KEY:
        obj["status"] = {}  # the deployment controller's to fill
    elif info.schema is not None and info.status:
        obj.pop("status", None)  # custom resources ignore status on create
    elif info.storage_key == CRD_KEY:
        obj["status"] = crd_status(obj)


# What kube-apiserver lets an update change in a pod's spec (validation.ValidatePodUpdate).
_POD_MUTABLE = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds")
_POD_FORBIDDEN = (
    "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only "
    "additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be "
    "set to 1 if it was previously negative)")


def _pod_spec_essence(spec: Obj) -> Obj:
    essence = {k: v for k, v in spec.items() if k not in _POD_MUTABLE}
    for key in ("containers", "initContainers"):
        if isinstance(essence.get(key), list):
            essence[key] = [{k: v for k, v in c.items() if k != "image"}
                            if isinstance(c, dict) else c for c in essence[key]]
    return essence


def check_update(info: ResourceInfo, old: Obj, new: Obj) -> None:
    """422 for updates kube-apiserver forbids: a pod's spec is immutable except for images,
    activeDeadlineSeconds, tolerations and terminationGracePeriodSeconds (``spec.nodeName``
    is set through the ``pods/binding`` subresource)."""
    immutable = defaults.check_immutable(info, old, new)
    if immutable:
        raise _invalid(info, old["metadata"]["name"], immutable)
    if info.storage_key != POD_KEY:
        return
    # Compared as decoded: a field the decoder drops (unknown) is no change.
    new = copy.deepcopy(new)
    prune_builtin(info, new)
    if _pod_spec_essence(old.get("spec") or {}) != _pod_spec_essence(new.get("spec") or {}):
        raise _invalid(info, old["metadata"]["name"], [
            {"reason": "FieldValueForbidden", "field": "spec", "message": _POD_FORBIDDEN}])


def crd_status(crd: Obj) -> Obj:
    """The status the apiextensions controllers give an accepted CRD (Established at once)."""
    now = now_rfc3339()
    conditions = [
        {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": now}
        for t, r, m in (("NamesAccepted", "NoConflicts", "no conflicts found"),
                        ("Established", "InitialNamesAccepted",
                         "the initial names have been accepted"))
    ]
    spec = crd.get("spec") or {}
    storage = [v.get("name") for v in spec.get("versions") or () if v.get("storage")]
    return {"conditions": conditions, "acceptedNames": dict(spec.get("names") or {}),
            "storedVersions": storage}


def deletion_grace(info: ResourceInfo, obj: Obj, options: Obj, pods_graceful: bool) -> int:
    """Seconds a delete waits before the object may go: 0 except for bound, unfinished pods
    (the request's ``gracePeriodSeconds``, else the pod's ``terminationGracePeriodSeconds``)."""
    if info.storage_key != POD_KEY or not pods_graceful:
        return 0
    spec = obj.get("spec") or {}
    if not spec.get("nodeName"):
        return 0
    if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return 0
    requested = options.get("gracePeriodSeconds")
    if requested is not None:
        return max(0, int(requested))
    return int(spec.get("terminationGracePeriodSeconds", DEFAULT_POD_GRACE))


def finalized(info: ResourceInfo, obj: Obj) -> bool:
    """Whether a deleting object has nothing left holding it (finalizers, a grace period, and
    for namespaces the ``spec.finalizers`` the namespace controller clears)."""
    meta = obj["metadata"]
    if not meta.get("deletionTimestamp") or meta.get("finalizers"):
        return False
    if meta.get("deletionGracePeriodSeconds"):
        return False
    return not (info.storage_key == NAMESPACE_KEY and (obj.get("spec") or {}).get("finalizers"))


def spec_changed(old: Obj, new: Obj, has_status: bool) -> bool:
    """Whether anything outside metadata (and status, with a status subresource) changed:
    the rule for bumping ``metadata.generation``."""
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if has_status else set())
    return ({k: v for k, v in old.items() if k not in skip}
            != {k: v for k, v in new.items() if k not in skip})


def same_content(old: Obj, new: Obj) -> bool:
    """Whether an update changes nothing (then no new resourceVersion and no event)."""
    return ({k: v for k, v in old.items() if k not in ("apiVersion", "kind")}
            == {k: v for k, v in new.items() if k not in ("apiVersion", "kind")})
