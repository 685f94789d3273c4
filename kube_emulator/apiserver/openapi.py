"""The OpenAPI documents kubectl reads: ``/openapi/v3`` (an index and one document per
group/version) and ``/openapi/v2`` (one document), for the built-in kinds and every CRD.

What kubectl does with them: ``apply``/``create`` look up the PATCH operation of the object's
group/version/kind (``x-kubernetes-group-version-kind``) and, when it lists the
``fieldValidation`` query parameter, leave validation to the server (``fieldValidation=Strict``,
which the store implements: unknown fields are a 400, and the schema a 422); ``explain`` walks
``components.schemas``. Built-in schemas come from ``builtin_schemas.json`` (written by
``scripts/builtin_openapi.py``); a CRD's come from its ``openAPIV3Schema``, named as
kube-apiserver names them (``dev.elastic.v1alpha1.ElasticJob``: the group reversed).

Faithful to kube-apiserver in layout and extensions, with two deliberate gaps:
- no protobuf: a request that accepts only the protobuf forms (kubectl's
  ``application/com.github.proto-openapi.spec.v2@v1.0+protobuf`` for v2) gets 406 Not
  Acceptable, which clients treat as "no such document" and fall back from;
- PATCH operations do not offer ``application/strategic-merge-patch+json`` (the built-in
  schemas lack Kubernetes' patch strategies), so kubectl's client-side apply computes
  strategic merge patches from its compiled-in types, as it does for an older server.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from kube_emulator.apiserver import errors
from kube_emulator.apiserver.resources import ResourceInfo

Obj = dict[str, Any]
META = "io.k8s.apimachinery.pkg.apis.meta.v1"
JSON = "application/json"
_SCHEMAS_FILE = Path(__file__).with_name("builtin_schemas.json")
_PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
                "application/apply-patch+yaml")
_WRITE_PARAMS = ("dryRun", "fieldManager", "fieldValidation")


@functools.cache
def _builtin() -> Obj:
    loaded: Obj = json.loads(_SCHEMAS_FILE.read_text())
    return loaded


def _ref(name: str, v3: bool) -> Obj:
    return {"$ref": ("#/components/schemas/" if v3 else "#/definitions/") + name}


def _relink(value: Any, v3: bool) -> Any:
    """Turn the stored ``{"$ref": NAME}`` into the document's reference form."""
    if isinstance(value, dict):
        if set(value) == {"$ref"}:
            return _ref(value["$ref"], v3)
        return {k: _relink(v, v3) for k, v in value.items()}
    if isinstance(value, list):
        return [_relink(v, v3) for v in value]
    return value


def _closure(names: list[str], definitions: Obj) -> list[str]:
    """``names`` and every definition they reference, in a stable order."""
    seen: dict[str, None] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen or name not in definitions:
            continue
        seen[name] = None
        todo.extend(_refs(definitions[name]))
    return sorted(seen)


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return found + [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def _gvk(info: ResourceInfo, kind: str | None = None) -> list[Obj]:
    return [{"group": info.group, "version": info.version, "kind": kind or info.kind}]


def crd_schema_name(info: ResourceInfo, kind: str | None = None) -> str:
    """kube-apiserver's definition name of a custom kind: the group reversed, version, kind."""
    return ".".join([*reversed(info.group.split(".")), info.version, kind or info.kind])


def _custom_definitions(info: ResourceInfo) -> Obj:
    """The object and list schemas of a custom resource, with the standard metadata."""
    assert info.schema is not None
    schema = json.loads(json.dumps(info.schema))
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "description": "APIVersion defines the versioned "
                           "schema of this representation of an object."}
    props["kind"] = {"type": "string", "description": "Kind is a string value representing "
                     "the REST resource this object represents."}
    props["metadata"] = {"description": "Standard object's metadata.",
                         "allOf": [{"$ref": f"{META}.ObjectMeta"}]}
    schema["type"] = "object"
    schema["x-kubernetes-group-version-kind"] = _gvk(info)
    name = crd_schema_name(info)
    listing = {
        "type": "object", "required": ["items"],
        "description": f"{info.kind}List is a list of {info.kind}",
        "properties": {
            "apiVersion": props["apiVersion"], "kind": props["kind"],
            "items": {"type": "array", "items": {"$ref": name}},
            "metadata": {"allOf": [{"$ref": f"{META}.ListMeta"}]}},
        "x-kubernetes-group-version-kind": _gvk(info, info.kind + "List"),
    }
    return {name: schema, crd_schema_name(info, info.kind + "List"): listing}


def _definitions(resources: list[ResourceInfo]) -> tuple[Obj, dict[str, str]]:
    """Every schema ``resources`` need (with their GVK extensions) and the definition name of
    each ``group/version/kind``."""
    builtin = _builtin()
    definitions: Obj = dict(builtin["definitions"])
    names: dict[str, str] = {}
    for info in resources:
        if info.schema is not None:
            definitions.update(_custom_definitions(info))
            for kind in (info.kind, info.kind + "List"):
                names[_key(info, kind)] = crd_schema_name(info, kind)
            continue
        for kind in (info.kind, info.kind + "List"):
            name = builtin["kinds"].get(_key(info, kind))
            if name is not None:
                definitions[name] = {**definitions[name],
                                     "x-kubernetes-group-version-kind": _gvk(info, kind)}
                names[_key(info, kind)] = name
    for kind in ("/v1/Status", "/v1/DeleteOptions", "autoscaling/v1/Scale"):
        names.setdefault(kind, builtin["kinds"][kind])
    return definitions, names


def _key(info: ResourceInfo, kind: str) -> str:
    return f"{info.group}/{info.version}/{kind}"


def _operation(info: ResourceInfo, action: str, body: str | None, answer: str, v3: bool,
               sub: str = "") -> Obj:
    verb = {"get": "read", "list": "list", "post": "create", "put": "replace",
            "patch": "patch", "delete": "delete", "deletecollection": "deletecollection"}[action]
    scope = "Namespaced" if info.namespaced else ""
    op: Obj = {
        "operationId": f"{verb}{scope}{info.kind}{sub.capitalize()}",
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(info)[0],
        "parameters": [],
        "responses": {"200": {"description": "OK"}},
    }
    query = {"get": (), "list": ("labelSelector", "fieldSelector", "limit", "continue",
                                 "resourceVersion", "watch"),
             "post": _WRITE_PARAMS, "put": _WRITE_PARAMS, "patch": (*_WRITE_PARAMS, "force"),
             "delete": ("dryRun", "gracePeriodSeconds", "propagationPolicy"),
             "deletecollection": ("labelSelector", "fieldSelector", "gracePeriodSeconds",
                                  "propagationPolicy")}[action]
    for name in query:
        kind = "boolean" if name in ("watch", "force") else (
            "integer" if name in ("limit", "gracePeriodSeconds") else "string")
        param: Obj = {"name": name, "in": "query", "uniqueItems": True}
        if v3:
            param["schema"] = {"type": kind}
        else:
            param["type"] = kind
        op["parameters"].append(param)
    types = _PATCH_TYPES if action == "patch" else (JSON,)
    if body is not None and v3:
        op["requestBody"] = {"required": True,
                             "content": {t: {"schema": _ref(body, v3)} for t in types}}
    elif body is not None:
        op["parameters"].append({"name": "body", "in": "body", "required": True,
                                 "schema": _ref(body, v3)})
        op["consumes"] = list(types)
    if v3:
        op["responses"]["200"]["content"] = {JSON: {"schema": _ref(answer, v3)}}
    else:
        op["responses"]["200"]["schema"] = _ref(answer, v3)
        op["produces"] = [JSON]
    return op


def _paths(info: ResourceInfo, names: dict[str, str], v3: bool) -> Obj:
    obj = names.get(_key(info, info.kind))
    if obj is None:
        return {}
    listing = names.get(_key(info, info.kind + "List"), obj)
    status = names["/v1/Status"]
    base = f"/apis/{info.group}/{info.version}" if info.group else f"/api/{info.version}"
    collection = (f"{base}/namespaces/{{namespace}}/{info.plural}" if info.namespaced
                  else f"{base}/{info.plural}")
    item = f"{collection}/{{name}}"
    verbs = set(info.verbs)
    paths: Obj = {}
    ops: Obj = {}
    if "list" in verbs:
        ops["get"] = _operation(info, "list", None, listing, v3)
    if "create" in verbs:
        ops["post"] = _operation(info, "post", obj, obj, v3)
    if "deletecollection" in verbs:
        ops["delete"] = _operation(info, "deletecollection", None, status, v3)
    paths[collection] = ops
    paths[item] = {
        "get": _operation(info, "get", None, obj, v3),
        "put": _operation(info, "put", obj, obj, v3),
        "patch": _operation(info, "patch", obj, obj, v3),
        "delete": _operation(info, "delete", names["/v1/DeleteOptions"], status, v3),
    }
    if info.status:
        paths[f"{item}/status"] = {
            "get": _operation(info, "get", None, obj, v3, "status"),
            "put": _operation(info, "put", obj, obj, v3, "status"),
            "patch": _operation(info, "patch", obj, obj, v3, "status")}
    if info.scale is not None:
        scale = names["autoscaling/v1/Scale"]
        paths[f"{item}/scale"] = {
            "get": _operation(info, "get", None, scale, v3, "scale"),
            "put": _operation(info, "put", scale, scale, v3, "scale"),
            "patch": _operation(info, "patch", scale, scale, v3, "scale")}
    if info.namespaced and "list" in verbs:
        paths[f"{base}/{info.plural}"] = {"get": _operation(info, "list", None, listing, v3)}
    return paths


def _document(resources: list[ResourceInfo], v3: bool) -> Obj:
    definitions, names = _definitions(resources)
    paths: Obj = {}
    for info in sorted(resources, key=lambda i: (i.group, i.version, i.plural)):
        paths.update(_paths(info, names, v3))
    used = _closure(list(names.values()), definitions)
    schemas = {name: _relink(definitions[name], v3) for name in used}
    info_block = {"title": "Kubernetes", "version": "v1.31.0"}
    if v3:
        return {"openapi": "3.0.0", "info": info_block, "paths": paths,
                "components": {"schemas": schemas}}
    return {"swagger": "2.0", "info": info_block, "paths": paths, "definitions": schemas}


def v3_group_version(resources: list[ResourceInfo], path: str) -> Obj | None:
    """The OpenAPI v3 document of ``api/v1`` or ``apis/GROUP/VERSION``; None when unserved."""
    served = [i for i in resources if _gv_path(i) == path]
    return _document(served, v3=True) if served else None


def _gv_path(info: ResourceInfo) -> str:
    return f"apis/{info.group}/{info.version}" if info.group else f"api/{info.version}"


def _hash(doc: Obj) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()


def v3_index(resources: list[ResourceInfo]) -> Obj:
    """The ``/openapi/v3`` discovery: one entry per group/version, with a content hash in
    the URL (clients cache the documents by it, as with kube-apiserver)."""
    out: Obj = {}
    for path in sorted({_gv_path(i) for i in resources}):
        doc = v3_group_version(resources, path)
        out[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={_hash(doc or {})}"}
    return {"paths": out}


def v2(resources: list[ResourceInfo]) -> Obj:
    """The ``/openapi/v2`` document of everything served."""
    return _document(resources, v3=False)


def accepts_json(accept: str) -> bool:
    """Whether an Accept header admits JSON (no header, ``*/*`` and ``application/*`` do)."""
    if not accept.strip():
        return True
    for item in accept.split(","):
        media = item.split(";")[0].strip().lower()
        if media in (JSON, "*/*", "application/*"):
            return True
    return False


def document(path: str, accept: str, resources: list[ResourceInfo]) -> Obj | None:
    """The OpenAPI document at ``path``; None when ``path`` is not an OpenAPI path; 404 for an
    unknown group/version; 406 when the client accepts only protobuf."""
    if path != "/openapi/v2" and path != "/openapi/v3" and not path.startswith("/openapi/v3/"):
        return None
    if not accepts_json(accept):
        raise errors.ApiError(406, "NotAcceptable",
                              f"only application/json is served at {path}, not {accept!r}")
    if path == "/openapi/v2":
        return v2(resources)
    if path == "/openapi/v3":
        return v3_index(resources)
    doc = v3_group_version(resources, path.removeprefix("/openapi/v3/"))
    if doc is None:
        raise errors.ApiError(404, "NotFound", f"the server could not find the requested "
                                               f"resource ({path})")
    return doc


def _resolve(schema: Obj) -> Obj:
    """A stored schema with its ``$ref`` (direct or through ``allOf``) followed."""
    definitions = _builtin()["definitions"]
    while True:
        if "$ref" in schema:
            schema = definitions[schema["$ref"]]
        elif len(schema.get("allOf") or ()) == 1:
            schema = schema["allOf"][0]
        else:
            return schema


def prune_builtin(info: ResourceInfo, obj: Obj) -> list[str]:
    """Drop the fields of a built-in object that its schema does not know, in place, and
    return their paths (``spec.containers[0].bogus``), as kube-apiserver's decoder drops
    unknown fields (and names them under ``fieldValidation=Strict`` or ``Warn``). Kinds
    without a stored schema are left alone."""
    name = _builtin()["kinds"].get(_key(info, info.kind))
    dropped: list[str] = []
    if name is not None:
        _prune_known(obj, {"$ref": name}, "", dropped)
    return dropped


def _prune_known(value: Any, schema: Obj, path: str, dropped: list[str]) -> None:
    schema = _resolve(schema)
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        for key in list(value):
            where = f"{path}.{key}" if path else key
            if key not in props:
                dropped.append(where)
                del value[key]
            else:
                _prune_known(value[key], props[key], where, dropped)
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            _prune_known(item, schema["additionalProperties"], f"{path}.{key}", dropped)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _prune_known(item, schema["items"], f"{path}[{index}]", dropped)
