"""The HTTP side of the emulated API server: URL layout, verbs, query parameters, bodies.

URLs follow kube-apiserver: ``/api/v1/...`` for the core group and
``/apis/{group}/{version}/...`` for the others, then ``[namespaces/{ns}/]{resource}
[/{name}[/{subresource}]]``. The RBAC verb of each request is derived as Kubernetes does
(GET on a name: get; on a collection: list, or watch with ``watch=true``; POST: create; PUT:
update; PATCH: patch; DELETE on a name: delete; on a collection: deletecollection) and
recorded in the server's audit trail with the user of the bearer token. Lists and watch
streams are :mod:`~kube_emulator.apiserver.listing`'s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import yaml
from aiohttp import web

from kube_emulator.apiserver import (
    discovery,
    errors,
    listing,
    managedfields,
    openapi,
    patching,
    remotecommand,
    strategy,
    tables,
)
from kube_emulator.apiserver.listing import json_response as _json
from kube_emulator.apiserver.remotecommand import ExecSource
from kube_emulator.apiserver.resources import POD_KEY, ResourceInfo
from kube_emulator.apiserver.scale import read_scale, write_scale
from kube_emulator.apiserver.selectors import SelectorError
from kube_emulator.apiserver.store import Obj, ObjectStore
from kube_emulator.times import now_rfc3339

log = logging.getLogger(__name__)

_NAMESPACE_SUBRESOURCES = ("status", "finalize")
_BINARY_TYPES = ("application/vnd.kubernetes.protobuf", "application/cbor")
_SUBRESOURCE_VERBS: dict[str, tuple[str, ...]] = {
    "status": ("get", "update", "patch"),
    "scale": ("get", "update", "patch"),
    "log": ("get",),
    "binding": ("create",),
    "eviction": ("create",),
    "exec": ("get", "create"),  # GET: a WebSocket upgrade; POST: SPDY (refused)
    "finalize": ("update",),
}


class AuditRecord(NamedTuple):
    """One resource request: ``verb`` is the RBAC verb (get, list, watch, create, update,
    patch, delete, deletecollection); ``group`` is "" for the core group."""

    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    user: str


# ``log_source(namespace, pod, query)`` -> the text of ``pods/log``.
LogSource = Callable[[str, str, dict[str, str]], str]


class Served(Protocol):
    """What the HTTP side needs of the server it serves (the server module's ``ApiServer``).
    A protocol, so this module does not import the server that imports it."""

    host: str
    port: int
    store: ObjectStore
    tokens: Mapping[str, str]
    bookmark_interval: float
    log_source: LogSource | None
    exec_source: ExecSource | None

    def record(self, record: AuditRecord) -> None: ...


class _Request:
    """A parsed resource request."""

    def __init__(self, info: ResourceInfo, namespace: str | None, name: str | None,
                 subresource: str | None) -> None:
        self.info = info
        self.namespace = namespace
        self.name = name
        self.subresource = subresource


def build_app(server: Served) -> web.Application:
    """The aiohttp application serving ``server``."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    handler = _Handler(server)
    app.router.add_route("*", "/{tail:.*}", handler.dispatch)
    return app


class _Handler:
    def __init__(self, server: Served) -> None:
        self.server = server
        self.store = server.store

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            user = self._user(request)
            refusal = self.server.next_refusal()
            if refusal is not None:
                response = _json(refusal.status(), refusal.code)
                response.headers["Retry-After"] = str(
                    (refusal.details or {}).get("retryAfterSeconds", 1))
                return response
            path = request.path.rstrip("/")
            answer = self._discovery(path, request)
            if answer is not None:
                return answer
            parsed = self._parse(path)
            verb = self._verb(request.method, parsed, request.query)
            self.server.record(_audit(verb, parsed, user))
            warnings: list[str] = []
            strategy.WARNINGS.set(warnings)
            response = await self._serve(request, parsed, verb)
            for text in warnings:
                quoted = text.replace('"', '\\"')
                response.headers.add("Warning", f'299 - "{quoted}"')
            return response
        except errors.ApiError as exc:
            return _json(exc.status(), exc.code)
        except SelectorError as exc:
            return _json(errors.bad_request(str(exc)).status(), 400)
        except patching.PatchError as exc:
            error = (errors.ApiError(422, "Invalid", str(exc)) if exc.invalid
                     else errors.bad_request(str(exc)))
            return _json(error.status(), error.code)
        except Exception as exc:  # a bug here must still answer like an API server
            log.exception("internal error serving %s %s", request.method, request.path)
            error = errors.ApiError(500, "InternalError", f"internal error: {exc!r}")
            return _json(error.status(), 500)

    def _user(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        if not header:
            return "system:anonymous"
        token = header.removeprefix("Bearer ").strip()
        user = self.server.tokens.get(token)
        if user is None:
            raise errors.ApiError(401, "Unauthorized", "Unauthorized")
        return user

    def _discovery(self, path: str, request: web.Request) -> web.Response | None:
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        host = request.host or f"{self.server.host}:{self.server.port}"
        resources = self.store.registry.resources()
        doc = discovery.document(path, resources, host)
        if doc is None:
            doc = openapi.document(path, request.headers.get("Accept", ""), resources)
        return None if doc is None else _json(doc)

    def _parse(self, path: str) -> _Request:
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise errors.ApiError(404, "NotFound", f"the server could not find the "
                                                      f"requested resource ({path})")
        namespace = None
        if (rest[0] == "namespaces" and len(rest) >= 3
                and rest[2] not in _NAMESPACE_SUBRESOURCES):
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise errors.ApiError(404, "NotFound", f"the server could not find the "
                                                      f"requested resource ({path})")
        info = self.store.registry.resource(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if info.namespaced and name is not None and namespace is None:
            raise errors.ApiError(404, "NotFound", f"the server could not find the "
                                                      f"requested resource ({path})")
        if not info.namespaced and namespace is not None:
            raise errors.ApiError(404, "NotFound", f"{info.qualified} is cluster-scoped: "
                                                      f"drop /namespaces/{namespace}")
        allowed = {"status"} if info.status else set()
        allowed |= {"scale"} if info.scale else set()
        allowed |= set(info.extra_subresources)
        if info.plural == "namespaces":
            allowed.add("finalize")
        if sub is not None and sub not in allowed:
            raise errors.ApiError(404, "NotFound", f"the server could not find the "
                                                      f"requested resource ({path})")
        return _Request(info, namespace, name, sub)

    def _verb(self, method: str, req: _Request, query: Any) -> str:
        verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        if method == "GET":
            verb = "get" if req.name is not None else (
                "watch" if query.get("watch") in ("true", "1") else "list")
        elif method in verbs:
            verb = verbs[method]
            if method == "DELETE" and req.name is None:
                verb = "deletecollection"
        else:
            raise errors.method_not_allowed(f"the server does not allow method {method}")
        if req.subresource is not None:
            allowed = _SUBRESOURCE_VERBS.get(req.subresource, ())
        elif method == "POST" and req.name is not None:
            raise errors.method_not_allowed(
                f"the server does not allow this method on the requested resource: POST to "
                f"{req.info.qualified}/{req.name}; create with POST to the collection")
        else:
            allowed = req.info.verbs
        if verb not in allowed:
            target = req.info.qualified + (f"/{req.subresource}" if req.subresource else "")
            raise errors.method_not_allowed(
                f"the server does not allow this method on the requested resource "
                f"({verb} {target})")
        return verb

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        if request.content_type in _BINARY_TYPES:
            # kube-apiserver would decode these; we answer as a server that cannot (kubectl
            # 1.37's typed create commands send protobuf and report the error, no retry).
            raise errors.unsupported_media_type(
                f"the body of the request was in an unknown format - accepted media types "
                f"include: application/json, application/yaml (not {request.content_type})")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise errors.bad_request(f"the request body is not valid JSON: {exc}") from None

    async def _serve(self, request: web.Request, req: _Request,
                     verb: str) -> web.StreamResponse:
        info, ns, name = req.info, req.namespace, req.name
        query = request.query
        if verb == "watch":
            return await listing.watch_response(request, self.store, info, ns,
                                                self.server.bookmark_interval)
        as_table = tables.table_version(request.headers.get("Accept", ""))
        if verb == "list":
            return listing.list_response(self.store, info, ns, query, as_table)
        assert name is not None or verb in ("create", "deletecollection")
        if req.subresource == "scale":
            return await self._scale(request, req, verb)
        if req.subresource == "log":
            return self._log(req, query)
        if req.subresource == "binding":
            return self._bind(req, await self._body(request))
        if req.subresource == "eviction":
            return self._evict(req, await self._body(request))
        if req.subresource == "exec":
            self.store.get(info, ns, name or "")
            return await remotecommand.serve(
                request, remotecommand.parse_request(ns or "", name or "", query),
                self.server.exec_source)
        sub = "status" if req.subresource in ("status", "finalize") else None
        if verb == "get":
            obj = self.store.get(info, ns, name or "")
            if as_table and sub is None:
                return _json(tables.table(info, [obj], as_table,
                                          include=query.get("includeObject"),
                                          list_meta={"resourceVersion":
                                                     obj["metadata"]["resourceVersion"]}))
            return _json(obj)
        write = {"dry_run": bool(query.get("dryRun")),
                 "field_validation": query.get("fieldValidation"),
                 "manager": managedfields.manager_name(query.get("fieldManager"),
                                                       request.headers.get("User-Agent", ""))}
        if verb == "create":
            body = await self._body(request)
            return _json(self.store.create(info, ns, body or {}, **write), 201)
        if verb == "update":
            body = await self._body(request)
            if req.subresource == "finalize":
                return _json(self._finalize(req, body or {}))
            return _json(self.store.update(info, ns, name or "", body or {}, sub, **write))
        if verb == "patch" and request.content_type == patching.APPLY_PATCH:
            return await self._server_side_apply(request, req, sub, write)
        if verb == "patch":
            return _json(await self._patch(request, req, sub, write))
        options = await self._body(request) or {}
        if not isinstance(options, dict):
            raise errors.bad_request("the DELETE body must be a DeleteOptions object")
        for key in ("gracePeriodSeconds", "propagationPolicy", "orphanDependents"):
            if key in query:
                value: Any = query[key]
                options[key] = listing.query_int(query, key) if key == "gracePeriodSeconds" else (
                    value == "true" if key == "orphanDependents" else value)
        if verb == "delete":
            if write["dry_run"]:
                return _json(self.store.get(info, ns, name or ""))
            return _json(self.store.delete(info, ns, name or "", options))
        return self._delete_collection(req, query, options)

    async def _patch(self, request: web.Request, req: _Request, sub: str | None,
                     write: dict[str, Any]) -> Obj:
        content_type = request.content_type
        patch = await self._body(request)
        current = self.store.get(req.info, req.namespace, req.name or "")
        return self.store.update(req.info, req.namespace, req.name or "",
                                 self._apply_patch(req.info, content_type, current, patch), sub,
                                 **write)

    async def _server_side_apply(self, request: web.Request, req: _Request, sub: str | None,
                                 write: dict[str, Any]) -> web.Response:
        """``application/apply-patch+yaml``: create or merge the applied configuration, with
        field ownership and conflicts (:mod:`~kube_emulator.apiserver.managedfields`)."""
        raw = await request.read()
        try:
            config = yaml.safe_load(raw.decode()) if raw else None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise errors.bad_request(f"the applied configuration is not YAML: {exc}") from None
        manager = request.query.get("fieldManager") or ""
        force = request.query.get("force") in ("true", "1")
        info, name = req.info, req.name or ""
        write = {**write, "manager": manager, "applied": True}
        if isinstance(config, dict):
            meta = config.setdefault("metadata", {})
            if meta.get("name") not in (None, name):
                raise errors.bad_request(f"the name of the applied object ({meta.get('name')}) "
                                         f"does not match the name on the URL ({name})")
            meta["name"] = name
        try:
            live = self.store.get(info, req.namespace, name)
        except errors.ApiError as exc:
            if exc.code != 404 or sub is not None:
                raise
            merged = managedfields.apply(None, config, manager, info.api_version, force=force)
            return _json(self.store.create(info, req.namespace, merged, **write), 201)
        merged = managedfields.apply(live, config, manager, info.api_version, force=force,
                                     subresource=sub or "")
        return _json(self.store.update(info, req.namespace, name, merged, sub, **write))

    def _apply_patch(self, info: ResourceInfo, content_type: str, current: Obj,
                     patch: Any) -> Obj:
        if content_type == patching.MERGE_PATCH:
            return patching.merge_patch(current, patch)
        if content_type == patching.JSON_PATCH:
            return patching.json_patch(current, patch)
        if content_type == patching.STRATEGIC_MERGE_PATCH:
            if info.schema is not None:
                raise errors.unsupported_media_type(
                    "strategic merge patch is not supported for custom resources: use "
                    f"{patching.MERGE_PATCH} or {patching.JSON_PATCH}")
            return patching.strategic_merge_patch(current, patch)
        raise errors.unsupported_media_type(
            f"the body of the request was in an unknown format ({content_type!r}) - accepted "
            f"media types include: {patching.JSON_PATCH}, {patching.MERGE_PATCH}, "
            f"{patching.STRATEGIC_MERGE_PATCH}, {patching.APPLY_PATCH}")

    async def _scale(self, request: web.Request, req: _Request, verb: str) -> web.Response:
        info, ns, name = req.info, req.namespace, req.name or ""
        current = read_scale(info, self.store.get(info, ns, name))
        if verb == "get":
            return _json(current)
        body = await self._body(request)
        if verb == "patch":
            body = self._apply_patch(info, request.content_type, current, body)
        if verb not in ("update", "patch"):
            raise errors.method_not_allowed(f"{verb} is not allowed on {info.plural}/scale")
        manager = managedfields.manager_name(request.query.get("fieldManager"),
                                             request.headers.get("User-Agent", ""))
        return _json(write_scale(self.store, info, ns, name, body or {}, manager))

    def _log(self, req: _Request, query: Any) -> web.Response:
        source = self.server.log_source
        self.store.get(req.info, req.namespace, req.name or "")
        if source is None:
            raise errors.bad_request("pod logs are not available: this emulated cluster "
                                        "was started without a log source")
        return web.Response(text=source(req.namespace or "", req.name or "", dict(query)))

    def _bind(self, req: _Request, body: Any) -> web.Response:
        if req.info.storage_key != POD_KEY or not isinstance(body, dict):
            raise errors.bad_request("a binding needs a Binding body with target.name")
        target = (body.get("target") or {}).get("name")
        if not target:
            raise errors.bad_request("Binding target.name is required (the node's name)")
        self.store.bind(req.info, req.namespace, req.name or "", target)
        return _json({"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Success", "code": 201}, 201)

    def _evict(self, req: _Request, body: Any) -> web.Response:
        """policy/v1 Eviction: no PodDisruptionBudgets exist here, so every eviction is
        allowed: the pod gets the DisruptionTarget condition (reason EvictionByEvictionAPI)
        and is deleted with the Eviction's deleteOptions, gracefully like any delete."""
        if not isinstance(body, dict) or body.get("kind") not in (None, "Eviction"):
            raise errors.bad_request("an eviction needs a policy/v1 Eviction body")
        name = req.name or ""
        if (body.get("metadata") or {}).get("name") not in (None, name):
            raise errors.bad_request(f"name in URL does not match name in Eviction object "
                                     f"({name} != {body['metadata']['name']})")
        pod = self.store.get(req.info, req.namespace, name)
        options = body.get("deleteOptions") or {}
        if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            status = pod.setdefault("status", {})
            status["conditions"] = [c for c in status.get("conditions") or ()
                                    if c.get("type") != "DisruptionTarget"] + [{
                "type": "DisruptionTarget", "status": "True",
                "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting",
                "lastTransitionTime": now_rfc3339()}]
            self.store.update(req.info, req.namespace, name, pod, "status")
        self.store.delete(req.info, req.namespace, name, options)
        return _json({"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Success", "code": 201}, 201)

    def _finalize(self, req: _Request, body: Obj) -> Obj:
        current = self.store.get(req.info, None, req.name or "")
        current["spec"] = body.get("spec") or {}
        return self.store.update(req.info, None, req.name or "", current)

    def _delete_collection(self, req: _Request, query: Any, options: Obj) -> web.Response:
        labels, fields = listing.selectors(req.info, query)
        items, _ = self.store.list(req.info, req.namespace, labels, fields)
        deleted = []
        for item in items:
            meta = item["metadata"]
            try:
                deleted.append(self.store.delete(req.info, meta.get("namespace"),
                                                 meta["name"], options))
            except errors.ApiError as exc:
                if exc.code != 404:
                    raise
        return _json({"kind": f"{req.info.kind}List", "apiVersion": req.info.api_version,
                      "metadata": {"resourceVersion": self.store.resource_version},
                      "items": deleted})


def _audit(verb: str, req: _Request, user: str) -> AuditRecord:
    return AuditRecord(verb, req.info.group, req.info.plural, req.subresource or "",
                       req.namespace or "", req.name or "", user)
