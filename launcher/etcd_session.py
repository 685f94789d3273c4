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
- Secured etcd (``launcher.etcd_client.EtcdSecurity``): TLS and an etcd v3 user. The token
  is fetched again when etcd says it is no longer valid (simple tokens expire on a member that
  has not seen them for ``--auth-token-ttl``, JWTs at their ``ttl``). Refused credentials or a
  permission denied raise ``EtcdAuthError`` at once: waiting cannot fix them, the message
  says what can.

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

from launcher.etcd_client import (
    PLAIN,
    EtcdAuthError,
    EtcdSecurity,
    auth_problem,
    is_expired_token,
    make_client,
    parse_endpoints,
)

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


class EtcdSession:
    """A lease plus a watched cache of ``prefix``; see the module docstring for guarantees."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        prefix: str,
        lease_ttl: int = 3,
        rpc_timeout: float = 2.0,
        name: str = "",
        security: EtcdSecurity = PLAIN,
    ) -> None:
        if lease_ttl < 2:
            raise ValueError(f"lease_ttl={lease_ttl}: etcd needs at least 2 seconds")
        parse_endpoints(endpoints)  # a bad list fails here, not in the background
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        self.name = name
        self.endpoints = endpoints
        self.rpc_timeout = rpc_timeout
        self.security = security
        # Made on connect: with a user, making a client is already a request (authenticate).
        self.client: Any = None
        self._new_client_needed = True
        self._auth_logged = False
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
        log.info("etcd session %s: %s", self.name, self.security.describe())
        while True:
            try:
                self._connect()
                self._grant_lease()
                self._resync()
                break
            except ETCD_ERRORS as exc:
                self._check_auth(exc)
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
        if revoke and self.lease_id and self.client is not None:
            try:
                self.client.revoke_lease(self.lease_id)
            except ETCD_ERRORS as exc:
                log.info("could not revoke lease %x on close: %r", self.lease_id, exc)
        if self.client is None:
            return
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
        if self.client is None:
            raise EtcdUnavailableError("etcd session is not connected yet")
        try:
            return fn()
        except ETCD_ERRORS as exc:
            self._check_auth(exc)
            self._mark_disconnected(exc)
            raise EtcdUnavailableError(f"etcd request failed: {exc!r}") from exc

    # -- background ------------------------------------------------------------------------

    def _connect(self) -> None:
        """(Re)make the client when there is none or its token expired."""
        if not self._new_client_needed and self.client is not None:
            return
        old, self.client = self.client, None
        if old is not None:
            with contextlib.suppress(*ETCD_ERRORS):
                old.close()  # and its watch with it
            self._watch_id = None
        self.client = make_client(self.endpoints, self.rpc_timeout, self.security)
        self._new_client_needed = False
        self._resync_needed = True

    def _check_auth(self, exc: BaseException) -> None:
        """Raise EtcdAuthError for a refusal; note an expired token (the next connect renews
        it); return for anything else (an outage, retried by the caller)."""
        if isinstance(exc, EtcdAuthError):
            raise exc
        if is_expired_token(exc):
            self._new_client_needed = True
            return
        problem = auth_problem(exc)
        if problem is not None:
            who = f"user {self.security.user!r}" if self.security.user else "no user"
            fix = f"; fix {self.security.hint}" if self.security.hint else ""
            raise EtcdAuthError(
                f"etcd refused a request under {self.prefix} ({who}): {problem}{fix}"
            ) from exc

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
                try:
                    self._connect()
                    if self._resync_needed:
                        self._refresh_lease()
                        self._resync()
                    else:
                        self._refresh_lease()
                    self._auth_logged = False
                except ETCD_ERRORS as exc:
                    self._check_auth(exc)
                    raise
                delay = 0.1
                self._wake.wait(interval)
            except EtcdAuthError as exc:
                # Credentials revoked or a role changed while running: callers see the
                # session as disconnected; retry slowly in case an operator fixes it.
                if not self._auth_logged:
                    log.error("%s; retrying every second", exc)
                    self._auth_logged = True
                self._mark_disconnected(exc)
                self._wake.wait(1.0)
            except ETCD_ERRORS as exc:
                self._mark_disconnected(exc)
                self._wake.wait(delay)
                delay = min(delay * 2, 1.0)
            self._wake.clear()
