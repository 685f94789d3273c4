"""The product's one way to the Kubernetes API: ``kubernetes_asyncio`` (the official generated
client, on aiohttp), logged in once, answering in dicts, with one retry policy.

Why this library and not the synchronous ``kubernetes`` client: kopf runs every handler on
one event loop, and a blocking client run in threads halved the write throughput and spiked
the loop's lag (``bench/client_choice.py``; figures in ``docs/decisions.md``).

What comes from the library: credentials (:func:`configuration`: the in-cluster service
account, else the kubeconfig, with their token refresh), TLS, the generated typed calls
(``kube.core``: CoreV1Api, ``kube.custom``: CustomObjectsApi), and its error type,
:class:`kubernetes_asyncio.client.ApiException` (``status``: the HTTP code; :func:`reason`
reads the Kubernetes Status reason, e.g. ``AlreadyExists`` apart from a ``Conflict``). What
this module adds, because the library has neither:

- **dict answers**: :meth:`Kube.call` asks for the raw response (``_preload_content=False``)
  and decodes its JSON, so hot paths never build the generated models (a V1Pod costs more to
  deserialise than to send);
- **one retry policy** (:class:`Retry`): 429 and 5xx answers and connection failures (not
  timeouts) are retried with capped exponential backoff, honouring ``Retry-After``. Every
  product write is idempotent (deterministic names; 404 and 409 mean done), so a retried POST
  is safe;
- **one Event writer**: :func:`post_event`, used by every controller.

Watches stay kopf's (the operator) or the CLI's polling; the emulator keeps a small client of
its own (:mod:`kube_emulator.client`) so that it imports nothing from the product it judges.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.client.rest import RESTResponse
from kubernetes_asyncio.config import ConfigException

from elastic_operator.api.kube import now_rfc3339

__all__ = [
    "MERGE_PATCH", "ApiException", "ConfigException", "Kube", "Retry", "configuration",
    "describe", "is_status", "path", "post_event", "reason", "status_message",
]

log = logging.getLogger("elastic_operator.kube_client")
Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
USER_AGENT = "elastic-operator"


async def configuration(kubeconfig: Path | None = None, *,
                        service_account: Path = SERVICE_ACCOUNT) -> k8s_client.Configuration:
    """The library's configuration for this process.

    ``kubeconfig``, else ``$KUBECONFIG`` (read now: the library reads it at import), else a
    pod's service account (``service_account``/token and ca.crt, ``KUBERNETES_SERVICE_HOST``/
    ``_PORT``) when one is mounted, else ``~/.kube/config``. The token of either is re-read by
    the library as it rotates. Raises :class:`kubernetes_asyncio.config.ConfigException`
    saying what is missing.
    """
    config = k8s_client.Configuration()
    kubeconfig = kubeconfig or (Path(os.environ["KUBECONFIG"])
                                if os.environ.get("KUBECONFIG") else None)
    if kubeconfig is None and (service_account / "token").is_file():
        k8s_config.incluster_config.InClusterConfigLoader(
            token_filename=str(service_account / "token"),
            cert_filename=str(service_account / "ca.crt"),
        ).load_and_set(config)
        return config
    source = str(kubeconfig or Path.home() / ".kube" / "config")
    try:
        await k8s_config.load_kube_config(config_file=source, client_configuration=config)
    except ConfigException as exc:
        raise ConfigException(
            f"no credentials: not in a pod and kubeconfig {source} is unusable ({exc}); pass "
            "--kubeconfig or set KUBECONFIG") from exc
    return config


@dataclass(frozen=True)
class Retry:
    """When a failed call is tried again: 429/5xx answers, a refused connection and a
    connection the server closed (e.g. a kept-alive one it timed out), at most
    ``attempts`` times in all, after ``Retry-After`` when the server sends one (capped at
    ``cap_seconds``), else after ``base_seconds`` doubled per attempt with jitter."""

    attempts: int = 5
    base_seconds: float = 0.2
    cap_seconds: float = 10.0

    def delay(self, attempt: int, error: BaseException) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None: give up and raise."""
        if attempt + 1 >= self.attempts:
            return None
        if isinstance(error, ApiException):
            if error.status != 429 and not 500 <= (error.status or 0) <= 599:
                return None
            after = (error.headers or {}).get("Retry-After", "")
            if after.isdigit():
                return min(float(after), self.cap_seconds)
        elif (not isinstance(error, aiohttp.ClientConnectorError
                             | aiohttp.ServerDisconnectedError)
              or isinstance(error, aiohttp.ClientSSLError)):
            # A timeout is not retried: the server may be overloaded, and the callers' own
            # backoff (the reconciler's, the autoscaler's) is the gentler retry. Neither is a
            # bug or TLS refusing the server, which no retry can help.
            return None
        backoff = min(self.cap_seconds, self.base_seconds * 2 ** attempt)
        return backoff * random.uniform(0.5, 1.0)


class Kube:
    """One logged-in ``kubernetes_asyncio`` ApiClient with its typed APIs and the call policy.

    Create it inside the running loop (:meth:`login`) and :meth:`close` it. Calls:
    ``await kube.call(kube.core.create_namespaced_pod, ns, manifest)`` for the generated
    operations, ``await kube.request("GET", path)`` for a path the CLI discovered.
    """

    def __init__(self, config: k8s_client.Configuration, *, retry: Retry = Retry(),
                 timeout: float = 30.0, connections: int = 32) -> None:
        config.connection_pool_maxsize = connections
        self.client = k8s_client.ApiClient(config)
        self.client.user_agent = USER_AGENT
        # The library's session trusts the environment, which costs two thread hops per
        # request (a ~/.netrc read and a proxy lookup): a third of a request's CPU, and the
        # operator's throughput under load (bench/operator_scale.py). Like kopf's watches
        # (settings.networking.trust_env is off by default), the client ignores $*_PROXY and
        # netrc; Configuration.proxy still applies. Same connector, so the same TLS and limit.
        library_session = self.client.rest_client.pool_manager
        self.client.rest_client.pool_manager = aiohttp.ClientSession(
            connector=library_session.connector, trust_env=False, read_bufsize=2**21)
        library_session.detach()
        self.core = k8s_client.CoreV1Api(self.client)
        self.custom = k8s_client.CustomObjectsApi(self.client)
        self.retry = retry
        self.timeout = timeout

    @classmethod
    async def login(cls, kubeconfig: Path | None = None, *,
                    service_account: Path = SERVICE_ACCOUNT, retry: Retry = Retry()) -> Kube:
        """A client with the credentials :func:`configuration` finds."""
        return cls(await configuration(kubeconfig, service_account=service_account),
                   retry=retry)

    @property
    def server(self) -> str:
        """The API server's URL."""
        return str(self.client.configuration.host)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.close()

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, operation: Callable[..., Awaitable[Any]], *args: Any,
                   **kwargs: Any) -> Obj:
        """A generated operation (e.g. ``kube.core.patch_namespaced_pod``), retried as
        :attr:`retry` says; the answer's JSON as a dict. Raises ApiException."""
        answer = await self._send(lambda: operation(
            *args, _preload_content=False, _request_timeout=self.timeout, **kwargs))
        return answer if isinstance(answer, dict) else {}

    async def request(self, method: str, url_path: str, *, body: Any = None,
                      params: dict[str, str] | None = None,
                      content_type: str = "application/json") -> Any:
        """Any REST path through the same client (the CLI's discovered kinds, subresources
        such as pods/log): the decoded JSON, or the text of a non-JSON answer."""
        return await self._send(lambda: self.client.call_api(
            url_path, method, query_params=list((params or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body, auth_settings=["BearerToken"], _preload_content=False,
            _return_http_data_only=True, _request_timeout=self.timeout))

    async def _send(self, send: Callable[[], Awaitable[Any]]) -> Any:
        attempt = 0
        while True:
            try:
                return await _decode(await send())
            except (ApiException, aiohttp.ClientConnectionError) as exc:
                delay = self.retry.delay(attempt, exc)
                if delay is None:
                    raise
                log.debug("retrying in %.2fs after %s", delay, describe(exc))
            attempt += 1
            await asyncio.sleep(delay)


async def _decode(response: aiohttp.ClientResponse) -> Any:
    data = await response.read()
    if not 200 <= response.status <= 299:
        error = ApiException(http_resp=RESTResponse(response, data))
        error.body = data.decode("utf-8", "replace")
        raise error
    if not data:
        return {}
    if response.content_type == "application/json":
        return json.loads(data)
    return data.decode("utf-8", "replace")


def describe(exc: BaseException) -> str:
    """One line for a log: ``HTTP 409 AlreadyExists: pods "p" already exists`` (the
    library's own ``str()`` spans lines with every header), else the exception's repr."""
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {reason(exc) or exc.reason}: {status_message(exc)}"
    return repr(exc)


def _status(error: ApiException) -> Obj:
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def reason(error: ApiException) -> str:
    """The Kubernetes Status reason of ``error`` (``AlreadyExists``, ``Conflict``,
    ``Invalid``, ``TooManyRequests``...), '' when the body is not a Status."""
    return str(_status(error).get("reason") or "")


def status_message(error: ApiException) -> str:
    """What kubectl prints after "Error from server": the Status message, else the HTTP
    status and reason phrase."""
    return str(_status(error).get("message") or f"HTTP {error.status} {error.reason}")


def is_status(error: BaseException, code: int, status_reason: str | None = None) -> bool:
    """Whether ``error`` is an API answer with HTTP ``code`` (and, if given, that reason)."""
    return (isinstance(error, ApiException) and error.status == code
            and (status_reason is None or reason(error) == status_reason))


def path(plural: str, namespace: str | None = None, name: str | None = None,
         subresource: str | None = None, group: str = "", version: str = "v1") -> str:
    """REST path of a collection or object, e.g. ``/api/v1/namespaces/ns/pods/p`` (for
    :meth:`Kube.request`, where the kind is only known at run time)."""
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    tail = "".join(f"/{part}" for part in (name, subresource) if part)
    return f"{prefix}{scope}/{plural}{tail}"


async def post_event(kube: Kube, regarding: Obj, reason: str, message: str, *,
                     component: str, warning: bool = False,
                     now: datetime | None = None) -> None:
    """Record a core/v1 Event about ``regarding`` (a body with apiVersion, kind, metadata).

    Best effort, as controllers treat events: a failure is logged, never raised, since the
    event reports an action already taken (or not) and must not turn it into a failure.
    """
    meta = regarding.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    stamp = now_rfc3339(now)
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name') or 'object'}.",
                     "namespace": namespace},
        "involvedObject": {
            "apiVersion": regarding.get("apiVersion", ""),
            "kind": regarding.get("kind", ""),
            "name": meta.get("name", ""),
            "namespace": namespace,
            "uid": meta.get("uid", ""),
        },
        "type": "Warning" if warning else "Normal",
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": os.environ.get("HOSTNAME", component),
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        await kube.call(kube.core.create_namespaced_event, namespace, event)
    except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("%s/%s: event %s not recorded: %s", namespace, meta.get("name"), reason,
                    describe(exc))
