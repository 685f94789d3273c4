"""The controllers kube-controller-manager runs that API clients rely on for deletion.

- **Owner-reference garbage collection**: an object all of whose owners are gone is deleted
  (background propagation; its own finalizers still hold it); owners that are gone but not all
  of them are dropped from ``ownerReferences``; an object created with an ownerReference to a
  uid that does not exist is collected the same way.
- **Foreground deletion**: an owner carrying the ``foregroundDeletion`` finalizer has its
  dependents deleted, and loses that finalizer once no dependent with
  ``blockOwnerDeletion: true`` is left.
- **Namespace finalization**: a Terminating namespace has all its content deleted and is
  removed once it is empty.
- **CRD cleanup**: a deleted CustomResourceDefinition has all its custom resources deleted
  and is removed (its resources stop being served) once none is left.

It works from the store's ``gc_candidates`` (objects whose ownership or deletion state just
changed) and runs on the server's event loop after each change, so the delay a client sees is
one loop turn, where the real controllers take milliseconds to seconds.
"""

from __future__ import annotations

from kube_emulator.apiserver.resources import CRD_KEY, NAMESPACE_KEY, resources_from_crd
from kube_emulator.apiserver.store import ObjectStore, ObjKey, StorageKey, clone
from kube_emulator.apiserver.strategy import FOREGROUND

CRD_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"


class GarbageCollector:
    """Processes the store's deletion work; :meth:`run_once` returns whether it changed
    anything (call it until it returns False)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._terminating: set[tuple[StorageKey, ObjKey]] = set()

    def run_once(self) -> bool:
        """Handle every pending candidate once."""
        with self.store.lock:
            candidates = self.store.gc_candidates
            self.store.gc_candidates = set()
            before = self.store.resource_version
            for key, okey in sorted(candidates):
                self._handle(key, okey)
            for key, okey in sorted(self._terminating):
                self._finalize(key, okey)
            return before != self.store.resource_version or bool(self.store.gc_candidates)

    def _handle(self, key: StorageKey, okey: ObjKey) -> None:
        obj = self.store.raw(key, okey)
        if obj is None:
            return
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and key in (NAMESPACE_KEY, CRD_KEY):
            self._terminating.add((key, okey))
            return
        if meta.get("deletionTimestamp") and FOREGROUND in (meta.get("finalizers") or ()):
            self._foreground(key, okey, obj)
        refs = meta.get("ownerReferences") or []
        if not refs or meta.get("deletionTimestamp"):
            return
        absent = [r for r in refs if self.store.find_uid(r.get("uid", "")) is None]
        if len(absent) == len(refs):
            self._delete(key, okey)
        elif absent:
            new = clone(obj)
            new["metadata"]["ownerReferences"] = [r for r in refs if r not in absent]
            self.store.replace_raw(key, okey, new)
        else:
            for ref in refs:
                owner = self.store.find_uid(ref["uid"])
                owner_obj = self.store.raw(*owner) if owner else None
                if owner_obj and FOREGROUND in (owner_obj["metadata"].get("finalizers") or ()):
                    self._delete(key, okey)
                    return

    def _delete(self, key: StorageKey, okey: ObjKey) -> None:
        info = self.store.registry.info_for(key)
        if info is not None and self.store.raw(key, okey) is not None:
            self.store.delete(info, okey[0] or None, okey[1],
                              {"propagationPolicy": "Background"})

    def _foreground(self, key: StorageKey, okey: ObjKey, obj: dict) -> None:
        uid = obj["metadata"]["uid"]
        blocking = False
        for dep_key, dep_okey in self.store.dependents_of(uid):
            dep = self.store.raw(dep_key, dep_okey)
            if dep is None:
                continue
            if not dep["metadata"].get("deletionTimestamp"):
                self._delete(dep_key, dep_okey)
            if self.store.raw(dep_key, dep_okey) is not None and any(
                    r.get("uid") == uid and r.get("blockOwnerDeletion")
                    for r in dep["metadata"].get("ownerReferences") or ()):
                blocking = True
        if not blocking:
            new = clone(obj)
            new["metadata"]["finalizers"] = [
                f for f in new["metadata"].get("finalizers") or () if f != FOREGROUND]
            self.store.replace_raw(key, okey, new)

    def _finalize(self, key: StorageKey, okey: ObjKey) -> None:
        obj = self.store.raw(key, okey)
        if obj is None:
            self._terminating.discard((key, okey))
            return
        if key == NAMESPACE_KEY:
            remaining = self._delete_namespace_content(okey[1])
            if not remaining:
                new = clone(obj)
                new.setdefault("spec", {})["finalizers"] = []
                self.store.replace_raw(key, okey, new)
        else:
            remaining = 0
            for info in resources_from_crd(obj)[:1]:
                for item_key, _ in self.store.iter_objects(info.storage_key):
                    remaining += 1
                    item = self.store.raw(info.storage_key, item_key)
                    if item is not None and not item["metadata"].get("deletionTimestamp"):
                        self._delete(info.storage_key, item_key)
            if not remaining:
                new = clone(obj)
                new["metadata"]["finalizers"] = [
                    f for f in new["metadata"].get("finalizers") or () if f != CRD_CLEANUP]
                self.store.replace_raw(key, okey, new)

    def _delete_namespace_content(self, namespace: str) -> int:
        remaining = 0
        keys = {i.storage_key for i in self.store.registry.resources() if i.namespaced}
        for key in sorted(keys):
            for item_key, item in self.store.iter_objects(key):
                if item_key[0] != namespace:
                    continue
                remaining += 1
                if not item["metadata"].get("deletionTimestamp"):
                    self._delete(key, item_key)
        return remaining
