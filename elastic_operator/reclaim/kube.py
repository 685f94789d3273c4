"""The Kubernetes calls the reclaim controller makes, over the operator's client
(:class:`elastic_operator.kube_client.Kube`, ``memo.kube``), as plain dicts.

Errors come back as :class:`KubeError` whose message names the object and the HTTP status
only: no response body is copied or logged, so nothing read from a Secret can leak through it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp

from elastic_operator import kube_client, labels
from elastic_operator.api.kernelreclaim import PLURAL
from elastic_operator.api.kube import now_rfc3339
from elastic_operator.kube_client import MERGE_PATCH, ApiException, Kube

COMPONENT = "elastic-operator-reclaim"


class KubeError(RuntimeError):
    """A Kubernetes call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, what: str, status: int) -> None:
        super().__init__(f"{what}: HTTP {status}" if status else f"{what}: no answer")
        self.status = status


class ReclaimKube:
    """The few calls a check needs."""

    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    async def _call(self, what: str, operation: Callable[..., Awaitable[Any]], *args: Any,
                    **kwargs: Any) -> dict[str, Any]:
        try:
            return await self._kube.call(operation, *args, **kwargs)
        except ApiException as err:
            raise KubeError(what, err.status or 0) from None
        except (aiohttp.ClientError, TimeoutError):
            raise KubeError(what, 0) from None

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        """The decoded value of ``key`` in Secret ``namespace/name``.

        Raises :class:`KubeError` (404 also for a missing key); the value is never in a message.
        """
        what = f"Secret {namespace}/{name}"
        secret = await self._call(f"reading {what}", self._kube.core.read_namespaced_secret,
                                  name, namespace)
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
        await self._call(f"annotating pod {namespace}/{name}",
                         self._kube.core.patch_namespaced_pod, name, namespace, patch,
                         _content_type=MERGE_PATCH)

    async def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod gracefully (already gone counts as done)."""
        try:
            await self._call(f"deleting pod {namespace}/{name}",
                             self._kube.core.delete_namespaced_pod, name, namespace,
                             propagation_policy="Background")
        except KubeError as err:
            if err.status != 404:
                raise

    async def patch_policy_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge ``status`` into the policy's status subresource."""
        await self._call(f"updating status of {PLURAL}/{name}",
                         self._kube.custom.patch_namespaced_custom_object_status, labels.GROUP,
                         labels.VERSION, namespace, PLURAL, name, {"status": status},
                         _content_type=MERGE_PATCH)

    async def post_event(self, regarding: dict[str, Any], *, reason: str, message: str,
                         warning: bool = False, now: datetime) -> None:
        """Record a core/v1 Event about ``regarding`` (best effort: never raises)."""
        await kube_client.post_event(self._kube, regarding, reason, message,
                                     component=COMPONENT, warning=warning, now=now)
