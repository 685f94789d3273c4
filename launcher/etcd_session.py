"""A resilient etcd v3 session: one lease kept alive, a watched cache of one key prefix.

What it guarantees:
- ``lease_id`` names a lease this session keeps alive (refreshed every ``min(ttl / 4, 0.5)``
  seconds). If etcd loses it (revoked, or expired while this client could not reach etcd), the
  session grants a new one. After every reconnect, each key written with ``put_owned`` is put
  again if it is missing or differs, so "my key exists" holds again as soon as etcd answers.
- ``view()`` returns a consistent copy of every key under ``prefix`` as of one etcd revision,
  kept current by a prefix watch (no polling). ``wait_change`` blocks until it changes.
- A lost connection never raises out of the background thread: the session retries with
  exponential backoff (0.1 s doubling to 1 s), then re-reads the prefix and re-creates the watch
  from the snapshot's revision, so no event is missed. While disconnected, ``connected`` is
  False and the cache is stale; callers must not infer "a peer is gone" from a stale cache.

Client library: ``python3-etcd3`` (imports as ``etcd3``), see launcher/README.md for why.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import etcd3
import grpc
from etcd3 import events as etcd_events
from etcd3 import watch as etcd_watch
from etcd3.client import Endpoint, MultiEndpointEtcd3Client

log = logging.getLogger(__name__)

# python3-etcd3 0.13.0's watch thread calls ``six.itervalues`` when its stream ends but never
# imports six (a NameError that kills the thread before it reports the error to callbacks).
# Give the module the one function it uses, so stream errors reach ``_on_watch``.
if not hasattr(etcd_watch, "six"):
    etcd_watch.six = SimpleNamespace(itervalues=lambda d: iter(d.values()))  # type: ignore[attr-defined]

# Everything a broken connection or a restarting etcd can raise through python3-etcd3.
# ValueError: its "Trying to use a failed node" when an endpoint is marked failed.
ETCD_ERRORS: tuple[type[BaseException], ...] = (
    etcd3.exceptions.Etcd3Exception,
    grpc.RpcError,
    ValueError,
)


class EtcdUnavailableError(ConnectionError):
    """etcd did not answer (down, restarting, or unreachable); the caller may retry."""


@dataclass(frozen=True)
class Entry:
    """One key's value and metadata in the session's cache."""

    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def parse_endpoints(endpoints: str | Sequence[str]) -> list[tuple[str, int]]:
    """Parse ``"host:port,host:port"`` (or a list); an ``http://`` scheme is accepted."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed: list[tuple[str, int]] = []
    for raw in items:
        item = raw.strip().removeprefix("http://")
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(
                f"etcd endpoint {raw!r} is not HOST:PORT; set --rdzv-endpoint "
                "(or ELASTIC_RDZV_ENDPOINT) to e.g. 'etcd:2379'"
            )
        parsed.append((host or "127.0.0.1", int(port)))
    if not parsed:
        raise ValueError("no etcd endpoint given; set --rdzv-endpoint or ELASTIC_RDZV_ENDPOINT")
    return parsed


def make_client(endpoints: str | Sequence[str], timeout: float) -> MultiEndpointEtcd3Client:
    """An etcd3 client that fails over between endpoints and never blacklists one for long."""
    eps = [
        Endpoint(host, port, secure=False, time_retry=0.5)
        for host, port in parse_endpoints(endpoints)
    ]
    return MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout, failover=True)


class EtcdSession:
    """A lease plus a watched cache of ``prefix``; see the module docstring for guarantees."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        prefix: str,
        lease_ttl: int = 3,
        rpc_timeout: float = 2.0,
        name: str = "",
    ) -> None:
        if lease_ttl < 2:
            raise ValueError(f"lease_ttl={lease_ttl}: etcd needs at least 2 seconds")
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        self.name = name
        self.client = make_client(endpoints, rpc_timeout)
        self.lease_id = 0
        self._owned: dict[str, bytes] = {}
        self._cache: dict[str, Entry] = {}
        self._version = 0
        self._cond = threading.Condition()
        self._connected = False
        self._resync_needed = True
        self._watch_id: Any = None
        self._watch_epoch = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[], None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> EtcdSession:
        """Connect (retrying until ``timeout``), grant the lease, load and watch the prefix."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            try:
                self._grant_lease()
                self._resync()
                break
            except ETCD_ERRORS as exc:
                if time.monotonic() + delay > deadline:
                    raise EtcdUnavailableError(
                        f"etcd not reachable within {timeout}s: {exc!r}"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        self._thread = threading.Thread(
            target=self._keeper, name=f"etcd-session-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def close(self, revoke: bool = True) -> None:
        """Stop the background thread; revoke the lease (deleting owned keys) if reachable."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if revoke and self.lease_id:
            try:
                self.client.revoke_lease(self.lease_id)
            except ETCD_ERRORS as exc:
                log.info("could not revoke lease %x on close: %r", self.lease_id, exc)
        try:
            if self._watch_id is not None:
                self.client.cancel_watch(self._watch_id)
        except ETCD_ERRORS:
            pass
        self.client.close()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the session's threads) after every cache change."""
        self._listeners.append(callback)

    # -- reading ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def view(self) -> tuple[int, dict[str, Entry]]:
        """(change counter, copy of the cache) taken atomically."""
        with self._cond:
            return self._version, dict(self._cache)

    def wait_change(self, since: int, timeout: float) -> int:
        """Block until the change counter differs from ``since`` or ``timeout``; return it."""
        with self._cond:
            self._cond.wait_for(lambda: self._version != since, timeout=max(timeout, 0.0))
            return self._version

    # -- writing ---------------------------------------------------------------------------

    def put_owned(self, key: str, value: bytes) -> None:
        """Put ``key`` bound to the session lease; re-put automatically on a new lease."""
        self._owned[key] = value
        self._call(lambda: self.client.put(key, value, lease=self.lease_id))

    def put(self, key: str, value: bytes, with_lease: bool = False) -> None:
        """Plain put (``with_lease``: vanish with this session, but not re-put)."""
        self._call(lambda: self.client.put(key, value, lease=self.lease_id if with_lease else None))

    def get(self, key: str) -> bytes | None:
        value, _ = self._call(lambda: self.client.get(key))
        return value  # type: ignore[no-any-return]

    def transaction(self, compare: list[Any], success: list[Any]) -> bool:
        """Atomic compare-and-swap; True when the comparisons held and ``success`` applied."""
        ok, _ = self._call(
            lambda: self.client.transaction(compare=compare, success=success, failure=[])
        )
        return bool(ok)

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ETCD_ERRORS as exc:
            self._mark_disconnected(exc)
            raise EtcdUnavailableError(f"etcd request failed: {exc!r}") from exc

    # -- background ------------------------------------------------------------------------

    def _mark_disconnected(self, exc: BaseException) -> None:
        if self._connected:
            log.warning("etcd connection lost (%s): %r; retrying with backoff", self.name, exc)
        self._connected = False
        self._resync_needed = True
        self._wake.set()
        self._notify()

    def _notify(self) -> None:
        with self._cond:
            self._version += 1
            self._cond.notify_all()
        for callback in self._listeners:
            callback()

    def _grant_lease(self) -> None:
        lease = self.client.lease(self.lease_ttl)
        self.lease_id = lease.id
        for key, value in self._owned.items():
            self.client.put(key, value, lease=self.lease_id)

    def _refresh_lease(self) -> None:
        ttl = 0
        for response in self.client.refresh_lease(self.lease_id):
            ttl = response.TTL
            break
        if ttl <= 0:
            log.warning("etcd lease %x lost (%s); granting a new one", self.lease_id, self.name)
            self._grant_lease()

    def _resync(self) -> None:
        if self._watch_id is not None:
            with contextlib.suppress(ETCD_ERRORS):
                self.client.cancel_watch(self._watch_id)
            self._watch_id = None
        response = self.client.get_prefix_response(self.prefix)
        cache = {
            kv.key.decode(): Entry(kv.value, kv.create_revision, kv.mod_revision, kv.lease)
            for kv in response.kvs
        }
        revision = response.header.revision
        # An owned put that failed during the outage (or lost with the lease) is redone now.
        for key, value in self._owned.items():
            entry = cache.get(key)
            if entry is None or entry.value != value or entry.lease != self.lease_id:
                self.client.put(key, value, lease=self.lease_id)
        self._watch_epoch += 1
        epoch = self._watch_epoch
        with self._cond:
            self._cache = cache
        self._watch_id = self.client.add_watch_prefix_callback(
            self.prefix, lambda resp: self._on_watch(epoch, resp), start_revision=revision + 1
        )
        self._resync_needed = False
        if not self._connected:
            log.info("etcd connected (%s) at revision %d", self.name, revision)
        self._connected = True
        self._notify()

    def _on_watch(self, epoch: int, response: Any) -> None:
        if epoch != self._watch_epoch:
            return
        if isinstance(response, BaseException):
            self._mark_disconnected(response)
            return
        with self._cond:
            for event in response.events:
                key = event.key.decode()
                if isinstance(event, etcd_events.DeleteEvent):
                    self._cache.pop(key, None)
                else:
                    self._cache[key] = Entry(
                        event.value, event.create_revision, event.mod_revision, event.lease
                    )
        self._notify()

    def _keeper(self) -> None:
        interval = min(self.lease_ttl / 4, 0.5)
        delay = 0.1
        while not self._stop.is_set():
            try:
                if self._resync_needed:
                    self._refresh_lease()
                    self._resync()
                else:
                    self._refresh_lease()
                delay = 0.1
                self._wake.wait(interval)
            except ETCD_ERRORS as exc:
                self._mark_disconnected(exc)
                self._wake.wait(delay)
                delay = min(delay * 2, 1.0)
            self._wake.clear()
