"""Watch streams: event types, resume from a resourceVersion, 410 Expired, bookmarks,
timeouts and selector transitions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from kube_emulator.apiserver.server import ApiServer
from tests.kube_emulator.apiserver.conftest import CRDS, MERGE, PODS, WIDGETS, Client, pod


@asynccontextmanager
async def stream(api: Client, query: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    """Open a watch and feed its decoded lines into a queue."""
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    rsp = await api.session.get(f"{api.server.url}{PODS}?watch=true&{query}")
    assert rsp.status == 200

    async def pump() -> None:
        async for line in rsp.content:
            if line.strip():
                await events.put(json.loads(line))
        await events.put({"type": "CLOSED"})

    task = asyncio.create_task(pump())
    try:
        yield events
    finally:
        task.cancel()
        rsp.close()


async def next_event(events: asyncio.Queue[dict[str, Any]], skip_bookmarks: bool = True
                     ) -> dict[str, Any]:
    while True:
        event = await asyncio.wait_for(events.get(), 10)
        if not (skip_bookmarks and event["type"] == "BOOKMARK"):
            return event


async def test_watch_from_list_version_sees_changes_in_order(api: Client) -> None:
    await api.ok("POST", PODS, pod("before"))
    listing = await api.ok("GET", PODS)
    async with stream(api, f"resourceVersion={listing['metadata']['resourceVersion']}") as ev:
        await api.ok("POST", PODS, pod("a"))
        await api.ok("PATCH", f"{PODS}/a", {"metadata": {"labels": {"x": "1"}}}, MERGE)
        await api.ok("DELETE", f"{PODS}/a")
        kinds = [(e["type"], e["object"]["metadata"]["name"])
                 for e in [await next_event(ev) for _ in range(3)]]
    assert kinds == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


async def test_watch_without_version_starts_with_current_objects(api: Client) -> None:
    await api.ok("POST", PODS, pod("a"))
    async with stream(api, "") as ev:
        first = await next_event(ev)
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "a")
        assert first["object"]["kind"] == "Pod" and first["object"]["apiVersion"] == "v1"


async def test_watch_list_ends_its_initial_events_with_a_bookmark(api: Client) -> None:
    """sendInitialEvents (client-go's WatchListClient, on in kubectl 1.37): the current
    objects, then a bookmark annotated k8s.io/initial-events-end, then live events."""
    a = await api.ok("POST", PODS, pod("a"))
    await api.ok("POST", PODS, pod("b"))
    query = (f"resourceVersion={a['metadata']['resourceVersion']}&sendInitialEvents=true&"
             "resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")
    async with stream(api, query) as ev:
        initial = [await next_event(ev) for _ in range(2)]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in initial] == [
            ("ADDED", "a"), ("ADDED", "b")]
        end = await next_event(ev, skip_bookmarks=False)
        assert end["type"] == "BOOKMARK"
        assert end["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
        await api.ok("POST", PODS, pod("c"))
        live = await next_event(ev)
        assert (live["type"], live["object"]["metadata"]["name"]) == ("ADDED", "c")
    status, body = await api.get(f"{PODS}?watch=true&sendInitialEvents=true")
    assert status == 422 and "resourceVersionMatch=NotOlderThan" in body["message"]


async def test_watch_replays_history_after_a_version(api: Client) -> None:
    a = await api.ok("POST", PODS, pod("a"))
    await api.ok("POST", PODS, pod("b"))
    async with stream(api, f"resourceVersion={a['metadata']['resourceVersion']}") as ev:
        event = await next_event(ev)
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "b")


async def test_too_old_version_is_410_expired() -> None:
    server = ApiServer(history_size=3)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Client(server, session)
            first = await api.ok("POST", PODS, pod("a"))
            for name in ("b", "c", "d", "e"):
                await api.ok("POST", PODS, pod(name))
            since = int(first["metadata"]["resourceVersion"]) - 1
            async with stream(api, f"resourceVersion={since}") as ev:
                event = await next_event(ev)
                assert event["type"] == "ERROR"
                assert event["object"]["code"] == 410
                assert event["object"]["reason"] == "Expired"
                assert (await next_event(ev))["type"] == "CLOSED"
    finally:
        await server.stop()


async def test_bookmarks_and_timeout() -> None:
    server = ApiServer(bookmark_interval=0.1)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Client(server, session)
            rv = server.store.resource_version
            query = f"resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1"
            async with stream(api, query) as ev:
                bookmark = await next_event(ev, skip_bookmarks=False)
                assert bookmark["type"] == "BOOKMARK"
                assert bookmark["object"]["metadata"]["resourceVersion"] == rv
                assert bookmark["object"]["kind"] == "Pod"
                while (await next_event(ev, skip_bookmarks=False))["type"] != "CLOSED":
                    pass  # the stream ends by itself after timeoutSeconds
    finally:
        await server.stop()


async def test_selector_transitions_become_added_and_deleted(api: Client) -> None:
    rv = api.server.store.resource_version
    async with stream(api, f"resourceVersion={rv}&labelSelector=app%3Dweb") as ev:
        await api.ok("POST", PODS, pod("a", {"app": "db"}))
        await api.ok("PATCH", f"{PODS}/a", {"metadata": {"labels": {"app": "web"}}}, MERGE)
        await api.ok("PATCH", f"{PODS}/a", {"metadata": {"labels": {"app": "db"}}}, MERGE)
        added, removed = await next_event(ev), await next_event(ev)
    assert added["type"] == "ADDED" and added["object"]["metadata"]["labels"] == {"app": "web"}
    assert removed["type"] == "DELETED"


async def test_watch_field_selector_and_namespace_scope(api: Client) -> None:
    await api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": "other"}})
    rv = api.server.store.resource_version
    async with stream(api, f"resourceVersion={rv}&fieldSelector=metadata.name%3Db") as ev:
        await api.ok("POST", "/api/v1/namespaces/other/pods", pod("b"))
        await api.ok("POST", PODS, pod("a"))
        await api.ok("POST", PODS, pod("b"))
        event = await next_event(ev)
        assert (event["object"]["metadata"]["namespace"],
                event["object"]["metadata"]["name"]) == ("default", "b")
        assert ev.empty()


async def test_server_stop_ends_watch_streams() -> None:
    server = ApiServer()
    await server.start()
    async with aiohttp.ClientSession() as session:
        api = Client(server, session)
        async with stream(api, f"resourceVersion={server.store.resource_version}") as ev:
            await server.stop()
            assert (await next_event(ev))["type"] == "CLOSED"


async def test_watch_ends_when_its_crd_is_deleted(crd_api: Client) -> None:
    api = crd_api
    rv = api.server.store.resource_version
    events: list[dict[str, Any]] = []
    async with api.session.get(f"{api.server.url}{WIDGETS}?watch=true&resourceVersion={rv}"
                               ) as rsp:
        await api.ok("DELETE", f"{CRDS}/widgets.example.test")

        async def read() -> None:
            async for line in rsp.content:
                events.append(json.loads(line))

        await asyncio.wait_for(read(), 10)  # the stream ends instead of hanging
    assert events == []
