"""Reads of a collection over HTTP: list (selectors, paging, Table) and watch streams.

Paging follows kube-apiserver's contract, not its snapshot: ``continue`` tokens encode the
last (namespace, name) returned, so a later page reads current data. A watch sends one JSON
event per line; with ``as=Table`` each event's object is a one-row Table (column definitions
only in the first event); ``allowWatchBookmarks`` adds BOOKMARKs every bookmark interval.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from aiohttp import web

from kube_emulator.apiserver import errors, tables
from kube_emulator.apiserver.resources import ResourceInfo
from kube_emulator.apiserver.selectors import FieldSelector, LabelSelector
from kube_emulator.apiserver.store import ObjectStore


def json_response(body: Any, status: int = 200) -> web.Response:
    """``body`` as an application/json response."""
    return web.Response(status=status, body=json.dumps(body).encode(),
                        content_type="application/json")


def query_int(query: Any, key: str) -> int | None:
    """An integer query parameter (None when absent); 400 BadRequest when malformed."""
    raw = query.get(key)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise errors.bad_request(f"query parameter {key}={raw!r} must be an integer") from None



def selectors(info: ResourceInfo, query: Any) -> tuple[LabelSelector, FieldSelector]:
    """The label and field selectors of a request (400 when malformed)."""
    return (LabelSelector.parse(query.get("labelSelector")),
            FieldSelector.parse(query.get("fieldSelector"), info.selectable_fields()))



def list_response(store: ObjectStore, info: ResourceInfo, namespace: str | None, query: Any,
                  as_table: str | None) -> web.Response:
    """A list (or its Table), with label/field selectors and ``limit``/``continue`` paging."""
    labels, fields = selectors(info, query)
    items, rv = store.list(info, namespace, labels, fields)
    metadata: dict[str, Any] = {"resourceVersion": rv}
    start = query.get("continue")
    if start:
        try:
            after = json.loads(base64.urlsafe_b64decode(start.encode()))
        except ValueError:
            raise errors.bad_request(f"invalid continue token {start!r}") from None
        items = [i for i in items if [i["metadata"].get("namespace", ""),
                                      i["metadata"]["name"]] > after]
    limit = query_int(query, "limit") or 0
    if limit and len(items) > limit:
        last = items[limit - 1]["metadata"]
        token = json.dumps([last.get("namespace", ""), last["name"]]).encode()
        metadata["continue"] = base64.urlsafe_b64encode(token).decode()
        metadata["remainingItemCount"] = len(items) - limit
        items = items[:limit]
    if as_table:
        return json_response(tables.table(info, items, as_table,
                                  include=query.get("includeObject"), list_meta=metadata))
    return json_response({"kind": f"{info.kind}List", "apiVersion": info.api_version,
                  "metadata": metadata, "items": items})


async def watch_response(request: web.Request, store: ObjectStore, info: ResourceInfo,
                         namespace: str | None, bookmark_interval: float) -> web.StreamResponse:
    """A watch stream: one JSON event a line (or a Table per event when asked), BOOKMARKs
    every ``bookmark_interval`` seconds when allowed, until ``timeoutSeconds`` or the
    server closes it."""
    query = request.query
    labels, fields = selectors(info, query)
    timeout = query_int(query, "timeoutSeconds") or None
    bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
    as_table = tables.table_version(request.headers.get("Accept", ""))
    include = query.get("includeObject")
    first = True
    initial = query.get("sendInitialEvents") in ("true", "1")
    if initial and (query.get("resourceVersionMatch") != "NotOlderThan" or not bookmarks):
        raise errors.ApiError(422, "Invalid", "sendInitialEvents=true needs "
                              "resourceVersionMatch=NotOlderThan and "
                              "allowWatchBookmarks=true")
    response = web.StreamResponse(headers={"Content-Type": "application/json",
                                           "Transfer-Encoding": "chunked"})
    await response.prepare(request)
    try:
        watcher = store.watch(info, namespace, labels, fields,
                                   query.get("resourceVersion"),
                                   send_initial_events=initial)
    except errors.ApiError as exc:
        await _send(response, {"type": "ERROR", "object": exc.status()})
        return response
    deadline = time.monotonic() + timeout if timeout else None
    interval = bookmark_interval
    try:
        while True:
            wait = interval
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            try:
                event = await asyncio.wait_for(watcher.queue.get(), wait)
            except TimeoutError:
                if bookmarks and (deadline is None or time.monotonic() < deadline):
                    await _send(response, _bookmark(store, info))
                continue
            if event is None:
                break
            obj = event[1]
            if as_table and event[0] != "BOOKMARK":
                # Column definitions only in the first event, as kube-apiserver sends them.
                obj = tables.table(info, [obj], as_table, include=include,
                                   list_meta={"resourceVersion":
                                              obj["metadata"]["resourceVersion"]},
                                   headers=first)
                first = False
            await _send(response, {"type": event[0], "object": obj})
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        store.stop_watch(watcher)
    return response


def _bookmark(store: ObjectStore, info: ResourceInfo) -> dict[str, Any]:
    return {"type": "BOOKMARK", "object": {
        "kind": info.kind, "apiVersion": info.api_version,
        "metadata": {"resourceVersion": store.resource_version}}}


async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(json.dumps(event).encode() + b"\n")


