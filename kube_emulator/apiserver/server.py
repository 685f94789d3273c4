"""An in-process Kubernetes API server over plain HTTP, for the local cluster and tests.

Clients (kopf, kubernetes_asyncio, kubectl, our own controllers) talk to it over HTTP
exactly as to kube-apiserver: discovery, OpenAPI v2/v3, get/list/watch/create/update/patch/
delete/deletecollection, server-side apply with managed fields, Table output for ``kubectl
get``, label and field selectors, resourceVersion and optimistic concurrency, status and
scale subresources, CRDs with schema validation, write-time defaults, finalizers, graceful pod
deletion, owner-reference garbage collection and namespace finalization. Where things live:
:mod:`~kube_emulator.apiserver.store` (objects, resourceVersion),
:mod:`~kube_emulator.apiserver.strategy` and :mod:`~kube_emulator.apiserver.defaults`
(per-resource rules), :mod:`~kube_emulator.apiserver.managedfields` (field ownership, apply),
:mod:`~kube_emulator.apiserver.watch` (watch history), :mod:`~kube_emulator.apiserver.garbage`
(GC and finalization controllers), :mod:`~kube_emulator.apiserver.schema` and
:mod:`~kube_emulator.apiserver.cel` (CRD validation), :mod:`~kube_emulator.apiserver.openapi`,
:mod:`~kube_emulator.apiserver.tables` and :mod:`~kube_emulator.apiserver.printers` (what
kubectl reads), :mod:`~kube_emulator.apiserver.http` and
:mod:`~kube_emulator.apiserver.listing` (the HTTP mapping). This module starts and stops
the server, writes kubeconfigs and keeps an audit trail of who called what.

It listens on plain HTTP, or on HTTPS with ``ssl_context`` (what an in-cluster client
expects). :meth:`ApiServer.refuse` makes it answer the next requests as an overloaded
kube-apiserver does (429 TooManyRequests or 503 ServiceUnavailable, with ``Retry-After``),
so clients' retries can be tested without a real overload.

Differences from a real cluster a client can notice (by design):
- bearer tokens only name the caller for the audit trail (an unknown token is 401); there is
  no authorization, no admission webhooks, no quotas;
- JSON only: no protobuf. A protobuf or CBOR body gets 415, which breaks the typed
  ``kubectl create secret|configmap|...`` of kubectl 1.37 (1.32 sends JSON; ``apply`` and
  the other generic commands always do); an OpenAPI request accepting only protobuf gets 406;
  no aggregated discovery; ``resourceVersionMatch`` is read only with ``sendInitialEvents``
  (watch-list, which starts from the current state whatever ``resourceVersion`` says);
- server-side apply treats lists as atomic, and built-in schemas carry no patch strategies
  (see :mod:`~kube_emulator.apiserver.managedfields` and
  :mod:`~kube_emulator.apiserver.openapi`);
- the versions of a CRD share one storage and only ``apiVersion`` changes between them (the
  ``conversion: None`` strategy); ``core/v1`` and ``events.k8s.io/v1`` events are stored
  apart;
- CEL rules outside :mod:`~kube_emulator.apiserver.cel` are skipped with a warning;
  pods are not validated beyond spec immutability and unknown fields (no ``image`` needed:
  the local runtime ignores images);
- paging with ``limit``/``continue`` reads current data, not a snapshot;
- ``pods/log`` returns the log so far and ends, also with ``follow=true``;
- ``pods/exec`` speaks the WebSocket channel protocols v5/v4 only (no SPDY, no TTY), see
  :mod:`~kube_emulator.apiserver.remotecommand`; ``pods/eviction`` always succeeds (there
  are no PodDisruptionBudgets);
- Orphan propagation strips ownerReferences at once instead of through the ``orphan``
  finalizer; the garbage collector runs right after each change, not milliseconds later;
- a watch older than the kept history (``history_size`` events) gets an ERROR event with
  410 reason ``Expired``, as a compacted etcd would give.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import ssl
import threading
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from kube_emulator.apiserver import errors
from kube_emulator.apiserver.errors import ApiError
from kube_emulator.apiserver.garbage import GarbageCollector
from kube_emulator.apiserver.http import AuditRecord, LogSource, build_app
from kube_emulator.apiserver.remotecommand import ExecSource
from kube_emulator.apiserver.resources import ResourceInfo
from kube_emulator.apiserver.selectors import LabelSelector
from kube_emulator.apiserver.store import ObjectStore

__all__ = ["ApiServer", "ApiServerThread", "AuditRecord", "write_kubeconfig"]


class ApiServer:
    """The emulated API server on ``host:port`` (port 0 picks a free port).

    ``pods_graceful``: deleting a pod bound to a node only marks it (deletionTimestamp) and a
    kubelet removes it with ``gracePeriodSeconds=0``, as on a real cluster; pass False when
    no kubelet runs (operator tests) so that pod deletes are immediate.
    ``log_source(namespace, pod, query)`` serves ``pods/log`` when given, ``exec_source``
    runs ``pods/exec`` commands (:mod:`~kube_emulator.apiserver.remotecommand`); a kubelet
    sets it once it runs. ``ssl_context``: serve HTTPS with it (its certificate must name
    ``host``).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, pods_graceful: bool = True,
                 history_size: int = 2000, bookmark_interval: float = 5.0,
                 log_source: LogSource | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self._refusals: collections.deque[ApiError] = collections.deque()
        self.store = ObjectStore(history_size=history_size, pods_graceful=pods_graceful)
        self.audit: list[AuditRecord] = []
        self.bookmark_interval = bookmark_interval
        self.log_source = log_source
        self.exec_source: ExecSource | None = None
        self.tokens: dict[str, str] = {}
        self._gc = GarbageCollector(self.store)
        self._gc_wake: asyncio.Event | None = None
        self._gc_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` (``https`` with TLS) once started."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def refuse(self, count: int, code: int = 429, retry_after: int = 1) -> None:
        """Answer the next ``count`` authenticated requests with 429 TooManyRequests (or,
        with ``code=503``, ServiceUnavailable) and ``Retry-After: retry_after``, the way
        kube-apiserver sheds load; nothing is stored or audited for them."""
        if code not in (429, 503):
            raise ValueError(f"refuse(code={code}): only 429 and 503 are overload answers")
        make = errors.too_many_requests if code == 429 else errors.service_unavailable
        self._refusals.extend(make(retry_after) for _ in range(count))

    def next_refusal(self) -> ApiError | None:
        """The refusal due for the request being served, if :meth:`refuse` queued one."""
        return self._refusals.popleft() if self._refusals else None

    def add_user(self, user: str) -> str:
        """A bearer token that the audit trail attributes to ``user`` (stable per user)."""
        for token, name in self.tokens.items():
            if name == user:
                return token
        token = f"{user}-{secrets.token_hex(8)}"
        self.tokens[token] = user
        return token

    def record(self, record: AuditRecord) -> None:
        """Append to the audit trail (called by the request handlers)."""
        self.audit.append(record)

    def audit_rules(self, user: str | None = None) -> set[tuple[str, str, str]]:
        """(group, resource[/subresource], verb) triples called, optionally by one user."""
        return {(r.group, f"{r.resource}/{r.subresource}" if r.subresource else r.resource,
                 r.verb) for r in self.audit if user is None or r.user == user}

    def objects(self, api_version: str, plural: str, namespace: str | None = None,
                label_selector: str | None = None) -> list[dict[str, Any]]:
        """Copies of the stored objects of a resource (for test assertions; thread-safe).

        ``api_version`` is ``v1`` or ``group/version``; ``namespace`` None means all."""
        info = self._info(api_version, plural)
        items, _ = self.store.list(info, namespace, LabelSelector.parse(label_selector))
        return items

    def count(self, api_version: str, plural: str, namespace: str | None = None,
              label_selector: str | None = None) -> int:
        """How many stored objects match, without copying them (for benchmarks that poll)."""
        return self.store.count(self._info(api_version, plural), namespace,
                                LabelSelector.parse(label_selector))

    def object(self, api_version: str, plural: str, namespace: str | None,
               name: str) -> dict[str, Any] | None:
        """A copy of one stored object, or None (for test assertions; thread-safe)."""
        try:
            return self.store.get(self._info(api_version, plural), namespace, name)
        except ApiError:
            return None

    def _info(self, api_version: str, plural: str) -> ResourceInfo:
        group, _, version = api_version.rpartition("/")
        return self.store.registry.resource(group, version, plural)

    async def start(self) -> None:
        """Listen; returns once the port is bound (``url`` is then final)."""
        self._gc_wake = asyncio.Event()
        wake = self._gc_wake
        loop = asyncio.get_running_loop()
        self.store.on_change = lambda: loop.call_soon(wake.set)
        self._gc_task = asyncio.create_task(self._collect_garbage())
        self._runner = web.AppRunner(build_app(self), access_log=None,
                                     handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        sockets = site._server.sockets if site._server else ()  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every watch, stop listening and stop the garbage collector."""
        self.store.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._gc_task is not None:
            self._gc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gc_task
            self._gc_task = None
        self.store.on_change = lambda: None

    async def _collect_garbage(self) -> None:
        assert self._gc_wake is not None
        while True:
            await self._gc_wake.wait()
            self._gc_wake.clear()
            while self._gc.run_once():
                await asyncio.sleep(0)

    def write_kubeconfig(self, path: str | Path, context_name: str = "elastic-local",
                         user: str = "admin", namespace: str = "default") -> Path:
        """Write a kubeconfig (plain http, a bearer token for ``user``) and return its path.

        kopf (its own kubeconfig login and the kubernetes clients'), kubernetes_asyncio and
        kubectl accept it; requests made with it are recorded in the audit trail as ``user``.
        """
        target = Path(path)
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": context_name, "cluster": {"server": self.url}}],
            "users": [{"name": user, "user": {"token": self.add_user(user)}}],
            "contexts": [{"name": context_name, "context": {
                "cluster": context_name, "user": user, "namespace": namespace}}],
            "current-context": context_name,
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        return target


class ApiServerThread:
    """An :class:`ApiServer` on its own event loop in a daemon thread, for synchronous code.

    ``start()`` returns once the server listens; ``stop()`` shuts it down and joins the
    thread. ``server`` gives access to the audit trail and the read-only store helpers.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, pods_graceful: bool = True,
                 history_size: int = 2000, bookmark_interval: float = 5.0,
                 log_source: LogSource | None = None) -> None:
        self.server = ApiServer(host, port, pods_graceful=pods_graceful,
                                history_size=history_size,
                                bookmark_interval=bookmark_interval, log_source=log_source)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` once started."""
        return self.server.url

    def start(self, timeout: float = 30.0) -> ApiServerThread:
        """Start serving; raise if the server could not start within ``timeout`` seconds."""
        self._thread = threading.Thread(target=self._run, name="apiserver", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the emulated API server did not start within {timeout}s")
        if self._error is not None:
            raise RuntimeError("the emulated API server failed to start") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.server.stop())
            loop.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving and join the thread (idempotent)."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def write_kubeconfig(self, path: str | Path, context_name: str = "elastic-local",
                         user: str = "admin", namespace: str = "default") -> Path:
        """See :meth:`ApiServer.write_kubeconfig`."""
        return self.server.write_kubeconfig(path, context_name, user, namespace)

    def __enter__(self) -> ApiServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_kubeconfig(server: ApiServer | ApiServerThread, path: str | Path,
                     context_name: str = "elastic-local", user: str = "admin") -> Path:
    """Module-level form of :meth:`ApiServer.write_kubeconfig`."""
    return server.write_kubeconfig(path, context_name, user)
