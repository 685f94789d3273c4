"""Indexes that answer a list's selectors without scanning every stored object.

A LIST with a label selector (``elastic.dev/job-name=j``) or a field selector
(``spec.nodeName=n``) used to walk every object of the resource: with thousands of pods each
such request cost thousands of selector evaluations, so the emulator, and every test and local
cluster on it, slowed down with the size of the cluster rather than the size of the answer.

:class:`SelectorIndex` keeps, per resource, the object keys by namespace, by label
``key=value``, by label key (for ``exists``), and by field value for each field path that a
selector has asked for (built on first use, then kept current on every write). It only narrows:
:meth:`SelectorIndex.candidates` returns a superset of the matching keys (negative terms such
as ``!=``, ``notin`` and ``!key`` do not narrow), and the store still evaluates the full
selectors on each candidate, so the answer is exactly that of a full scan (a property test
checks it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kube_emulator.apiserver.selectors import FieldSelector, LabelSelector, field_value

ObjKey = tuple[str, str]  # (namespace, name)
Obj = dict[str, Any]


def _add(table: dict[Any, set[ObjKey]], value: Any, okey: ObjKey) -> None:
    table.setdefault(value, set()).add(okey)


def _discard(table: dict[Any, set[ObjKey]], value: Any, okey: ObjKey) -> None:
    keys = table.get(value)
    if keys is not None:
        keys.discard(okey)
        if not keys:
            del table[value]


class SelectorIndex:
    """Namespace, label and field indexes of one resource's objects (see the module doc)."""

    def __init__(self) -> None:
        self.all: set[ObjKey] = set()
        self._namespaces: dict[str, set[ObjKey]] = {}
        self._labels: dict[tuple[str, str], set[ObjKey]] = {}
        self._label_keys: dict[str, set[ObjKey]] = {}
        self._fields: dict[str, dict[str, set[ObjKey]]] = {}
        # What each object is indexed under, so that an update or delete removes exactly that.
        self._entries: dict[ObjKey, tuple[dict[str, str], dict[str, str]]] = {}

    def put(self, okey: ObjKey, obj: Mapping[str, Any]) -> None:
        """Index ``obj`` (new or changed) under ``okey``."""
        self.remove(okey)
        labels = dict((obj.get("metadata") or {}).get("labels") or {})
        fields = {path: field_value(obj, path) for path in self._fields}
        self.all.add(okey)
        _add(self._namespaces, okey[0], okey)
        for key, value in labels.items():
            _add(self._labels, (key, value), okey)
            _add(self._label_keys, key, okey)
        for path, value in fields.items():
            _add(self._fields[path], value, okey)
        self._entries[okey] = (labels, fields)

    def remove(self, okey: ObjKey) -> None:
        """Forget ``okey`` (no-op when it is not indexed)."""
        entry = self._entries.pop(okey, None)
        if entry is None:
            return
        labels, fields = entry
        self.all.discard(okey)
        _discard(self._namespaces, okey[0], okey)
        for key, value in labels.items():
            _discard(self._labels, (key, value), okey)
            _discard(self._label_keys, key, okey)
        for path, value in fields.items():
            _discard(self._fields[path], value, okey)

    def _field_table(self, path: str, objects: Mapping[ObjKey, Obj]) -> dict[str, set[ObjKey]]:
        table = self._fields.get(path)
        if table is None:  # first use of this path: index every object once
            table = self._fields[path] = {}
            for okey, obj in objects.items():
                value = field_value(obj, path)
                _add(table, value, okey)
                self._entries[okey][1][path] = value
        return table

    def candidates(self, objects: Mapping[ObjKey, Obj], namespace: str | None,
                   labels: LabelSelector, fields: FieldSelector) -> set[ObjKey]:
        """A superset of the keys whose objects match; ``objects`` are the indexed ones."""
        narrowed: list[set[ObjKey]] = []
        if namespace is not None:
            narrowed.append(self._namespaces.get(namespace, set()))
        for req in labels.requirements:
            if req.op in ("=", "in"):
                narrowed.append(_union(self._labels.get((req.key, v), set())
                                       for v in req.values))
            elif req.op == "exists":
                narrowed.append(self._label_keys.get(req.key, set()))
        for path, equal, value in fields.terms:
            if equal:
                narrowed.append(self._field_table(path, objects).get(value, set()))
        if not narrowed:
            return set(self.all)
        narrowed.sort(key=len)
        result = set(narrowed[0])
        for keys in narrowed[1:]:
            result &= keys
            if not result:
                break
        return result


def _union(sets: Iterable[set[ObjKey]]) -> set[ObjKey]:
    out: set[ObjKey] = set()
    for keys in sets:
        out |= keys
    return out
