"""Who is who and who owns whom: the uid and ownerReference index of stored objects.

The garbage collector asks two questions after every change: does the object with this uid
still exist, and which objects name this uid as an owner. Both are answered from here in
constant time instead of scanning the store.
"""

from __future__ import annotations

from typing import Any

StorageKey = tuple[str, str]  # (group, plural)
ObjKey = tuple[str, str]  # (namespace or "", name)
Location = tuple[StorageKey, ObjKey]


class OwnershipIndex:
    """uid -> location, and owner uid -> dependents' locations."""

    def __init__(self) -> None:
        self._uids: dict[str, Location] = {}
        self._dependents: dict[str, set[Location]] = {}

    def add(self, where: Location, obj: dict[str, Any]) -> None:
        """Index a stored object (its uid and the owners it names)."""
        meta = obj["metadata"]
        self._uids[meta["uid"]] = where
        for ref in meta.get("ownerReferences") or ():
            self._dependents.setdefault(ref.get("uid", ""), set()).add(where)

    def remove(self, where: Location, obj: dict[str, Any]) -> None:
        """Forget an object that was replaced or removed (``obj``: its indexed state)."""
        meta = obj["metadata"]
        self._uids.pop(meta["uid"], None)
        for ref in meta.get("ownerReferences") or ():
            owner = ref.get("uid", "")
            deps = self._dependents.get(owner)
            if deps is not None:
                deps.discard(where)
                if not deps:
                    del self._dependents[owner]

    def find(self, uid: str) -> Location | None:
        """Where the object with ``uid`` is stored, if it exists."""
        return self._uids.get(uid)

    def dependents(self, uid: str) -> list[Location]:
        """Objects whose ownerReferences name ``uid``, in a stable order."""
        return sorted(self._dependents.get(uid, ()))
