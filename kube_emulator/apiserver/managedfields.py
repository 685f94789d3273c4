"""Field ownership (``metadata.managedFields``) and server-side apply, as pure functions.

Every write records who set which fields, as kube-apiserver does: a create, update or
non-apply patch makes its manager (the ``fieldManager`` parameter, else the User-Agent up
to its first ``/``) the owner of every field it changed, operation ``Update``; an apply
(``application/apply-patch+yaml``) makes the applier the owner of exactly the fields of its
configuration, operation ``Apply``. An apply that sets a field another manager owns to a
different value is refused with 409 Conflict listing the fields (a
``FieldManagerConflict`` cause each), unless ``force=true``, which takes the fields over; an
applier that leaves out a field it applied before removes it, unless another manager still
owns it. Fields with the same value are shared, as kube-apiserver shares them.

Simplifications (documented differences): lists are atomic (one field, owned and replaced
whole; kube-apiserver merges the lists its schemas mark as maps, such as containers, by key);
the server never "upgrades" a client-side-apply manager's fields; a client's own writes to
``managedFields`` are ignored, except ``[{}]``, which clears them.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from kube_emulator.apiserver import errors
from kube_emulator.times import now_rfc3339

Obj = dict[str, Any]
Path = tuple[str, ...]
APPLY = "Apply"
UPDATE = "Update"
# Fields the server owns: never in a manager's set.
_META_OWNED = ("labels", "annotations", "ownerReferences", "finalizers")
_MISSING = object()


def manager_name(field_manager: str | None, user_agent: str) -> str:
    """The manager of a non-apply write: ``fieldManager``, else the User-Agent's prefix."""
    if field_manager:
        return field_manager[:128]
    return (user_agent.split("/", 1)[0] or "unknown")[:128]


def leaves(obj: Any, prefix: Path = ()) -> dict[Path, Any]:
    """The fields a manager can own in ``obj``, with their values: every scalar, list and
    empty object, by path; apiVersion, kind and server-set metadata excluded."""
    out: dict[Path, Any] = {}
    if not isinstance(obj, dict):
        return out
    for key, value in obj.items():
        path = (*prefix, key)
        if not prefix and key in ("apiVersion", "kind"):
            continue
        if prefix == ("metadata",) and key not in _META_OWNED:
            continue
        if isinstance(value, dict) and value:
            out.update(leaves(value, path))
        else:
            out[path] = value
    return out


def _value(obj: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def _related(a: Path, b: Path) -> bool:
    """Whether one path is the other or inside it."""
    short = min(len(a), len(b))
    return a[:short] == b[:short]


def _to_fields(paths: set[Path]) -> Obj:
    tree: Obj = {}
    for path in sorted(paths):
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


def _from_fields(tree: Any, prefix: Path = ()) -> set[Path]:
    paths: set[Path] = set()
    if not isinstance(tree, dict):
        return paths
    children = {k: v for k, v in tree.items() if k.startswith("f:")}
    if not children and prefix:
        return {prefix}
    for key, value in children.items():
        paths |= _from_fields(value, (*prefix, key[2:]))
    return paths


class _Entry:
    def __init__(self, raw: Obj) -> None:
        self.manager = str(raw.get("manager", ""))
        self.operation = str(raw.get("operation", UPDATE))
        self.api_version = str(raw.get("apiVersion", ""))
        self.subresource = str(raw.get("subresource", ""))
        self.time = raw.get("time")
        self.fields = _from_fields(raw.get("fieldsV1") or {})

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.manager, self.operation, self.subresource)

    def describe(self) -> str:
        """How kube-apiserver names a manager in a conflict."""
        name = json.dumps(self.manager)
        if self.subresource:
            name += f" with subresource {json.dumps(self.subresource)}"
        return f"{name} using {self.api_version}" if self.operation == UPDATE else name

    def raw(self) -> Obj:
        out: Obj = {"manager": self.manager, "operation": self.operation,
                    "apiVersion": self.api_version, "time": self.time,
                    "fieldsType": "FieldsV1", "fieldsV1": _to_fields(self.fields)}
        if self.subresource:
            out["subresource"] = self.subresource
        return out


def _entries(obj: Obj) -> list[_Entry]:
    return [_Entry(e) for e in (obj.get("metadata") or {}).get("managedFields") or ()
            if isinstance(e, dict) and e.get("manager")]


def _store(entries: list[_Entry]) -> list[Obj]:
    return [e.raw() for e in entries if e.fields]


def _claim(entries: list[_Entry], owner: _Entry, paths: set[Path], *, exclusive: bool) -> None:
    """Give ``paths`` to ``owner`` (added to ``entries`` if new); with ``exclusive``, take
    them (and the paths inside or around them) from every other entry."""
    if owner not in entries:
        entries.append(owner)
    owner.fields |= paths
    if exclusive:
        for entry in entries:
            if entry is not owner:
                entry.fields = {f for f in entry.fields
                                if not any(_related(f, p) for p in paths)}


def record_update(old: Obj | None, new: Obj, manager: str | None, api_version: str,
                  subresource: str = "") -> list[Obj]:
    """The managedFields of ``new`` after a non-apply write by ``manager`` (None: the server
    itself, which owns nothing): the fields that changed become the manager's alone, the
    removed ones nobody's."""
    entries = _entries(old) if old is not None else []
    before = leaves(old) if old is not None else {}
    after = leaves(new)
    changed = {p for p, v in after.items() if before.get(p, _MISSING) != v}
    for entry in entries:
        entry.fields = {f for f in entry.fields if _value(new, f) is not _MISSING}
    if manager is not None and changed:
        owner = next((e for e in entries if e.key == (manager, UPDATE, subresource)), None)
        if owner is None:
            owner = _Entry({"manager": manager, "operation": UPDATE})
            owner.subresource = subresource
        owner.api_version, owner.time = api_version, now_rfc3339()
        _claim(entries, owner, changed, exclusive=True)
    return _store(entries)


def reset_requested(body: Obj) -> bool:
    """Whether a write asks to clear the managed fields (``managedFields: [{}]``)."""
    return (body.get("metadata") or {}).get("managedFields") == [{}]


def _merge(live: Any, config: Any) -> Any:
    """``config`` laid over ``live``: objects merge key by key, everything else replaces."""
    if not isinstance(live, dict) or not isinstance(config, dict):
        return copy.deepcopy(config)
    out = copy.deepcopy(live)
    for key, value in config.items():
        out[key] = _merge(out.get(key), value)
    return out


def _remove(obj: Obj, path: Path) -> None:
    node: Any = obj
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


def apply(live: Obj | None, config: Obj, manager: str, api_version: str, *,
          force: bool = False, subresource: str = "") -> Obj:
    """The object after ``manager`` applies ``config`` to ``live`` (None: it does not exist
    yet), with its managedFields; 409 Conflict on another manager's differing fields unless
    ``force``."""
    if not manager:
        raise errors.bad_request("PATCH requests with apply content type "
                                 "(application/apply-patch+yaml) require fieldManager")
    if not isinstance(config, dict):
        raise errors.bad_request("the applied configuration must be an object")
    current = copy.deepcopy(live) if live is not None else {}
    entries = _entries(current)
    applied = leaves(config)
    owner = next((e for e in entries if e.key == (manager, APPLY, subresource)), None)
    conflicts = []
    for entry in entries:
        if entry is owner:
            continue
        for field in sorted(entry.fields):
            for path, value in applied.items():
                if _related(field, path) and _value(current, path) != value:
                    conflicts.append((entry, field))
                    break
    if conflicts and not force:
        raise _conflict_error(conflicts)
    if owner is not None:
        others = set().union(*(e.fields for e in entries if e is not owner))
        for field in owner.fields - set(applied):
            if field not in others:
                _remove(current, field)
    merged = _merge(current, config)
    if owner is None:
        owner = _Entry({"manager": manager, "operation": APPLY})
        owner.subresource = subresource
    owner.fields = set()
    owner.api_version, owner.time = api_version, now_rfc3339()
    _claim(entries, owner, set(applied), exclusive=False)
    if force:
        taken = {field for _, field in conflicts}
        for entry in entries:
            if entry is not owner:
                entry.fields -= taken
    merged.setdefault("metadata", {})["managedFields"] = _store(entries)
    return merged


def _conflict_error(conflicts: list[tuple[_Entry, Path]]) -> errors.ApiError:
    def dotted(path: Path) -> str:
        return "".join(f".{key}" for key in path)

    if len(conflicts) == 1:
        entry, path = conflicts[0]
        message = (f"Apply failed with 1 conflict: conflict with {entry.describe()}: "
                   f"{dotted(path)}")
    else:
        lines: list[str] = []
        for described in sorted({e.describe() for e, _ in conflicts}):
            lines.append(f"conflicts with {described}:")
            lines += [f"- {dotted(p)}" for e, p in conflicts if e.describe() == described]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return errors.ApiError(409, "Conflict", message, {"causes": [
        {"reason": "FieldManagerConflict", "message": f"conflict with {e.describe()}",
         "field": dotted(p)} for e, p in conflicts]})
