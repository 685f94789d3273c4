"""A small async Kubernetes REST client for the local cluster's controllers and CLI.

The scheduler, the kubelet, the node emulation and ``elastic-operator local`` talk to the API
server over HTTP exactly as they would to kube-apiserver, so they exercise the same paths the
operator does. This client covers what they need and nothing more: JSON CRUD, merge patches,
subresources, and a list-then-watch loop (:func:`informer`) that resumes from the last seen
resourceVersion and relists after ``410 Expired``. It reads the kubeconfigs that
:func:`kube_emulator.apiserver.server.write_kubeconfig` writes (plain http, bearer token).

It is the emulator's own client (the role client-go plays for kube components): it imports
nothing from the product, so the emulator's controllers stay independent of the code they
judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from kube_emulator.times import now_rfc3339

log = logging.getLogger(__name__)
Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer.

    ``code`` is the HTTP status, ``reason`` and ``message`` those of the Kubernetes Status
    (``message`` alone is what kubectl shows after "Error from server"); ``str()`` also names
    the call. The emulator's own class, not the product's: the emulator imports nothing of
    the operator it judges.
    """

    def __init__(self, code: int, body: Any, method: str, path: str) -> None:
        self.status: Obj = body if isinstance(body, dict) else {}
        self.code = code
        self.reason = str(self.status.get("reason") or "")
        self.message = str(self.status.get("message") or str(body)[:300] or f"HTTP {code}")
        super().__init__(f"{method} {path}: HTTP {code}: {self.message}")


def resource_path(plural: str, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None, group: str = "", version: str = "v1") -> str:
    """REST path of a collection or object, e.g. ``/api/v1/namespaces/ns/pods/p``."""
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    tail = "".join(f"/{part}" for part in (name, subresource) if part)
    return f"{prefix}{scope}/{plural}{tail}"


def read_kubeconfig(path: str | Path) -> tuple[str, str | None, str]:
    """(server URL, bearer token or None, default namespace) of the current context."""
    config = yaml.safe_load(Path(path).read_text()) or {}
    current = config.get("current-context")
    contexts = {c["name"]: c.get("context") or {} for c in config.get("contexts") or ()}
    context = contexts.get(current) or next(iter(contexts.values()), {})
    clusters = {c["name"]: c.get("cluster") or {} for c in config.get("clusters") or ()}
    users = {u["name"]: u.get("user") or {} for u in config.get("users") or ()}
    cluster = clusters.get(context.get("cluster", ""), {})
    if "server" not in cluster:
        raise ValueError(f"kubeconfig {path}: the current context has no cluster.server; "
                         "write it with `elastic-operator local up`")
    token = users.get(context.get("user", ""), {}).get("token")
    return cluster["server"].rstrip("/"), token, context.get("namespace") or "default"


class ApiClient:
    """JSON over HTTP to one API server. Use as an async context manager or call close()."""

    def __init__(self, server: str, token: str | None = None, *,
                 namespace: str = "default") -> None:
        self.server = server.rstrip("/")
        self.namespace = namespace
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._session = aiohttp.ClientSession(headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=None,
                                                                            sock_connect=10))

    @classmethod
    def from_kubeconfig(cls, path: str | Path) -> ApiClient:
        """A client for the kubeconfig's current context."""
        server, token, namespace = read_kubeconfig(path)
        return cls(server, token, namespace=namespace)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._session.close()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(self, method: str, path: str, *, body: Any = None,
                      params: dict[str, str] | None = None,
                      content_type: str = "application/json") -> Any:
        """One call; returns the decoded JSON (or text) body, raises ApiError on non-2xx."""
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self._session.request(method, self.server + path, data=data,
                                         params=params, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=60)) as resp:
            text = await resp.text()
            if resp.status >= 400:
                try:
                    status = json.loads(text)
                except ValueError:
                    status = {"message": text.strip() or resp.reason}
                raise ApiError(resp.status, status if isinstance(status, dict) else
                               {"message": str(status)}, method, path)
            if resp.content_type == "application/json" and text:
                return json.loads(text)
            return text

    async def get(self, path: str, **params: str) -> Obj:
        """GET an object or a list (``params`` e.g. labelSelector, fieldSelector)."""
        result = await self.request("GET", path, params=params or None)
        assert isinstance(result, dict)
        return result

    async def create(self, path: str, body: Obj, **params: str) -> Obj:
        """POST ``body`` to a collection (or a subresource such as pods/binding); ``params``
        e.g. ``dryRun="All"``, ``fieldValidation="Strict"``."""
        result = await self.request("POST", path, body=body, params=params or None)
        return result if isinstance(result, dict) else {}

    async def patch(self, path: str, body: Obj, **params: str) -> Obj:
        """A JSON merge patch (``params`` as for :meth:`create`)."""
        result = await self.request("PATCH", path, body=body, content_type=MERGE_PATCH,
                                    params=params or None)
        assert isinstance(result, dict)
        return result

    async def delete(self, path: str, **options: Any) -> Obj:
        """DELETE with DeleteOptions (e.g. ``gracePeriodSeconds=0``)."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", **options} if options else None
        result = await self.request("DELETE", path, body=body)
        return result if isinstance(result, dict) else {}

    async def watch(self, path: str, resource_version: str,
                    **params: str) -> AsyncIterator[tuple[str, Obj]]:
        """Stream (type, object) events after ``resource_version`` until the server closes.

        ERROR events are raised as ApiError (410 Expired means: relist).
        """
        query = {"watch": "true", "resourceVersion": resource_version,
                 "allowWatchBookmarks": "true", **params}
        async with self._session.get(self.server + path, params=query) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, {"message": await resp.text()}, "WATCH", path)
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiError(int(status.get("code") or 500), status, "WATCH", path)
                yield event["type"], event["object"]


Handler = Callable[[str, Obj], Awaitable[None] | None]


async def informer(client: ApiClient, path: str, handler: Handler, *,
                   ready: asyncio.Event | None = None, **params: str) -> None:
    """List then watch ``path`` forever, calling ``handler(type, obj)`` for every change.

    Guarantees: the handler first sees every existing object as ADDED (after a relist, again:
    handlers must be idempotent per object), then each later change in order. Connection
    errors and expired resourceVersions lead to a relist after a short backoff; ``ready`` is
    set after the first complete list. Runs until cancelled.
    """
    backoff = 0.2
    while True:
        try:
            listing = await client.get(path, **params)
            for obj in listing.get("items") or ():
                await _call(handler, "ADDED", obj)
            if ready is not None:
                ready.set()
            rv = str((listing.get("metadata") or {}).get("resourceVersion") or "")
            while True:
                async for kind, obj in client.watch(path, rv, **params):
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    if kind != "BOOKMARK":
                        await _call(handler, kind, obj)
                    backoff = 0.2
        except asyncio.CancelledError:
            raise
        except ApiError as exc:
            if exc.code != 410:
                log.warning("watch of %s failed: %s; relisting", path, exc)
        except (aiohttp.ClientError, OSError, ValueError, TimeoutError) as exc:
            log.debug("watch of %s interrupted: %r; relisting", path, exc)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)


async def _call(handler: Handler, kind: str, obj: Obj) -> None:
    result = handler(kind, obj)
    if result is not None:
        await result


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; True when it is set.

    Unlike ``asyncio.wait_for`` before Python 3.12, a cancellation arriving as the event is
    set is never swallowed, so loops built on this always stop when cancelled.
    """
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until every one has finished (cancelling again should a task
    have absorbed a cancellation)."""
    for task in tasks:
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()


async def record_event(client: ApiClient, obj: Obj, reason: str, message: str, *,
                       component: str, event_type: str = "Normal") -> None:
    """Create a core/v1 Event about ``obj`` as a controller would; failures are only logged
    (an event is a courtesy to the user, never a reason to stop reconciling)."""
    meta = obj.get("metadata") or {}
    stamp = now_rfc3339()
    namespace = meta.get("namespace") or "default"
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
        "involvedObject": {"apiVersion": obj.get("apiVersion", "v1"),
                           "kind": obj.get("kind", "Pod"), "name": meta.get("name"),
                           "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        "reason": reason, "message": message, "type": event_type,
        "source": {"component": component}, "reportingComponent": component,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }
    try:
        await client.create(resource_path("events", namespace), event)
    except (ApiError, aiohttp.ClientError, OSError) as exc:
        log.warning("could not record event %s on %s/%s: %s", reason, namespace,
                    meta.get("name"), exc)
