"""The object store behind the emulated API server: CRUD, resourceVersion, watch history.

Guarantees, as kube-apiserver gives them:

- one global, strictly increasing ``resourceVersion`` (a decimal string); every write that
  changes an object bumps it; a write that changes nothing (a no-op update) does not;
- ``metadata.generation`` starts at 1 and grows only when the object changes outside
  ``metadata`` (and outside ``status`` for resources with a status subresource);
- with a status subresource, writes to the resource keep the stored status and writes to
  ``/status`` change only the status;
- an update whose ``metadata.resourceVersion`` is stale fails with 409 Conflict;
- deletion honours finalizers (``deletionTimestamp`` is set and the object stays until the
  last finalizer is removed) and the graceful deletion of bound pods (see :meth:`delete`);
- a watch started at resourceVersion R sees every change after R exactly once and in order,
  from a bounded history; an R older than that history is answered with 410 Expired.

All mutations happen on the server's event loop; a lock makes the read-only helpers used by
tests from other threads (:meth:`get`, :meth:`list`) safe.
"""

from __future__ import annotations

import asyncio
import copy
import random
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from elastic_operator.local import apierrors
from elastic_operator.local.apiresources import (
    BUILTIN_RESOURCES,
    CRD_KEY,
    NAMESPACE_KEY,
    POD_KEY,
    ResourceInfo,
    resources_from_crd,
    validate_crd,
)
from elastic_operator.local.apischema import admit_custom_resource
from elastic_operator.local.selectors import FieldSelector, LabelSelector

Obj = dict[str, Any]
StorageKey = tuple[str, str]
ObjKey = tuple[str, str]  # (namespace or "", name)

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"
FOREGROUND = "foregroundDeletion"
DEFAULT_POD_GRACE = 30


def now_rfc3339(offset_seconds: int = 0) -> str:
    """The current UTC time in the RFC 3339 form Kubernetes timestamps use."""
    moment = datetime.now(UTC) + timedelta(seconds=offset_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``obj`` is the state after it, ``old`` the state before (None on ADDED)."""

    rv: int
    key: StorageKey
    type: str
    obj: Obj
    old: Obj | None


@dataclass(eq=False)
class Watcher:
    """A live watch: matching events are put on ``queue`` (``None`` means: closed)."""

    info: ResourceInfo
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)

    def _passes(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(obj)

    def translate(self, event: WatchEvent) -> tuple[str, Obj] | None:
        """The event this watcher sees: a change that makes an object start (stop) matching
        the selectors is an ADDED (DELETED), as in kube-apiserver's watch cache."""
        now, before = self._passes(event.obj), self._passes(event.old)
        if event.type == "DELETED":
            return ("DELETED", event.obj) if now else None
        if now and before:
            return ("MODIFIED", event.obj)
        if now:
            return ("ADDED", event.obj)
        if before and event.old is not None:
            gone = copy.deepcopy(event.old)
            gone["metadata"]["resourceVersion"] = str(event.rv)
            return ("DELETED", gone)
        return None


class ObjectStore:
    """Objects by (group, plural) and (namespace, name), with the resource registry."""

    def __init__(self, *, history_size: int = 2000, pods_graceful: bool = True) -> None:
        self.pods_graceful = pods_graceful
        self.lock = threading.RLock()
        self._resources: dict[tuple[str, str, str], ResourceInfo] = {}
        self._objects: dict[StorageKey, dict[ObjKey, Obj]] = {}
        self._uids: dict[str, tuple[StorageKey, ObjKey]] = {}
        self._dependents: dict[str, set[tuple[StorageKey, ObjKey]]] = {}
        self._rv = 0
        self._history: deque[WatchEvent] = deque(maxlen=history_size)
        self._compacted_rv = 0
        self._watchers: set[Watcher] = set()
        self.on_change: Callable[[], None] = lambda: None
        self.gc_candidates: set[tuple[StorageKey, ObjKey]] = set()
        for info in BUILTIN_RESOURCES:
            self.register(info)
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(self.resource("", "v1", "namespaces"), None,
                        {"metadata": {"name": ns}})

    # ----- registry -------------------------------------------------------------------
    def register(self, info: ResourceInfo) -> None:
        """Serve ``info`` (replacing an earlier description of the same group/version/plural)."""
        with self.lock:
            self._resources[(info.group, info.version, info.plural)] = info
            self._objects.setdefault(info.storage_key, {})

    def unregister(self, group: str, plural: str) -> None:
        """Stop serving every version of ``plural.group`` and drop its objects."""
        with self.lock:
            for key in [k for k in self._resources if (k[0], k[2]) == (group, plural)]:
                del self._resources[key]
            for okey, obj in self._objects.pop((group, plural), {}).items():
                self._forget((group, plural), okey, obj)

    def resources(self) -> list[ResourceInfo]:
        """Every served resource."""
        with self.lock:
            return list(self._resources.values())

    def resource(self, group: str, version: str, plural: str) -> ResourceInfo:
        """The served resource, or 404 NotFound."""
        info = self._resources.get((group, version, plural))
        if info is None:
            raise apierrors.ApiError(
                404, "NotFound", f"the server could not find the requested resource "
                                 f"({plural}.{group or 'core'}/{version})")
        return info

    def info_for(self, key: StorageKey) -> ResourceInfo | None:
        """Some served version of a stored resource (None once unregistered)."""
        return next((i for i in self._resources.values() if i.storage_key == key), None)

    # ----- reads ----------------------------------------------------------------------
    @property
    def resource_version(self) -> str:
        """The latest resourceVersion handed out."""
        return str(self._rv)

    def _stored(self, info: ResourceInfo, namespace: str | None, name: str) -> Obj:
        obj = self._objects.get(info.storage_key, {}).get((namespace or "", name))
        if obj is None:
            raise apierrors.not_found(info.group, info.plural, name)
        return obj

    def _out(self, info: ResourceInfo, obj: Obj) -> Obj:
        result = {"apiVersion": info.api_version, "kind": info.kind}
        result.update((k, copy.deepcopy(v)) for k, v in obj.items()
                      if k not in ("apiVersion", "kind"))
        return result

    def get(self, info: ResourceInfo, namespace: str | None, name: str) -> Obj:
        """A copy of one object, or 404 NotFound."""
        with self.lock:
            return self._out(info, self._stored(info, namespace, name))

    def list(self, info: ResourceInfo, namespace: str | None = None,
             labels: LabelSelector | None = None,
             fields: FieldSelector | None = None) -> tuple[list[Obj], str]:
        """Matching objects sorted by namespace and name, and the collection resourceVersion."""
        labels = labels or LabelSelector()
        fields = fields or FieldSelector()
        with self.lock:
            items = []
            for (ns, _), obj in sorted(self._objects.get(info.storage_key, {}).items()):
                if namespace is not None and ns != namespace:
                    continue
                if labels.matches(obj["metadata"].get("labels")) and fields.matches(obj):
                    items.append(self._out(info, obj))
            return items, self.resource_version

    def find_uid(self, uid: str) -> tuple[StorageKey, ObjKey] | None:
        """Where the object with this uid lives, if it exists."""
        return self._uids.get(uid)

    def raw(self, key: StorageKey, okey: ObjKey) -> Obj | None:
        """The stored object itself (for the garbage collector; do not mutate)."""
        return self._objects.get(key, {}).get(okey)

    def iter_objects(self, key: StorageKey) -> Iterator[tuple[ObjKey, Obj]]:
        """A snapshot of the stored objects of one resource."""
        return iter(list(self._objects.get(key, {}).items()))

    def dependents_of(self, uid: str) -> list[tuple[StorageKey, ObjKey]]:
        """Objects whose ownerReferences name ``uid``."""
        return sorted(self._dependents.get(uid, ()))

    # ----- writes ---------------------------------------------------------------------
    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _emit(self, info_key: StorageKey, kind: str, obj: Obj, old: Obj | None) -> None:
        if len(self._history) == self._history.maxlen:
            self._compacted_rv = self._history[0].rv
        event = WatchEvent(int(obj["metadata"]["resourceVersion"]), info_key, kind,
                           copy.deepcopy(obj), copy.deepcopy(old) if old else None)
        self._history.append(event)
        for watcher in list(self._watchers):
            if watcher.info.storage_key == info_key:
                self._deliver(watcher, event)
        self.on_change()

    def _deliver(self, watcher: Watcher, event: WatchEvent) -> None:
        seen = watcher.translate(event)
        if seen is not None:
            kind, obj = seen
            watcher.queue.put_nowait((kind, self._out(watcher.info, obj)))

    def _index(self, key: StorageKey, okey: ObjKey, obj: Obj) -> None:
        meta = obj["metadata"]
        self._uids[meta["uid"]] = (key, okey)
        for ref in meta.get("ownerReferences") or ():
            self._dependents.setdefault(ref.get("uid", ""), set()).add((key, okey))

    def _forget(self, key: StorageKey, okey: ObjKey, obj: Obj) -> None:
        meta = obj["metadata"]
        self._uids.pop(meta["uid"], None)
        for ref in meta.get("ownerReferences") or ():
            deps = self._dependents.get(ref.get("uid", ""))
            if deps is not None:
                deps.discard((key, okey))
                if not deps:
                    del self._dependents[ref.get("uid", "")]

    def _check_namespace(self, info: ResourceInfo, namespace: str | None, body: Obj) -> str:
        meta = body.setdefault("metadata", {})
        if not info.namespaced:
            meta.pop("namespace", None)
            return ""
        if not namespace:
            raise apierrors.bad_request(f"{info.plural} is namespaced: the request needs a "
                                        "namespace (/namespaces/NAMESPACE/...)")
        if meta.get("namespace") not in (None, "", namespace):
            raise apierrors.bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                f"the request ({meta.get('namespace')!r} != {namespace!r})")
        meta["namespace"] = namespace
        return namespace

    def _check_body_kind(self, info: ResourceInfo, body: Obj) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise apierrors.bad_request("the request body must be a JSON object with a "
                                        "'metadata' object")
        kind = body.get("kind")
        if kind not in (None, "", info.kind):
            raise apierrors.bad_request(
                f"the body's kind {kind!r} does not match the resource {info.qualified} "
                f"(kind {info.kind!r})")
        api_version = body.get("apiVersion")
        if api_version not in (None, "") and api_version.split("/")[0] != (
                info.group or "v1") and api_version != info.api_version:
            raise apierrors.bad_request(
                f"the body's apiVersion {api_version!r} does not match {info.api_version!r}")

    def _admit(self, info: ResourceInfo, obj: Obj) -> None:
        name = obj["metadata"].get("name", "")
        if info.storage_key == CRD_KEY:
            problems = validate_crd(obj)
            if problems:
                raise apierrors.invalid(info.kind_qualified, name, info.group, info.plural, [
                    {"reason": "FieldValueInvalid", "field": f, "message": m}
                    for f, m in problems])
        if info.schema is not None:
            causes = admit_custom_resource(info.schema, obj)
            if causes:
                raise apierrors.invalid(info.kind_qualified, name, info.group, info.plural,
                                        causes)
        if not _NAME_RE.match(name) or len(name) > 253:
            raise apierrors.invalid(info.kind_qualified, name, info.group, info.plural, [{
                "reason": "FieldValueInvalid", "field": "metadata.name",
                "message": f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must '
                           "consist of lower case alphanumeric characters, '-' or '.', and "
                           "must start and end with an alphanumeric character"}])

    def create(self, info: ResourceInfo, namespace: str | None, body: Obj) -> Obj:
        """Store a new object (generateName, uid, timestamps, rv, generation=1 filled in)."""
        with self.lock:
            self._check_body_kind(info, body)
            obj = copy.deepcopy(body)
            ns = self._check_namespace(info, namespace, obj)
            meta = obj["metadata"]
            if ns:
                self._check_namespace_open(ns)
            if not meta.get("name"):
                if not meta.get("generateName"):
                    raise apierrors.invalid(info.kind_qualified, "", info.group, info.plural, [{
                        "reason": "FieldValueRequired", "field": "metadata.name",
                        "message": "Required value: name or generateName is required"}])
                suffix = "".join(random.choices(_GENERATE_CHARS, k=5))
                meta["name"] = meta["generateName"] + suffix
            if (ns, meta["name"]) in self._objects[info.storage_key]:
                raise apierrors.already_exists(info.group, info.plural, meta["name"])
            for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
                meta.pop(key, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["generation"] = 1
            obj["apiVersion"], obj["kind"] = info.api_version, info.kind
            self._prepare_create(info, obj)
            self._admit(info, obj)
            meta["resourceVersion"] = str(self._next_rv())
            okey = (ns, meta["name"])
            self._objects[info.storage_key][okey] = obj
            self._index(info.storage_key, okey, obj)
            if meta.get("ownerReferences"):
                self.gc_candidates.add((info.storage_key, okey))
            if info.storage_key == CRD_KEY:
                self._serve_crd(obj)
            self._emit(info.storage_key, "ADDED", obj, None)
            return self._out(info, obj)

    def _check_namespace_open(self, ns: str) -> None:
        namespace = self._objects[NAMESPACE_KEY].get(("", ns))
        if namespace is None:
            raise apierrors.not_found("", "namespaces", ns)
        if namespace["metadata"].get("deletionTimestamp"):
            raise apierrors.forbidden(f"unable to create new content in namespace {ns} "
                                      "because it is being terminated")

    def _prepare_create(self, info: ResourceInfo, obj: Obj) -> None:
        if info.storage_key == NAMESPACE_KEY:
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}
        elif info.storage_key == POD_KEY:
            spec = obj.setdefault("spec", {})
            spec.setdefault("terminationGracePeriodSeconds", DEFAULT_POD_GRACE)
            spec.setdefault("restartPolicy", "Always")
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        elif info.schema is not None and info.status:
            obj.pop("status", None)  # custom resources ignore status on create
        elif info.storage_key == CRD_KEY:
            obj["status"] = _crd_status(obj)

    def _serve_crd(self, crd: Obj) -> None:
        """(Re)register the resources of a CRD: every served version, nothing else."""
        served = resources_from_crd(crd)
        spec = crd["spec"]
        for key in [k for k in self._resources
                    if (k[0], k[2]) == (spec["group"], spec["names"]["plural"])]:
            del self._resources[key]
        for info in served:
            self.register(info)

    def update(self, info: ResourceInfo, namespace: str | None, name: str, body: Obj,
               subresource: str | None = None) -> Obj:
        """Replace an object (PUT); ``subresource="status"`` writes only the status."""
        with self.lock:
            self._check_body_kind(info, body)
            old = self._stored(info, namespace, name)
            new = copy.deepcopy(body)
            ns = self._check_namespace(info, namespace, new)
            meta = new["metadata"]
            if meta.get("name") not in (None, name):
                raise apierrors.bad_request(
                    f"the name of the object ({meta.get('name')}) does not match the name on "
                    f"the URL ({name})")
            wanted_rv = meta.get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise apierrors.conflict(info.group, info.plural, name,
                                         "the object has been modified; please apply your "
                                         "changes to the latest version and try again")
            if subresource == "status":
                merged = copy.deepcopy(old)
                if "status" in new:
                    merged["status"] = new["status"]
                else:
                    merged.pop("status", None)
                new = merged
            else:
                for key in ("uid", "creationTimestamp", "deletionTimestamp",
                            "deletionGracePeriodSeconds", "generation"):
                    if key in old["metadata"]:
                        meta[key] = old["metadata"][key]
                    else:
                        meta.pop(key, None)
                meta["name"], meta["namespace"] = name, ns
                if not ns:
                    meta.pop("namespace")
                if info.status:
                    if "status" in old:
                        new["status"] = copy.deepcopy(old["status"])
                    else:
                        new.pop("status", None)
            new["apiVersion"], new["kind"] = info.api_version, info.kind
            return self._commit(info, (ns, name), old, new)

    def _commit(self, info: ResourceInfo, okey: ObjKey, old: Obj, new: Obj) -> Obj:
        meta = new["metadata"]
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if old["metadata"].get("deletionTimestamp"):
            added = set(meta.get("finalizers") or ()) - set(
                old["metadata"].get("finalizers") or ())
            if added:
                raise apierrors.invalid(info.kind_qualified, okey[1], info.group, info.plural, [{
                    "reason": "FieldValueForbidden", "field": "metadata.finalizers",
                    "message": "Forbidden: no new finalizers can be added if the object is "
                               f"being deleted, found new finalizers {sorted(added)}"}])
        if _spec_part(new, info.status) != _spec_part(old, info.status):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if info.schema is not None:
            self._admit(info, new)
        if new == old or _same_without_api(new, old):
            return self._out(info, old)
        if meta.get("finalizers") == []:
            del meta["finalizers"]
        meta["resourceVersion"] = str(self._next_rv())
        self._objects[info.storage_key][okey] = new
        self._forget(info.storage_key, okey, old)
        self._index(info.storage_key, okey, new)
        if meta.get("ownerReferences") != old["metadata"].get("ownerReferences"):
            self.gc_candidates.add((info.storage_key, okey))
        if _finalized(info, new):
            self._remove(info.storage_key, okey, new, bump=False)
        else:
            if info.storage_key == CRD_KEY:
                self._serve_crd(new)
            self._emit(info.storage_key, "MODIFIED", new, old)
        return self._out(info, new)

    def replace_raw(self, key: StorageKey, okey: ObjKey, new: Obj) -> None:
        """Write a changed object the server itself computed (GC, namespace finalization)."""
        with self.lock:
            info = self.info_for(key)
            old = self.raw(key, okey)
            if info is None or old is None:
                return
            self._commit(info, okey, old, copy.deepcopy(new))

    def _remove(self, key: StorageKey, okey: ObjKey, obj: Obj, *, bump: bool = True) -> None:
        self._objects[key].pop(okey, None)
        self._forget(key, okey, obj)
        if bump:
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self._next_rv())
        for ref in obj["metadata"].get("ownerReferences") or ():
            owner = self._uids.get(ref.get("uid", ""))
            if owner is not None:
                self.gc_candidates.add(owner)
        for dep in self._dependents.get(obj["metadata"]["uid"], ()):
            self.gc_candidates.add(dep)
        if key == CRD_KEY:
            self._emit(key, "DELETED", obj, None)
            self.unregister(obj["spec"]["group"], obj["spec"]["names"]["plural"])
            return
        self._emit(key, "DELETED", obj, None)

    def delete(self, info: ResourceInfo, namespace: str | None, name: str,
               options: Obj | None = None) -> Obj:
        """Delete an object, honouring finalizers, graceful pod deletion and propagation.

        A pod bound to a node (``spec.nodeName``) that is not Succeeded/Failed is deleted
        gracefully when ``pods_graceful`` is on: it gets ``deletionTimestamp`` and
        ``deletionGracePeriodSeconds`` (from the options, else the pod's
        ``terminationGracePeriodSeconds``) and is removed when deleted again with
        ``gracePeriodSeconds=0`` (what a kubelet does once its containers stopped).
        Unbound or finished pods, and every other object without finalizers, go at once.
        ``propagationPolicy`` Foreground adds the ``foregroundDeletion`` finalizer (the garbage
        collector removes it once blocking dependents are gone); Orphan strips this owner
        from its dependents' ownerReferences before the owner goes.
        """
        options = options or {}
        with self.lock:
            obj = self._stored(info, namespace, name)
            okey = (namespace or "" if info.namespaced else "", name)
            pre = options.get("preconditions") or {}
            meta = obj["metadata"]
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise apierrors.conflict(info.group, info.plural, name,
                                         f"Precondition failed: UID in precondition: "
                                         f"{pre['uid']}, UID in object meta: {meta['uid']}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise apierrors.conflict(info.group, info.plural, name,
                                         "the object has been modified; please apply your "
                                         "changes to the latest version and try again")
            policy = options.get("propagationPolicy")
            if policy is None and options.get("orphanDependents") is True:
                policy = "Orphan"
            if policy not in (None, "Background", "Foreground", "Orphan"):
                raise apierrors.bad_request(
                    f"propagationPolicy {policy!r} is invalid: use Background, Foreground "
                    "or Orphan")
            new = copy.deepcopy(obj)
            finalizers = list(new["metadata"].get("finalizers") or ())
            if policy == "Orphan":
                self._orphan_dependents(meta["uid"])
            elif policy == "Foreground" and FOREGROUND not in finalizers:
                finalizers.append(FOREGROUND)
                self.gc_candidates.add((info.storage_key, okey))
            if info.storage_key == CRD_KEY:
                finalizers.append("customresourcecleanup.apiextensions.k8s.io")
            grace = self._grace(info, obj, options)
            terminating = info.storage_key == NAMESPACE_KEY
            if not finalizers and not grace and not terminating:
                self._remove(info.storage_key, okey, obj)
                return self._out(info, obj)
            if meta.get("deletionTimestamp"):
                current = meta.get("deletionGracePeriodSeconds") or 0
                if grace < current:
                    new["metadata"]["deletionGracePeriodSeconds"] = grace
                    return self._commit(info, okey, obj, new)
                return self._out(info, obj)
            new["metadata"]["deletionTimestamp"] = now_rfc3339(grace)
            new["metadata"]["deletionGracePeriodSeconds"] = grace
            if finalizers:
                new["metadata"]["finalizers"] = list(dict.fromkeys(finalizers))
            if terminating:
                new["status"] = {"phase": "Terminating"}
                self.gc_candidates.add((info.storage_key, okey))
            if info.storage_key == CRD_KEY:
                self.gc_candidates.add((info.storage_key, okey))
            return self._commit(info, okey, obj, new)

    def _grace(self, info: ResourceInfo, obj: Obj, options: Obj) -> int:
        if info.storage_key != POD_KEY:
            return 0
        requested = options.get("gracePeriodSeconds")
        if not self.pods_graceful:
            return 0
        if not (obj.get("spec") or {}).get("nodeName"):
            return 0
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return 0
        if requested is not None:
            return max(0, int(requested))
        return int((obj.get("spec") or {}).get("terminationGracePeriodSeconds",
                                                DEFAULT_POD_GRACE))

    def _orphan_dependents(self, owner_uid: str) -> None:
        for key, okey in self.dependents_of(owner_uid):
            dep = self.raw(key, okey)
            if dep is None:
                continue
            new = copy.deepcopy(dep)
            refs = [r for r in new["metadata"].get("ownerReferences") or ()
                    if r.get("uid") != owner_uid]
            if refs:
                new["metadata"]["ownerReferences"] = refs
            else:
                new["metadata"].pop("ownerReferences", None)
            self.replace_raw(key, okey, new)

    def remove_now(self, key: StorageKey, okey: ObjKey) -> None:
        """Remove an object whose finalization the server itself completed."""
        with self.lock:
            obj = self.raw(key, okey)
            if obj is not None:
                self._remove(key, okey, obj)

    # ----- watch ----------------------------------------------------------------------
    def watch(self, info: ResourceInfo, namespace: str | None, labels: LabelSelector,
              fields: FieldSelector, resource_version: str | None) -> Watcher:
        """Start a watch: events after ``resource_version`` are queued at once (synthetic
        ADDED events for every current object when it is unset or "0"), then live ones."""
        with self.lock:
            watcher = Watcher(info, namespace, labels, fields)
            if resource_version in (None, "", "0"):
                for _, obj in sorted(self._objects.get(info.storage_key, {}).items()):
                    if watcher._passes(obj):
                        watcher.queue.put_nowait(("ADDED", self._out(info, obj)))
            else:
                try:
                    since = int(resource_version)
                except ValueError:
                    raise apierrors.bad_request(
                        f"invalid resourceVersion {resource_version!r}: it must be a value "
                        "a list or watch returned") from None
                if since < self._compacted_rv:
                    raise apierrors.gone(
                        f"too old resource version: {since} ({self._compacted_rv})")
                for event in self._history:
                    if event.rv > since and event.key == info.storage_key:
                        self._deliver(watcher, event)
            self._watchers.add(watcher)
            return watcher

    def stop_watch(self, watcher: Watcher) -> None:
        """Stop delivering to ``watcher``."""
        with self.lock:
            self._watchers.discard(watcher)

    def close_watches(self) -> None:
        """End every watch stream (server shutdown)."""
        with self.lock:
            for watcher in self._watchers:
                watcher.queue.put_nowait(None)
            self._watchers.clear()


def _crd_status(crd: Obj) -> Obj:
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


def _finalized(info: ResourceInfo, obj: Obj) -> bool:
    """Whether a deleting object has nothing left holding it (finalizers, grace period, and for
    namespaces the ``spec.finalizers`` the namespace controller clears)."""
    meta = obj["metadata"]
    if not meta.get("deletionTimestamp") or meta.get("finalizers"):
        return False
    if meta.get("deletionGracePeriodSeconds"):
        return False
    return not (info.storage_key == NAMESPACE_KEY and (obj.get("spec") or {}).get("finalizers"))


def _spec_part(obj: Obj, has_status: bool) -> Obj:
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if has_status else set())
    return {k: v for k, v in obj.items() if k not in skip}


def _same_without_api(new: Obj, old: Obj) -> bool:
    return {k: v for k, v in new.items() if k not in ("apiVersion", "kind")} == {
        k: v for k, v in old.items() if k not in ("apiVersion", "kind")}
