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
reconciled. The reader takes the whole endpoint list (failing over between members) and, for
the endpoint lists in ``security`` (the operator-managed etcd), the operator's TLS files and
etcd user; other lists (a job's own etcd) are read without them.

What it reads is data written by pods, never text to trust: every value is size-limited
before it is parsed, only the newest ``MAX_REPORTS`` reports are read, and
:func:`check_view` keeps only reports of the job's own workers with a known failure reason
and a sane time, and a round no larger than the job may be, with every message escaped
(:func:`escape_text`) before it can reach a status or an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from elastic_operator.job.observed import node_replica_index
from launcher.contract import (
    MAX_MEMBERS,
    MAX_NODE_ID,
    Completion,
    FailureReport,
    ResizePath,
    completion_key,
    etcd_prefix,
    round_key,
)
from launcher.etcd_client import PLAIN, EtcdSecurity, make_client

# Limits on what pods wrote (an agent's own values are far below them).
MAX_ROUND_BYTES: Final = MAX_MEMBERS * (MAX_NODE_ID + 3) + 512
MAX_REPORT_BYTES: Final = 8192  # FailureReport.to_json keeps its message to 2 KiB
MAX_REPORTS: Final = 256  # newest first; older ones were shown already or never will be
MAX_MESSAGE: Final = 1024
# A report dated further ahead than this would hide every later, real one (lastFailure
# dates them): refused.
MAX_CLOCK_SKEW_SECONDS: Final = 300.0

log = logging.getLogger(__name__)
Key = tuple[str, str]


def _count(value: Any) -> int | None:
    """``value`` when it is a plain positive int (not a bool, a float or a string)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else None


def parse_round(raw: bytes | None) -> tuple[int, int] | None:
    """``(generation, worldSize)`` of a round value, or None when absent, unreadable, too
    large, or not made of positive integers and a list of node ids."""
    if not raw or len(raw) > MAX_ROUND_BYTES:
        return None
    try:
        data = json.loads(raw)
        generation = _count(data["generation"])
        nodes = data.get("members", data.get("nodes", []))
        world = data.get("worldSize", data.get("world_size", len(nodes)
                                               if isinstance(nodes, list) else None))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    world = _count(world)
    if (generation is None or world is None or world > MAX_MEMBERS * 1024
            or not isinstance(nodes, list)
            or not all(isinstance(n, str) and len(n) <= MAX_NODE_ID for n in nodes)):
        return None
    return generation, world


def parse_completion(raw: bytes | None, round_value: bytes | None) -> Completion | None:
    """The completion record when it matches the current round (same generation and members,
    written by a member), else None: a record for another round, or one a pod forged, is no
    evidence that training finished."""
    if not raw or not round_value or len(round_value) > MAX_ROUND_BYTES:
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
    resizes: tuple[ResizePath, ...] = field(default=())


def parse_resizes(values: list[bytes]) -> tuple[ResizePath, ...]:
    """The readable resize-path records among raw values (unreadable ones are skipped)."""
    out = []
    for raw in values:
        try:
            out.append(ResizePath.from_json(raw))
        except ValueError:
            continue
    return tuple(sorted(out, key=lambda r: (r.generation, r.node_id)))


def parse_failures(values: list[bytes]) -> tuple[FailureReport, ...]:
    """The readable reports among raw values, oldest first (unreadable or oversized ones are
    skipped, and so are reports whose fields have the wrong types)."""
    reports = []
    for raw in values:
        if len(raw) > MAX_REPORT_BYTES:
            continue
        try:
            report = FailureReport.from_json(raw.decode(errors="replace"))
        except ValueError:
            continue
        if _well_typed(report):
            reports.append(report)
    return tuple(sorted(reports, key=lambda r: r.timestamp))


def _well_typed(report: FailureReport) -> bool:
    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)
    return (isinstance(report.reason, str) and isinstance(report.message, str)
            and isinstance(report.node_id, str) and is_int(report.rank)
            and (report.exit_code is None or is_int(report.exit_code))
            and (report.generation is None or is_int(report.generation))
            and isinstance(report.timestamp, (int, float))
            and not isinstance(report.timestamp, bool) and math.isfinite(report.timestamp))


def escape_text(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` as printable characters only, at most ``limit`` of them (the tail: an error's
    last lines say most). Control and other non-printable characters (newlines, ANSI escapes,
    bidi overrides) become visible ``\\xNN`` / ``\\uNNNN`` escapes."""
    out = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[-limit * 2:])
    return out[-limit:]


def view_limits(spec: dict[str, Any]) -> tuple[int, int]:
    """``(max_nodes, max_world)`` of a raw job spec for :func:`check_view` (0 when the spec
    does not say: then nothing from etcd is believed)."""
    def positive(name: str, default: int) -> int:
        value = spec.get(name, default)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
            else 0
    nodes = positive("maxReplicas", 0)
    return nodes, nodes * positive("nprocPerNode", 1)


def check_view(view: RendezvousView, job: str, max_nodes: int, max_world: int,
               now: float) -> RendezvousView:
    """Only what can be true of job ``job`` (at most ``max_nodes`` workers, ``max_world``
    processes), escaped for status and events.

    A report is kept when its node id belongs to one of the job's worker pods (index below
    ``max_nodes``), its reason is a failure reason (departures never go to etcd), and it is
    dated no later than ``now`` plus the clock skew; its message and node id are escaped.
    A round claiming more than ``max_world`` processes is dropped (status then estimates).
    """
    reports = []
    failures = set(FailureReport.REASONS) - set(FailureReport.DEPARTURES)
    for report in view.failures:
        index = node_replica_index(job, report.node_id)
        if (index is None or index >= max_nodes or report.reason not in failures
                or not 0 < report.timestamp <= now + MAX_CLOCK_SKEW_SECONDS
                or report.rank < -1 or report.rank >= max_world):
            log.warning("%s: ignoring a failure report from etcd that no worker of this job "
                        "could have written (node %s, reason %s)", job,
                        escape_text(report.node_id, 80), escape_text(report.reason, 40))
            continue
        reports.append(dataclasses.replace(
            report, message=escape_text(report.message),
            node_id=escape_text(report.node_id, MAX_NODE_ID)))
    resizes = tuple(
        dataclasses.replace(r, node_id=escape_text(r.node_id, MAX_NODE_ID),
                            reason=escape_text(r.reason, 200))
        for r in view.resizes
        if (index := node_replica_index(job, r.node_id)) is not None and index < max_nodes)
    round_ = view.round
    if round_ is not None and round_[1] > max_world:
        log.warning("%s: ignoring round %d of world size %d from etcd: the job has at most %d",
                    job, round_[0], round_[1], max_world)
        round_ = None
    return RendezvousView(round_, tuple(reports), view.completion, resizes)


class RoundReader:
    """Cached, non-blocking reads of each job's round key and failure reports."""

    def __init__(
        self,
        on_change: Callable[[Key], Any],
        max_age_seconds: float = 5.0,
        retry_seconds: float = 30.0,
        timeout_seconds: float = 5.0,
        retry_base_seconds: float = 1.0,
        security: dict[str, EtcdSecurity] | None = None,
    ) -> None:
        self._on_change = on_change
        self._security = dict(security or {})
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
        client = self._clients.get(endpoints)
        if client is None:
            client = make_client(endpoints, self._timeout,
                                 self._security.get(endpoints, PLAIN))
            self._clients[endpoints] = client
        value, _meta = client.get(round_key(rdzv_id))
        reports = [raw for raw, _ in client.get_prefix(
            f"{etcd_prefix(rdzv_id)}failures/", sort_order="descend", sort_target="mod",
            limit=MAX_REPORTS)]
        closed, _meta = client.get(completion_key(rdzv_id))
        resizes = [raw for raw, _ in client.get_prefix(f"{etcd_prefix(rdzv_id)}resize/",
                                                       limit=MAX_MEMBERS)]
        return RendezvousView(parse_round(value), parse_failures(reports),
                              parse_completion(closed, value), parse_resizes(resizes))
