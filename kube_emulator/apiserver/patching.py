"""The three PATCH formats of the Kubernetes API, as pure functions on JSON documents.

- ``application/merge-patch+json``: RFC 7386 JSON merge patch (``null`` deletes a key, objects
  merge recursively, everything else, lists included, replaces).
- ``application/strategic-merge-patch+json``: a merge patch in which the lists Kubernetes merges
  by key in its built-in types (containers, initContainers, env, ports, volumes, volumeMounts,
  conditions, ...) are merged item by item on that key instead of replaced; an item holding
  ``"$patch": "delete"`` removes the matching item. ``$setElementOrder/FIELD`` (which kubectl's
  client-side apply sends) orders the listed items as given, followed by the items only the
  server had, in their order (kube-apiserver interleaves those instead);
  ``$deleteFromPrimitiveList/FIELD`` removes values from a list of scalars. ``$retainKeys``
  is not supported and raises :class:`PatchError`. Custom resources refuse this type (415),
  exactly as kube-apiserver does.
- ``application/json-patch+json``: RFC 6902 (add, remove, replace, move, copy, test) with
  RFC 6901 pointers (``~0``, ``~1``, ``-`` for the end of a list).

Inputs are never mutated; each function returns a new document.
"""

from __future__ import annotations

import copy
from typing import Any

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# Keys of list fields Kubernetes' built-in types merge by an item key (patchMergeKey).
STRATEGIC_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "taints": "key",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
}


class PatchError(ValueError):
    """A patch that cannot be applied; ``invalid`` is True for a well-formed patch whose
    ``test`` failed or whose path does not exist (422), False for a malformed one (400)."""

    def __init__(self, message: str, *, invalid: bool = False) -> None:
        super().__init__(message)
        self.invalid = invalid


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch and return the result."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch (see the module docstring for the supported subset)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$setElementOrder/"):
            orders[key.partition("/")[2]] = value if isinstance(value, list) else []
        elif isinstance(key, str) and key.startswith("$deleteFromPrimitiveList/"):
            field = key.partition("/")[2]
            drop = value if isinstance(value, list) else []
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in drop]
        elif isinstance(key, str) and key.startswith("$"):
            raise PatchError(f"strategic merge patch directive {key!r} is not supported")
        elif value is None:
            result.pop(key, None)
        elif key in STRATEGIC_MERGE_KEYS and isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, STRATEGIC_MERGE_KEYS[key], key)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _ordered(result[field], order, STRATEGIC_MERGE_KEYS.get(field))
    return result


def _ordered(items: list[Any], order: list[Any], merge_key: str | None) -> list[Any]:
    """``items`` with those named in ``order`` first, in that order, then the rest."""
    def ident(item: Any) -> Any:
        return item.get(merge_key) if merge_key and isinstance(item, dict) else item
    wanted = [ident(o) for o in order]
    first = sorted((i for i in items if ident(i) in wanted), key=lambda i: wanted.index(ident(i)))
    return first + [i for i in items if ident(i) not in wanted]


def _merge_list(current: Any, patch: list[Any], merge_key: str, field: str) -> list[Any]:
    if not all(isinstance(item, dict) and merge_key in item for item in patch):
        return copy.deepcopy(patch)  # a list of scalars or unkeyed items replaces
    merged = [copy.deepcopy(i) for i in current] if isinstance(current, list) else []
    for item in patch:
        directive = item.get("$patch")
        body = {k: v for k, v in item.items() if k != "$patch"}
        index = next(
            (n for n, old in enumerate(merged)
             if isinstance(old, dict) and old.get(merge_key) == item[merge_key]),
            None,
        )
        if directive == "delete":
            if index is not None:
                del merged[index]
        elif directive is not None:
            raise PatchError(f"unsupported $patch directive {directive!r} in {field}")
        elif index is None:
            merged.append(strategic_merge_patch({}, body))
        else:
            merged[index] = strategic_merge_patch(merged[index], body)
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], token: str, path: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (token.startswith("0") and token != "0"):
        raise PatchError(f"invalid list index {token!r} in {path!r}", invalid=True)
    index = int(token)
    limit = len(container) if allow_end else len(container) - 1
    if index > limit:
        raise PatchError(f"list index {index} out of range in {path!r}", invalid=True)
    return index


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    current = doc
    for token in tokens[:-1]:
        if isinstance(current, dict):
            if token not in current:
                raise PatchError(f"path {path!r} does not exist", invalid=True)
            current = current[token]
        elif isinstance(current, list):
            current = current[_index(current, token, path, allow_end=False)]
        else:
            raise PatchError(f"path {path!r} does not exist", invalid=True)
    return current


def _get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path {path!r} does not exist", invalid=True)
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, path, allow_end=False)]
    raise PatchError(f"path {path!r} does not exist", invalid=True)


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, path, allow_end=True), value)
    else:
        raise PatchError(f"cannot add at {path!r}: parent is not an object or list", invalid=True)
    return doc


def _remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise PatchError("cannot remove the whole document", invalid=True)
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"cannot remove {path!r}: it does not exist", invalid=True)
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last, path, allow_end=False)]
    else:
        raise PatchError(f"cannot remove {path!r}: it does not exist", invalid=True)
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch (a list of operations) and return the result."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for number, op in enumerate(operations):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"JSON patch operation {number} needs 'op' and 'path': {op!r}")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"JSON patch operation {number} ({kind}) needs 'value'")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)  # must exist
            doc = _add(_remove(doc, path), path, copy.deepcopy(op["value"])) if _pointer(
                path) else copy.deepcopy(op["value"])
        elif kind in ("move", "copy"):
            if "from" not in op:
                raise PatchError(f"JSON patch operation {number} ({kind}) needs 'from'")
            value = copy.deepcopy(_get(doc, op["from"]))
            if kind == "move":
                if path.startswith(op["from"] + "/"):
                    raise PatchError(f"cannot move {op['from']!r} into its own child {path!r}")
                doc = _remove(doc, op["from"])
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(
                    f"testing value {path!r} failed: expected {op['value']!r}", invalid=True
                )
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r} (operation {number})")
    return doc
