"""A thin async Kubernetes REST client for the operator's own calls (pods, services, events,
the job's status subresource).

kopf watches and dispatches; everything the handlers write goes through this client so that
no call blocks the event loop and every call is a plain, auditable REST request. It logs in
with the same :class:`kopf.ConnectionInfo` kopf uses (kubeconfig or in-cluster service
account), so TLS, CA bundles, bearer tokens and client certificates behave the same.
"""

from __future__ import annotations

import base64
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import kopf

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer of this client.

    ``code`` is the HTTP status, ``reason`` and ``message`` those of the Kubernetes Status
    (``message`` alone is what kubectl shows after "Error from server"); ``str()`` also names
    the call.
    """

    def __init__(self, code: int, body: Any, method: str, path: str) -> None:
        self.status: Obj = body if isinstance(body, dict) else {}
        self.code = code
        self.reason = str(self.status.get("reason") or "")
        self.message = str(self.status.get("message") or str(body)[:300] or f"HTTP {code}")
        super().__init__(f"{method} {path}: HTTP {code}: {self.message}")


def path(
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
    group: str = "",
    version: str = "v1",
) -> str:
    """REST path of a collection or object, e.g. ``/api/v1/namespaces/ns/pods/p``."""
    parts = [f"/apis/{group}/{version}" if group else f"/api/{version}"]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def _material(data: str | bytes | None, file: str | None) -> str | None:
    """A file path for PEM material given inline (base64 or PEM) or as a path."""
    if file:
        return file
    if not data:
        return None
    raw = data.encode() if isinstance(data, str) else data
    if not raw.lstrip().startswith(b"-----"):
        raw = base64.b64decode(raw)
    # ssl wants files; the temp file lives as long as the process (tiny, written once).
    handle = tempfile.NamedTemporaryFile(prefix="elastic-op-", suffix=".pem", delete=False)  # noqa: SIM115
    handle.write(raw)
    handle.close()
    return handle.name


def ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    """The TLS settings of ``info`` (False: verification off, as the kubeconfig asked)."""
    if info.insecure:
        return False
    ca = _material(info.ca_data, info.ca_path)
    context = ssl.create_default_context(cafile=ca)
    cert = _material(info.certificate_data, info.certificate_path)
    key = _material(info.private_key_data, info.private_key_path)
    if cert:
        context.load_cert_chain(cert, key)
    return context


class Api:
    """JSON CRUD over one aiohttp session. Create it inside the running loop.

    ``relogin`` (optional) is called after a 401 to fetch fresh credentials (e.g. a rotated
    service-account token); the request is then retried once.
    """

    def __init__(
        self,
        info: kopf.ConnectionInfo,
        timeout: float = 30.0,
        relogin: Callable[[], kopf.ConnectionInfo] | None = None,
    ) -> None:
        self._relogin = relogin
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._connect(info)

    def _connect(self, info: kopf.ConnectionInfo) -> None:
        headers = {"Accept": "application/json", "User-Agent": "elastic-operator"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        auth = aiohttp.BasicAuth(info.username, info.password or "") if info.username else None
        self.server = info.server.rstrip("/")
        self._ssl = ssl_context(info) if self.server.startswith("https") else None
        self._session = aiohttp.ClientSession(
            headers=headers,
            auth=auth,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            connector=aiohttp.TCPConnector(limit=32),
        )

    async def close(self) -> None:
        """Close the session (idempotent)."""
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, url_path: str, body: Any = None, content_type: str | None = None,
        params: dict[str, str] | None = None,
    ) -> Obj:
        """One request; returns the decoded JSON body or raises :class:`ApiError`."""
        try:
            return await self._request(method, url_path, body, content_type, params)
        except ApiError as exc:
            if exc.code != 401 or self._relogin is None:
                raise
        old = self._session
        self._connect(self._relogin())
        if old is not None:
            await old.close()
        return await self._request(method, url_path, body, content_type, params)

    async def _request(
        self, method: str, url_path: str, body: Any, content_type: str | None,
        params: dict[str, str] | None,
    ) -> Obj:
        assert self._session is not None
        headers = {"Content-Type": content_type or "application/json"}
        async with self._session.request(
            method, self.server + url_path, json=body, headers=headers, params=params,
            ssl=self._ssl if self._ssl is not None else True,
        ) as rsp:
            try:
                data: Any = await rsp.json(content_type=None)
            except ValueError:
                data = await rsp.text()
            if rsp.status >= 300:
                raise ApiError(rsp.status, data, method, url_path)
            return data if isinstance(data, dict) else {}

    async def get(self, url_path: str) -> Obj:
        return await self.request("GET", url_path)

    async def list(self, url_path: str, label_selector: str | None = None) -> list[Obj]:
        """Items of a collection (one page; the operator's collections are small)."""
        params = {"labelSelector": label_selector} if label_selector else None
        return list((await self.request("GET", url_path, params=params)).get("items") or [])

    async def create(self, url_path: str, body: Obj) -> Obj:
        return await self.request("POST", url_path, body)

    async def merge_patch(self, url_path: str, body: Obj) -> Obj:
        return await self.request("PATCH", url_path, body, MERGE_PATCH)

    async def delete(self, url_path: str, grace_seconds: int | None = None) -> Obj:
        """Delete gracefully: the object's own grace period unless ``grace_seconds`` is set."""
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        return await self.request("DELETE", url_path, body)


def login(kubeconfig: Path | None) -> kopf.ConnectionInfo:
    """Credentials from in-cluster service account, else the kubeconfig (``$KUBECONFIG``)."""
    settings = kopf.OperatorSettings()
    if kubeconfig is None:
        info = kopf.login_with_service_account(settings=settings)
        if info is not None:
            return info
    info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError(
            "no credentials: not in a cluster and no kubeconfig (pass --kubeconfig or set "
            "KUBECONFIG)"
        )
    return info
