"""Watch streams of the emulated API server: a bounded event history and live watchers.

Guarantees: a watch opened at resourceVersion R receives every matching change with a
resourceVersion above R exactly once, in order, then live changes; R older than the kept
history raises 410 Expired (the client relists, as against kube-apiserver). Without R (or
with "0") the watch starts with a synthetic ADDED event per current object. With selectors, a
change that makes an object start matching arrives as ADDED and one that makes it stop
matching as DELETED, as kube-apiserver's watch cache does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kube_emulator.apiserver import errors
from kube_emulator.apiserver.resources import ResourceInfo
from kube_emulator.apiserver.selectors import FieldSelector, LabelSelector

Obj = dict[str, Any]
StorageKey = tuple[str, str]
Render = Callable[[ResourceInfo, Obj], Obj]


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``obj`` is the state after it, ``old`` the state before (None on ADDED)."""

    rv: int
    key: StorageKey
    type: str
    obj: Obj
    old: Obj | None


@dataclass(eq=False)
class Watcher:
    """A live watch: matching events are put on ``queue`` (``None`` means: closed)."""

    info: ResourceInfo
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)

    def passes(self, obj: Obj | None) -> bool:
        """Whether ``obj`` is in this watch's namespace and matches its selectors."""
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(obj)

    def translate(self, event: WatchEvent) -> tuple[str, Obj] | None:
        """The event this watcher sees, if any (selector transitions become ADDED/DELETED)."""
        now, before = self.passes(event.obj), self.passes(event.old)
        if event.type == "DELETED":
            return ("DELETED", event.obj) if now else None
        if now and before:
            return ("MODIFIED", event.obj)
        if now:
            return ("ADDED", event.obj)
        if before and event.old is not None:
            meta = {**event.old["metadata"], "resourceVersion": str(event.rv)}
            return ("DELETED", {**event.old, "metadata": meta})
        return None


INITIAL_EVENTS_END = "k8s.io/initial-events-end"


class WatchHub:
    """The event history (``history_size`` events) and the open watches."""

    def __init__(self, history_size: int, render: Render) -> None:
        self._history: deque[WatchEvent] = deque(maxlen=history_size)
        self._compacted_rv = 0
        self._watchers: set[Watcher] = set()
        self._render = render

    def publish(self, key: StorageKey, kind: str, obj: Obj, old: Obj | None) -> None:
        """Record a change (``obj`` carries its new resourceVersion) and deliver it.

        ``obj`` and ``old`` are kept by reference: the store never mutates stored objects."""
        if len(self._history) == self._history.maxlen:
            self._compacted_rv = self._history[0].rv
        event = WatchEvent(int(obj["metadata"]["resourceVersion"]), key, kind, obj, old)
        self._history.append(event)
        for watcher in list(self._watchers):
            if watcher.info.storage_key == key:
                self._deliver(watcher, event)

    def _deliver(self, watcher: Watcher, event: WatchEvent) -> None:
        seen = watcher.translate(event)
        if seen is not None:
            kind, obj = seen
            watcher.queue.put_nowait((kind, self._render(watcher.info, obj)))

    def open(self, watcher: Watcher, resource_version: str | None,
             current: Iterable[Obj], initial_events_end: str | None = None) -> Watcher:
        """Queue the events the watch starts with and register it for live events.

        ``initial_events_end`` (a watch-list request, ``sendInitialEvents=true``): the
        current objects are sent whatever ``resource_version`` says, then a BOOKMARK at
        this resourceVersion annotated ``k8s.io/initial-events-end``, which tells the client
        (client-go's WatchListClient, kubectl >= 1.32's wait) that the initial state is
        complete."""
        if resource_version in (None, "", "0") or initial_events_end is not None:
            for obj in current:
                if watcher.passes(obj):
                    watcher.queue.put_nowait(("ADDED", self._render(watcher.info, obj)))
            if initial_events_end is not None:
                watcher.queue.put_nowait(("BOOKMARK", {
                    "kind": watcher.info.kind, "apiVersion": watcher.info.api_version,
                    "metadata": {"resourceVersion": initial_events_end,
                                 "annotations": {INITIAL_EVENTS_END: "true"}}}))
        else:
            try:
                since = int(resource_version)
            except ValueError:
                raise errors.bad_request(
                    f"invalid resourceVersion {resource_version!r}: use a value that a list "
                    "or a watch returned") from None
            if since < self._compacted_rv:
                raise errors.gone(f"too old resource version: {since} "
                                     f"({self._compacted_rv})")
            for event in self._history:
                if event.rv > since and event.key == watcher.info.storage_key:
                    self._deliver(watcher, event)
        self._watchers.add(watcher)
        return watcher

    def stop(self, watcher: Watcher) -> None:
        """Stop delivering to ``watcher``."""
        self._watchers.discard(watcher)

    def close_resource(self, key: StorageKey) -> None:
        """End the watches of a resource that stopped being served (its CRD is gone)."""
        for watcher in [w for w in self._watchers if w.info.storage_key == key]:
            watcher.queue.put_nowait(None)
            self._watchers.discard(watcher)

    def close_all(self) -> None:
        """End every watch stream (server shutdown)."""
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)
        self._watchers.clear()
