"""Async client of the kernels REST API that Jupyter Server and Enterprise Gateway share.

Only what reclaim needs: ``GET /api/kernels`` and ``DELETE /api/kernels/{id}``, with the token
sent as ``Authorization: token ...``. The token is never part of a repr, a log line or an
exception message: errors name the URL (without any query string) and the HTTP status only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from elastic_operator.api.kube import parse_time
from elastic_operator.reclaim.rule import KernelFacts


class JupyterError(RuntimeError):
    """The server could not be asked, or answered with an error; ``reason`` is CamelCase."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _redacted(url: str) -> str:
    """``url`` without user info, query or fragment (where a token could hide)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def kernel_facts(model: Any) -> KernelFacts | None:
    """A kernel model of /api/kernels as rule facts; None when it has no usable id.

    Missing or malformed fields become None, which the rule treats as unknown (never reclaim).
    """
    if not isinstance(model, dict) or not isinstance(model.get("id"), str) or not model["id"]:
        return None
    state = model.get("execution_state")
    connections = model.get("connections")
    valid_connections = isinstance(connections, int) and not isinstance(connections, bool)
    return KernelFacts(
        kernel_id=model["id"],
        execution_state=state if isinstance(state, str) else None,
        last_activity=parse_time(model.get("last_activity")),
        connections=connections if valid_connections and connections >= 0 else None,
    )


class JupyterClient:
    """One Jupyter server or gateway. Use as ``async with JupyterClient(url, token) as c:``."""

    def __init__(self, url: str, token: str | None, timeout: float = 10.0) -> None:
        self._base = url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        auth = "token=<redacted>" if self._token else "no token"
        return f"JupyterClient({_redacted(self._base)!r}, {auth})"

    async def __aenter__(self) -> JupyterClient:
        headers = {"Authorization": f"token {self._token}"} if self._token else {}
        self._session = aiohttp.ClientSession(headers=headers, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def list_kernels(self) -> list[KernelFacts]:
        """Every kernel the server runs. Raises :class:`JupyterError` unless the whole list was
        read: a partial answer must not look like a list without the missing kernels' facts."""
        body = await self._request("GET", "/api/kernels", ok=(200,))
        if not isinstance(body, list):
            raise JupyterError("BadResponse", f"GET {self._where('/api/kernels')}: not a list")
        facts = [kernel_facts(model) for model in body]
        return [f for f in facts if f is not None]

    async def shutdown(self, kernel_id: str) -> None:
        """Shut a kernel down gracefully; a kernel already gone (404) counts as done."""
        await self._request("DELETE", f"/api/kernels/{quote(kernel_id, safe='')}", ok=(204, 404))

    def _where(self, path: str) -> str:
        return _redacted(self._base + path)

    async def _request(self, method: str, path: str, ok: tuple[int, ...]) -> Any:
        if self._session is None:
            raise RuntimeError("use JupyterClient as an async context manager")
        where = f"{method} {self._where(path)}"
        try:
            async with self._session.request(method, self._base + path) as resp:
                if resp.status == 401:
                    raise JupyterError(
                        "Unauthorized",
                        f"{where}: HTTP 401; check the token in jupyter.tokenSecretRef",
                    )
                if resp.status == 403:
                    # Enterprise Gateway answers 403 to a good token while listing is off.
                    raise JupyterError(
                        "Unauthorized",
                        f"{where}: HTTP 403; check the token in jupyter.tokenSecretRef, and on "
                        "Enterprise Gateway that listing kernels is on (EG_LIST_KERNELS=True)",
                    )
                if resp.status not in ok:
                    raise JupyterError("HttpError", f"{where}: HTTP {resp.status}")
                if resp.status in (204, 404):
                    return None
                try:
                    return await resp.json(content_type=None)
                except ValueError as err:
                    raise JupyterError("BadResponse", f"{where}: body is not JSON") from err
        except TimeoutError as err:
            raise JupyterError("Timeout", f"{where}: no answer in time") from err
        except aiohttp.ClientError as err:
            # The class name only: some aiohttp errors carry the request, headers included.
            raise JupyterError("Unreachable", f"{where}: {type(err).__name__}") from None
