"""What each job's agents wrote to etcd, read without blocking reconciles.

Three things: the last formed round (``launcher.contract.round_key``, written by the rank-0
agent after each formation), the agents' failure reports (``contract.failure_key``, one per
node, latest wins), which tell about failures the agent handled inside its pod (a crashed or
hung training process it restarted) that no pod status shows, and the job's completion record
(``contract.completion_key``), taken only when it names the round that is current in etcd and
its writer is one of that round's members.

:meth:`RoundReader.latest` answers from a cache at once and refreshes it in a worker thread
(the etcd3 client is synchronous), so a slow or unreachable etcd never delays a reconcile; an
unreachable endpoint list is retried after 1, 2, 4 ... seconds, at most ``retry_seconds``.
When a refresh finds something new, ``on_change`` is called with the job's key so it is
reconciled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from launcher.contract import Completion, FailureReport, completion_key, etcd_prefix, round_key

log = logging.getLogger(__name__)
Key = tuple[str, str]


def parse_round(raw: bytes | None) -> tuple[int, int] | None:
    """``(generation, worldSize)`` of a round value, or None when absent or unreadable."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
        generation = int(data["generation"])
        world = data.get("worldSize")
        if world is None:
            world = data.get("world_size", len(data.get("members") or data.get("nodes") or ()))
        return generation, int(world)
    except (ValueError, KeyError, TypeError):
        return None


def parse_completion(raw: bytes | None, round_value: bytes | None) -> Completion | None:
    """The completion record when it matches the current round (same generation and members,
    written by a member), else None: a record for another round, or one a pod forged, is no
    evidence that training finished."""
    if not raw or not round_value:
        return None
    try:
        record = Completion.from_json(raw)
        current = json.loads(round_value)
        members = tuple(str(m) for m in current["members"])
        generation = int(current["generation"])
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable completion record: %s", str(exc)[:200])
        return None
    if record.generation != generation or record.members != members:
        log.warning("ignoring completion record for generation %d: the current round is %d",
                    record.generation, generation)
        return None
    return record


@dataclass(frozen=True)
class RendezvousView:
    """One job's rendezvous state in etcd: ``round`` is ``(generation, worldSize)``."""

    round: tuple[int, int] | None = None
    failures: tuple[FailureReport, ...] = field(default=())
    completion: Completion | None = None


def parse_failures(values: list[bytes]) -> tuple[FailureReport, ...]:
    """The readable reports among raw values, oldest first (unreadable ones are skipped)."""
    reports = []
    for raw in values:
        try:
            reports.append(FailureReport.from_json(raw.decode(errors="replace")))
        except ValueError:
            continue
    return tuple(sorted(reports, key=lambda r: r.timestamp))


class RoundReader:
    """Cached, non-blocking reads of each job's round key and failure reports."""

    def __init__(
        self,
        on_change: Callable[[Key], Any],
        max_age_seconds: float = 5.0,
        retry_seconds: float = 30.0,
        timeout_seconds: float = 5.0,
        retry_base_seconds: float = 1.0,
    ) -> None:
        self._on_change = on_change
        self._max_age = max_age_seconds
        self._retry = retry_seconds
        self._retry_base = retry_base_seconds
        self._timeout = timeout_seconds
        self._values: dict[Key, tuple[float, RendezvousView]] = {}
        self._down_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}  # consecutive failed reads per endpoint list
        self._clients: dict[str, Any] = {}
        self._inflight: set[Key] = set()
        self._probing: set[str] = set()  # endpoints with a first read in flight
        self._good: set[str] = set()  # endpoints that answered at least once
        self._tasks: set[asyncio.Task[None]] = set()

    def latest(self, key: Key, endpoints: str, rdzv_id: str) -> RendezvousView:
        """The cached view (empty until first read); schedules a refresh when stale."""
        stamp, value = self._values.get(key, (0.0, RendezvousView()))
        now = time.monotonic()
        stale = now - stamp > self._max_age
        untried_busy = endpoints not in self._good and endpoints in self._probing
        if (stale and key not in self._inflight and not untried_busy
                and self._down_until.get(endpoints, 0) < now):
            # Until an etcd has answered once, one read at a time probes it: a hundred jobs
            # on an unreachable etcd cost one timeout, not a hundred blocked threads.
            self._inflight.add(key)
            self._probing.add(endpoints)
            task = asyncio.create_task(self._refresh(key, endpoints, rdzv_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return value

    def forget(self, key: Key) -> None:
        """Drop a deleted job's cache entry."""
        self._values.pop(key, None)

    async def close(self) -> None:
        """Cancel refreshes and close the etcd clients."""
        for task in list(self._tasks):
            task.cancel()
        for client in self._clients.values():
            await asyncio.to_thread(client.close)
        self._clients.clear()

    async def _refresh(self, key: Key, endpoints: str, rdzv_id: str) -> None:
        try:
            value = await asyncio.to_thread(self._read, endpoints, rdzv_id)
        except Exception as exc:  # any client error means: etcd not reachable now
            self._good.discard(endpoints)
            # Back off 1, 2, 4 ... up to retry_seconds: a slow first connect (a loaded node)
            # is retried soon, an etcd that is really gone is not hammered.
            failures = self._failures[endpoints] = self._failures.get(endpoints, 0) + 1
            retry = min(self._retry, self._retry_base * 2.0 ** min(failures - 1, 16))
            self._down_until[endpoints] = time.monotonic() + retry
            client = self._clients.pop(endpoints, None)  # reconnect from scratch next time
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(client.close)
            if failures == 1:
                log.info("rendezvous etcd %s not readable (%s); status.worldSize estimated "
                         "from ready pods; retry in %.0fs", endpoints, exc, retry)
            return
        finally:
            self._inflight.discard(key)
            self._probing.discard(endpoints)
        self._good.add(endpoints)
        self._failures.pop(endpoints, None)
        old = self._values.get(key, (0.0, RendezvousView()))[1]
        self._values[key] = (time.monotonic(), value)
        if value != old:
            self._on_change(key)

    def _read(self, endpoints: str, rdzv_id: str) -> RendezvousView:
        import etcd3  # imported lazily: only needed when a round is read

        client = self._clients.get(endpoints)
        if client is None:
            host, _, port = endpoints.split(",")[0].rpartition(":")
            client = etcd3.client(host=host, port=int(port), timeout=self._timeout)
            self._clients[endpoints] = client
        value, _meta = client.get(round_key(rdzv_id))
        reports = [raw for raw, _ in client.get_prefix(f"{etcd_prefix(rdzv_id)}failures/")]
        closed, _meta = client.get(completion_key(rdzv_id))
        return RendezvousView(parse_round(value), parse_failures(reports),
                              parse_completion(closed, value))
