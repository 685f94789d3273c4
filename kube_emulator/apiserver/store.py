"""The object store behind the emulated API server: CRUD, resourceVersion, ownership index.

Guarantees, as kube-apiserver gives them:

- one global, strictly increasing ``resourceVersion`` (a decimal string); every write that
  changes an object bumps it; a write that changes nothing (a no-op update) does not;
- ``metadata.generation`` starts at 1 and grows only when the object changes outside
  ``metadata`` (and outside ``status`` for resources with a status subresource), and when
  its deletion is marked;
- with a status subresource, writes to the resource keep the stored status and writes to
  ``/status`` change only the status;
- an update whose ``metadata.resourceVersion`` is stale fails with 409 Conflict;
- deletion honours finalizers (``deletionTimestamp`` is set and the object stays until the
  last finalizer is removed) and the graceful deletion of bound pods (see :meth:`delete`);
- every change is published to the watch hub (:mod:`~kube_emulator.apiserver.watch`).

Stored objects are never mutated in place: every write stores a new dict, so the watch
history and watch events can share them without copying. Per-resource rules live in
:mod:`~kube_emulator.apiserver.strategy`. All mutations happen on the server's event loop;
a lock makes the read-only helpers used by tests from other threads
(:meth:`ObjectStore.get`, :meth:`ObjectStore.list`) safe.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from kube_emulator.apiserver import defaults, errors, managedfields
from kube_emulator.apiserver.index import SelectorIndex
from kube_emulator.apiserver.ownership import OwnershipIndex
from kube_emulator.apiserver.registry import ResourceRegistry
from kube_emulator.apiserver.resources import (
    BUILTIN_RESOURCES,
    CRD_KEY,
    NAMESPACE_KEY,
    ResourceInfo,
)
from kube_emulator.apiserver.selectors import FieldSelector, LabelSelector
from kube_emulator.apiserver.strategy import (
    DEFAULT_POD_GRACE,
    FOREGROUND,
    admit,
    check_body_kind,
    check_update,
    deletion_grace,
    finalized,
    place_namespace,
    prepare_create,
    same_content,
    spec_changed,
)
from kube_emulator.apiserver.watch import Watcher, WatchHub
from kube_emulator.times import now_rfc3339

Obj = dict[str, Any]
StorageKey = tuple[str, str]
ObjKey = tuple[str, str]  # (namespace or "", name)

def _drop_empty_managed(meta: Obj) -> None:
    if not meta.get("managedFields"):
        meta.pop("managedFields", None)


def clone(value: Any) -> Any:
    """An independent copy of a JSON value (several times faster than copy.deepcopy)."""
    return json.loads(json.dumps(value))


_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_MODIFIED = ("the object has been modified; please apply your changes to the latest version "
             "and try again")


class ObjectStore:
    """Objects by (group, plural) and (namespace, name); ``registry`` says what is served."""

    def __init__(self, *, history_size: int = 2000, pods_graceful: bool = True) -> None:
        self.pods_graceful = pods_graceful
        self.lock = threading.RLock()
        self.registry = ResourceRegistry(BUILTIN_RESOURCES)
        self._objects: dict[StorageKey, dict[ObjKey, Obj]] = {}
        self._indexes: dict[StorageKey, SelectorIndex] = {}  # kept in step with _objects
        self._owners = OwnershipIndex()
        self._rv = 0
        self._next_service_ip = 1
        self._hub = WatchHub(history_size, self._view)
        self.on_change: Callable[[], None] = lambda: None
        self.gc_candidates: set[tuple[StorageKey, ObjKey]] = set()
        namespaces = self.registry.resource("", "v1", "namespaces")
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(namespaces, None,
                        {"metadata": {"name": ns}})

    def unregister(self, group: str, plural: str) -> None:
        """Stop serving every version of ``plural.group``, drop its objects, end its watches."""
        with self.lock:
            self.registry.drop(group, plural)
            self._indexes.pop((group, plural), None)
            for okey, obj in self._objects.pop((group, plural), {}).items():
                self._owners.remove(((group, plural), okey), obj)
            self._hub.close_resource((group, plural))

    # ----- reads ----------------------------------------------------------------------
    @property
    def resource_version(self) -> str:
        """The latest resourceVersion handed out."""
        return str(self._rv)

    def _stored(self, info: ResourceInfo, namespace: str | None, name: str) -> Obj:
        obj = self._objects.get(info.storage_key, {}).get((namespace or "", name))
        if obj is None:
            raise errors.not_found(info.group, info.plural, name)
        return obj

    def _out(self, info: ResourceInfo, obj: Obj) -> Obj:
        result = {"apiVersion": info.api_version, "kind": info.kind}
        result.update((k, clone(v)) for k, v in obj.items()
                      if k not in ("apiVersion", "kind"))
        return result

    def _view(self, info: ResourceInfo, obj: Obj) -> Obj:
        """A read-only view of a stored object at ``info``'s version (shares nested values;
        only for serialising, e.g. watch events)."""
        return {"apiVersion": info.api_version, "kind": info.kind,
                **{k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}}

    def get(self, info: ResourceInfo, namespace: str | None, name: str) -> Obj:
        """A copy of one object, or 404 NotFound."""
        with self.lock:
            return self._out(info, self._stored(info, namespace, name))

    def list(self, info: ResourceInfo, namespace: str | None = None,
             labels: LabelSelector | None = None,
             fields: FieldSelector | None = None) -> tuple[list[Obj], str]:
        """Matching objects sorted by namespace and name, and the collection resourceVersion.

        The selectors are answered through the resource's :class:`SelectorIndex` (cost grows
        with the candidates, not with everything stored); each candidate is still checked
        against the full selectors."""
        labels = labels or LabelSelector()
        fields = fields or FieldSelector()
        with self.lock:
            objects = self._objects.get(info.storage_key, {})
            index = self._indexes.get(info.storage_key)
            keys = index.candidates(objects, namespace, labels, fields) if index else set()
            items = []
            for okey in sorted(keys):
                obj = objects[okey]
                if labels.matches(obj["metadata"].get("labels")) and fields.matches(obj):
                    items.append(self._out(info, obj))
            return items, self.resource_version

    def count(self, info: ResourceInfo, namespace: str | None = None,
              labels: LabelSelector | None = None) -> int:
        """How many objects :meth:`list` would return (no copies made)."""
        labels = labels or LabelSelector()
        with self.lock:
            objects = self._objects.get(info.storage_key, {})
            index = self._indexes.get(info.storage_key)
            keys = index.candidates(objects, namespace, labels, FieldSelector()) if index \
                else set()
            return sum(1 for k in keys if labels.matches(objects[k]["metadata"].get("labels")))

    def find_uid(self, uid: str) -> tuple[StorageKey, ObjKey] | None:
        """Where the object with this uid lives, if it exists."""
        return self._owners.find(uid)

    def raw(self, key: StorageKey, okey: ObjKey) -> Obj | None:
        """The stored object itself (for the garbage collector; do not mutate)."""
        return self._objects.get(key, {}).get(okey)

    def iter_objects(self, key: StorageKey) -> Iterator[tuple[ObjKey, Obj]]:
        """A snapshot of the stored objects of one resource."""
        return iter(list(self._objects.get(key, {}).items()))

    def dependents_of(self, uid: str) -> list[tuple[StorageKey, ObjKey]]:
        """Objects whose ownerReferences name ``uid``."""
        return self._owners.dependents(uid)

    # ----- writes ---------------------------------------------------------------------
    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _emit(self, key: StorageKey, kind: str, obj: Obj, old: Obj | None) -> None:
        self._hub.publish(key, kind, obj, old)
        self.on_change()

    def create(self, info: ResourceInfo, namespace: str | None, body: Obj, *,
               dry_run: bool = False, field_validation: str | None = None,
               manager: str | None = None, applied: bool = False) -> Obj:
        """Store a new object (generateName, uid, timestamps, rv, generation=1 filled in);
        with ``dry_run`` return what would be stored without storing it. ``manager`` owns
        every field (see :mod:`~kube_emulator.apiserver.managedfields`); ``applied``: the
        body's managedFields were computed by a server-side apply and are kept."""
        with self.lock:
            check_body_kind(info, body)
            obj = clone(body)
            ns = place_namespace(info, namespace, obj)
            meta = obj["metadata"]
            if ns:
                self._check_namespace_open(ns)
            if not meta.get("name"):
                if not meta.get("generateName"):
                    raise errors.invalid(info.kind_qualified, "", info.group, info.plural, [{
                        "reason": "FieldValueRequired", "field": "metadata.name",
                        "message": "Required value: name or generateName is required"}])
                suffix = "".join(random.choices(_GENERATE_CHARS, k=5))
                meta["name"] = meta["generateName"] + suffix
            if (ns, meta["name"]) in self._objects.setdefault(info.storage_key, {}):
                raise errors.already_exists(info.group, info.plural, meta["name"])
            for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
                meta.pop(key, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["generation"] = 1
            obj["apiVersion"], obj["kind"] = info.api_version, info.kind
            defaults.on_write(info, obj, DEFAULT_POD_GRACE)
            prepare_create(info, obj, self._service_ip)
            admit(info, obj, field_validation)
            if not applied:
                meta["managedFields"] = managedfields.record_update(
                    None, obj, manager, info.api_version)
            _drop_empty_managed(meta)
            if dry_run:
                return self._out(info, obj)
            meta["resourceVersion"] = str(self._next_rv())
            okey = (ns, meta["name"])
            self._objects[info.storage_key][okey] = obj
            self._indexes.setdefault(info.storage_key, SelectorIndex()).put(okey, obj)
            self._owners.add((info.storage_key, okey), obj)
            if meta.get("ownerReferences"):
                self.gc_candidates.add((info.storage_key, okey))
            if info.storage_key == CRD_KEY:
                self.registry.serve_crd(obj)
            self._emit(info.storage_key, "ADDED", obj, None)
            return self._out(info, obj)

    def _check_namespace_open(self, ns: str) -> None:
        namespace = self._objects.get(NAMESPACE_KEY, {}).get(("", ns))
        if namespace is None:
            raise errors.not_found("", "namespaces", ns)
        if namespace["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(f"unable to create new content in namespace {ns} "
                                      "because it is being terminated")

    def update(self, info: ResourceInfo, namespace: str | None, name: str, body: Obj,
               subresource: str | None = None, *, dry_run: bool = False,
               field_validation: str | None = None, manager: str | None = None,
               applied: bool = False, owner_subresource: str | None = None) -> Obj:
        """Replace an object (PUT); ``subresource="status"`` writes only the status.
        ``manager`` and ``applied`` as for :meth:`create`; ``owner_subresource`` names the
        subresource in the manager's entry when it is not ``subresource`` (scale)."""
        with self.lock:
            check_body_kind(info, body)
            old = self._stored(info, namespace, name)
            new = clone(body)
            ns = place_namespace(info, namespace, new)
            meta = new["metadata"]
            if meta.get("name") not in (None, name):
                raise errors.bad_request(
                    f"the name of the object ({meta.get('name')}) does not match the name on "
                    f"the URL ({name})")
            wanted_rv = meta.get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise errors.conflict(info.group, info.plural, name, _MODIFIED)
            if subresource == "status":
                merged = clone(old)
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
                        new["status"] = clone(old["status"])
                    else:
                        new.pop("status", None)
                defaults.on_write(info, new, DEFAULT_POD_GRACE)
                check_update(info, old, new)
            new["apiVersion"], new["kind"] = info.api_version, info.kind
            if applied:
                new["metadata"]["managedFields"] = clone(body["metadata"]["managedFields"])
            return self._commit(info, (ns, name), old, new, dry_run=dry_run,
                                field_validation=field_validation, manager=manager,
                                subresource=owner_subresource or subresource or "",
                                applied=applied,
                                reset=managedfields.reset_requested(body))

    def _service_ip(self) -> str:
        number = self._next_service_ip
        self._next_service_ip += 1
        return f"10.96.{number // 254}.{number % 254 + 1}"

    def bind(self, info: ResourceInfo, namespace: str | None, name: str, node: str) -> Obj:
        """Bind an unbound pod to ``node`` in one write: ``spec.nodeName`` and the
        ``PodScheduled=True`` condition (the ``pods/binding`` subresource); 409 if bound."""
        with self.lock:
            old = self._stored(info, namespace, name)
            bound = (old.get("spec") or {}).get("nodeName")
            if bound:
                raise errors.conflict(info.group, info.plural, name,
                                         f"pod {name} is already assigned to node {bound}")
            new = clone(old)
            new.setdefault("spec", {})["nodeName"] = node
            status = new.setdefault("status", {})
            status["conditions"] = [
                c for c in status.get("conditions") or () if c.get("type") != "PodScheduled"
            ] + [{"type": "PodScheduled", "status": "True",
                  "lastTransitionTime": now_rfc3339()}]
            return self._commit(info, (namespace or "", name), old, new, validate=False)

    def _commit(self, info: ResourceInfo, okey: ObjKey, old: Obj, new: Obj, *,
                validate: bool = True, dry_run: bool = False,
                field_validation: str | None = None, manager: str | None = None,
                subresource: str = "", applied: bool = False, reset: bool = False) -> Obj:
        meta = new["metadata"]
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        # A client's own managedFields are not content (only an apply's, or a reset, are).
        computed = meta.pop("managedFields", None) if applied else None
        if "managedFields" in old["metadata"]:
            meta["managedFields"] = old["metadata"]["managedFields"]
        else:
            meta.pop("managedFields", None)
        if old["metadata"].get("deletionTimestamp"):
            added = set(meta.get("finalizers") or ()) - set(
                old["metadata"].get("finalizers") or ())
            if added:
                raise errors.invalid(info.kind_qualified, okey[1], info.group, info.plural, [{
                    "reason": "FieldValueForbidden", "field": "metadata.finalizers",
                    "message": "Forbidden: no new finalizers can be added if the object is "
                               f"being deleted, found new finalizers {sorted(added)}"}])
        if spec_changed(old, new, info.status):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if validate:
            admit(info, new, field_validation)
        if same_content(old, new) and not reset and (
                computed is None or computed == old["metadata"].get("managedFields")):
            return self._out(info, old)
        if reset:
            meta.pop("managedFields", None)
        elif computed is not None:
            meta["managedFields"] = computed
        else:
            meta["managedFields"] = managedfields.record_update(
                old, new, manager, info.api_version, subresource)
        _drop_empty_managed(meta)
        if dry_run:
            return self._out(info, new)
        if meta.get("finalizers") == []:
            del meta["finalizers"]
        meta["resourceVersion"] = str(self._next_rv())
        self._objects[info.storage_key][okey] = new
        self._indexes.setdefault(info.storage_key, SelectorIndex()).put(okey, new)
        self._owners.remove((info.storage_key, okey), old)
        self._owners.add((info.storage_key, okey), new)
        if meta.get("ownerReferences") != old["metadata"].get("ownerReferences"):
            self.gc_candidates.add((info.storage_key, okey))
        if finalized(info, new):
            self._remove(info.storage_key, okey, new, bump=False)
        else:
            if info.storage_key == CRD_KEY:
                self.registry.serve_crd(new)
            self._emit(info.storage_key, "MODIFIED", new, old)
        return self._out(info, new)

    def replace_raw(self, key: StorageKey, okey: ObjKey, new: Obj) -> None:
        """Write a changed object the server itself computed (GC, namespace finalization)."""
        with self.lock:
            info = self.registry.info_for(key)
            old = self.raw(key, okey)
            if info is None or old is None:
                return
            self._commit(info, okey, old, clone(new), validate=False)

    def _remove(self, key: StorageKey, okey: ObjKey, obj: Obj, *, bump: bool = True) -> None:
        self._objects.get(key, {}).pop(okey, None)
        if key in self._indexes:
            self._indexes[key].remove(okey)
        self._owners.remove((key, okey), obj)
        if bump:
            obj = clone(obj)
            obj["metadata"]["resourceVersion"] = str(self._next_rv())
        for ref in obj["metadata"].get("ownerReferences") or ():
            owner = self._owners.find(ref.get("uid", ""))
            if owner is not None:
                self.gc_candidates.add(owner)
        for dep in self._owners.dependents(obj["metadata"]["uid"]):
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
                raise errors.conflict(info.group, info.plural, name,
                                         f"Precondition failed: UID in precondition: "
                                         f"{pre['uid']}, UID in object meta: {meta['uid']}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise errors.conflict(info.group, info.plural, name, _MODIFIED)
            policy = options.get("propagationPolicy")
            if policy is None and options.get("orphanDependents") is True:
                policy = "Orphan"
            if policy not in (None, "Background", "Foreground", "Orphan"):
                raise errors.bad_request(
                    f"propagationPolicy {policy!r} is invalid: use Background, Foreground "
                    "or Orphan")
            new = clone(obj)
            finalizers = list(new["metadata"].get("finalizers") or ())
            if policy == "Orphan":
                self._orphan_dependents(meta["uid"])
            elif policy == "Foreground" and FOREGROUND not in finalizers:
                finalizers.append(FOREGROUND)
                self.gc_candidates.add((info.storage_key, okey))
            if info.storage_key == CRD_KEY:
                finalizers.append("customresourcecleanup.apiextensions.k8s.io")
            grace = deletion_grace(info, obj, options, self.pods_graceful)
            terminating = info.storage_key == NAMESPACE_KEY
            if not finalizers and not grace and not terminating:
                self._remove(info.storage_key, okey, obj)
                return self._out(info, obj)
            if meta.get("deletionTimestamp"):
                current = meta.get("deletionGracePeriodSeconds") or 0
                if grace < current:
                    new["metadata"]["deletionGracePeriodSeconds"] = grace
                    return self._commit(info, okey, obj, new, validate=False)
                return self._out(info, obj)
            new["metadata"]["deletionTimestamp"] = now_rfc3339(grace)
            new["metadata"]["deletionGracePeriodSeconds"] = grace
            new["metadata"]["generation"] = int(meta.get("generation", 1)) + 1
            if finalizers:
                new["metadata"]["finalizers"] = list(dict.fromkeys(finalizers))
            if terminating:
                new["status"] = {"phase": "Terminating"}
                self.gc_candidates.add((info.storage_key, okey))
            if info.storage_key == CRD_KEY:
                self.gc_candidates.add((info.storage_key, okey))
            return self._commit(info, okey, obj, new, validate=False)

    def _orphan_dependents(self, owner_uid: str) -> None:
        for key, okey in self.dependents_of(owner_uid):
            dep = self.raw(key, okey)
            if dep is None:
                continue
            new = clone(dep)
            refs = [r for r in new["metadata"].get("ownerReferences") or ()
                    if r.get("uid") != owner_uid]
            if refs:
                new["metadata"]["ownerReferences"] = refs
            else:
                new["metadata"].pop("ownerReferences", None)
            self.replace_raw(key, okey, new)

    # ----- watch ----------------------------------------------------------------------
    def watch(self, info: ResourceInfo, namespace: str | None, labels: LabelSelector,
              fields: FieldSelector, resource_version: str | None, *,
              send_initial_events: bool = False) -> Watcher:
        """Open a watch (see :class:`~kube_emulator.apiserver.watch.WatchHub`);
        ``send_initial_events``: a watch-list request (current state, then a bookmark)."""
        with self.lock:
            current = [obj for _, obj in sorted(self._objects.get(info.storage_key, {}).items())]
            end = self.resource_version if send_initial_events else None
            return self._hub.open(Watcher(info, namespace, labels, fields), resource_version,
                                  current, end)

    def stop_watch(self, watcher: Watcher) -> None:
        """Stop delivering to ``watcher``."""
        with self.lock:
            self._hub.stop(watcher)

    def close_watches(self) -> None:
        """End every watch stream (server shutdown)."""
        with self.lock:
            self._hub.close_all()
