"""The Kubernetes calls the reclaim controller makes, over the operator's REST client
(:class:`elastic_operator.k8s.Api`, ``memo.api``), as plain dicts.

Errors come back as :class:`KubeError` whose message names the object and the HTTP status
only: no response body is copied or logged, so nothing read from a Secret can leak through it.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

import aiohttp

from elastic_operator import k8s, labels
from elastic_operator.api.kernelreclaim import PLURAL
from elastic_operator.api.kube import now_rfc3339

COMPONENT = "elastic-operator-reclaim"


class KubeError(RuntimeError):
    """A Kubernetes call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, what: str, status: int) -> None:
        super().__init__(f"{what}: HTTP {status}" if status else f"{what}: no answer")
        self.status = status


class ReclaimKube:
    """The few calls a check needs."""

    def __init__(self, api: k8s.Api) -> None:
        self._api = api

    async def _call(
        self,
        what: str,
        method: str,
        path: str,
        body: Any = None,
        content_type: str | None = None,
        **params: str,
    ) -> dict[str, Any]:
        try:
            return await self._api.request(method, path, body, content_type, params or None)
        except k8s.ApiError as err:
            raise KubeError(what, err.code) from None
        except (aiohttp.ClientError, TimeoutError):
            raise KubeError(what, 0) from None

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        """The decoded value of ``key`` in Secret ``namespace/name``.

        Raises :class:`KubeError` (404 also for a missing key); the value is never in a message.
        """
        what = f"Secret {namespace}/{name}"
        secret = await self._call(f"reading {what}", "GET", k8s.path("secrets", namespace, name))
        data = secret.get("data") or {}
        if key not in data:
            raise KubeError(f"{what} has no key {key!r}", 404)
        try:
            return base64.b64decode(data[key], validate=True).decode().strip()
        except (binascii.Error, UnicodeDecodeError):
            raise KubeError(f"{what} key {key!r} is not base64 UTF-8 text", 422) from None

    async def set_reclaim_at(self, namespace: str, name: str, when: datetime | None) -> None:
        """Set (or with None, remove) the reclaim-at mark on a pod."""
        value = now_rfc3339(when) if when is not None else None
        patch = {"metadata": {"annotations": {labels.RECLAIM_AT: value}}}
        await self._call(
            f"annotating pod {namespace}/{name}",
            "PATCH",
            k8s.path("pods", namespace, name),
            patch,
            k8s.MERGE_PATCH,
        )

    async def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod gracefully (already gone counts as done)."""
        try:
            await self._call(
                f"deleting pod {namespace}/{name}", "DELETE", k8s.path("pods", namespace, name)
            )
        except KubeError as err:
            if err.status != 404:
                raise

    async def patch_policy_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge ``status`` into the policy's status subresource."""
        path = k8s.path(
            PLURAL, namespace, name, "status", group=labels.GROUP, version=labels.VERSION
        )
        await self._call(
            f"updating status of {PLURAL}/{name}",
            "PATCH",
            path,
            {"status": status},
            k8s.MERGE_PATCH,
        )

    async def post_event(
        self,
        regarding: dict[str, Any],
        *,
        reason: str,
        message: str,
        warning: bool = False,
        now: datetime,
    ) -> None:
        """Record a core/v1 Event about ``regarding`` (a body with apiVersion, kind, metadata)."""
        meta = regarding.get("metadata") or {}
        namespace = meta.get("namespace", "default")
        stamp = now_rfc3339(now)
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": regarding.get("apiVersion", ""),
                "kind": regarding.get("kind", ""),
                "name": meta.get("name", ""),
                "namespace": namespace,
                "uid": meta.get("uid", ""),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self._call(f"posting event {reason}", "POST", k8s.path("events", namespace), event)
