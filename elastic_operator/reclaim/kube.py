"""The Kubernetes calls the reclaim controller makes, over kubernetes_asyncio (never blocking).

Errors come back as :class:`KubeError` whose message names the object and the HTTP status only:
the API server's error body is not copied, so nothing read from a Secret can leak through it.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from elastic_operator import labels
from elastic_operator.api.common import now_rfc3339
from elastic_operator.api.kernelreclaim import PLURAL

MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "elastic-operator-reclaim"


class KubeError(RuntimeError):
    """A Kubernetes call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, what: str, status: int) -> None:
        super().__init__(f"{what}: HTTP {status}" if status else f"{what}: no answer")
        self.status = status


@asynccontextmanager
async def api_client() -> AsyncIterator[client.ApiClient]:
    """A client for the cluster the operator runs in (in-cluster config) or, outside one, for
    the kubeconfig's current context (``KUBECONFIG`` or ``~/.kube/config``)."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        await config.load_kube_config(client_configuration=configuration)
    api = client.ApiClient(configuration)
    try:
        yield api
    finally:
        await api.close()


class ReclaimKube:
    """The few calls a check needs, as plain dicts in and out."""

    def __init__(self, api: client.ApiClient) -> None:
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        """The decoded value of ``key`` in Secret ``namespace/name``.

        Raises :class:`KubeError` (404 also for a missing key); the value is never in a message.
        """
        what = f"Secret {namespace}/{name}"
        try:
            secret = await self._core.read_namespaced_secret(name, namespace)
        except ApiException as err:
            raise KubeError(f"reading {what}", err.status or 0) from None
        data = secret.data or {}
        if key not in data:
            raise KubeError(f"{what} has no key {key!r}", 404)
        try:
            return base64.b64decode(data[key]).decode().strip()
        except ValueError:
            raise KubeError(f"{what} key {key!r} is not base64 UTF-8 text", 422) from None

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Pods of ``namespace`` matching the label selector query."""
        try:
            resp = await self._core.list_namespaced_pod(
                namespace, label_selector=selector, _preload_content=False
            )
            body = json.loads(await resp.read())
        except ApiException as err:
            raise KubeError(f"listing pods in {namespace}", err.status or 0) from None
        return list(body.get("items") or [])

    async def set_reclaim_at(self, namespace: str, name: str, when: datetime | None) -> None:
        """Set (or with None, remove) the reclaim-at mark on a pod."""
        value = now_rfc3339(when) if when is not None else None
        patch = {"metadata": {"annotations": {labels.RECLAIM_AT: value}}}
        try:
            await self._core.patch_namespaced_pod(name, namespace, patch, _content_type=MERGE_PATCH)
        except ApiException as err:
            raise KubeError(f"annotating pod {namespace}/{name}", err.status or 0) from None

    async def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod (already gone counts as done)."""
        try:
            await self._core.delete_namespaced_pod(name, namespace)
        except ApiException as err:
            if err.status != 404:
                raise KubeError(f"deleting pod {namespace}/{name}", err.status or 0) from None

    async def patch_policy_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge ``status`` into the policy's status subresource."""
        try:
            await self._custom.patch_namespaced_custom_object_status(
                labels.GROUP,
                labels.VERSION,
                namespace,
                PLURAL,
                name,
                {"status": status},
                _content_type=MERGE_PATCH,
            )
        except ApiException as err:
            raise KubeError(f"updating status of {PLURAL}/{name}", err.status or 0) from None

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
        try:
            await self._core.create_namespaced_event(namespace, event)
        except ApiException as err:
            raise KubeError(f"posting event {reason}", err.status or 0) from None
