"""Fixtures for the emulated API server tests: a started server and an HTTP client for it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kube_emulator.apiserver.server import ApiServer

MERGE = "application/merge-patch+json"
JSONPATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"

# A small CRD with the features the tests need: status and scale subresources, defaults,
# ranges, an enum, a CEL rule, and a preserve-unknown-fields template.
WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.test"},
    "spec": {
        "group": "example.test",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                  "shortNames": ["wd"]},
        "versions": [{
            "name": "v1",
            "served": True,
            "storage": True,
            "subresources": {
                "status": {},
                "scale": {"specReplicasPath": ".spec.replicas",
                          "statusReplicasPath": ".status.replicas",
                          "labelSelectorPath": ".status.selector"},
            },
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "required": ["spec"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": {
                        "type": "object",
                        "required": ["maxReplicas"],
                        "x-kubernetes-validations": [{
                            "rule": "self.minReplicas <= self.maxReplicas",
                            "message": "spec.minReplicas must be <= spec.maxReplicas",
                            "fieldPath": ".minReplicas",
                        }],
                        "properties": {
                            "minReplicas": {"type": "integer", "minimum": 1, "default": 1},
                            "maxReplicas": {"type": "integer", "minimum": 1},
                            "replicas": {"type": "integer", "minimum": 0, "nullable": True},
                            "mode": {"type": "string", "enum": ["fast", "slow"],
                                     "default": "fast"},
                            "label": {"type": "string", "pattern": "^[a-z]+$",
                                      "maxLength": 8},
                            "size": {"x-kubernetes-int-or-string": True},
                            "tags": {"type": "array", "maxItems": 2,
                                     "items": {"type": "string", "minLength": 1}},
                            "template": {"type": "object",
                                         "x-kubernetes-preserve-unknown-fields": True},
                            "env": {"type": "object",
                                    "additionalProperties": {"type": "string"}},
                        },
                    },
                    "status": {"type": "object",
                               "x-kubernetes-preserve-unknown-fields": True},
                },
            }},
        }],
    },
}

WIDGETS = "/apis/example.test/v1/namespaces/default/widgets"
PODS = "/api/v1/namespaces/default/pods"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def widget(name: str, **spec: Any) -> dict[str, Any]:
    """A Widget body (maxReplicas 3 unless given)."""
    return {"apiVersion": "example.test/v1", "kind": "Widget",
            "metadata": {"name": name}, "spec": {"maxReplicas": 3, **spec}}


def pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A minimal Pod body."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "main", "image": "x"}], **spec}}


class Client:
    """A thin JSON client: every call returns (HTTP status, decoded body)."""

    def __init__(self, server: ApiServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session

    async def call(self, method: str, path: str, body: Any = None,
                   content_type: str = "application/json") -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        async with self.session.request(method, self.server.url + path, data=data,
                                        headers={"Content-Type": content_type}) as rsp:
            text = await rsp.text()
            return rsp.status, (json.loads(text) if text and rsp.content_type ==
                                "application/json" else text)

    async def get(self, path: str) -> tuple[int, Any]:
        return await self.call("GET", path)

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        return await self.call("POST", path, body)

    async def put(self, path: str, body: Any) -> tuple[int, Any]:
        return await self.call("PUT", path, body)

    async def patch(self, path: str, body: Any, content_type: str = MERGE) -> tuple[int, Any]:
        return await self.call("PATCH", path, body, content_type)

    async def delete(self, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.call("DELETE", path, body)

    async def ok(self, method: str, path: str, body: Any = None,
                 content_type: str = "application/json") -> Any:
        """The body of a call that must succeed (2xx)."""
        status, result = await self.call(method, path, body, content_type)
        assert 200 <= status < 300, (status, result)
        return result


@pytest.fixture
async def api() -> AsyncIterator[Client]:
    """A started server (graceful pod deletion on) and a client for it."""
    server = ApiServer()
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Client(server, session)
    finally:
        await server.stop()


@pytest.fixture
async def crd_api(api: Client) -> Client:
    """The ``api`` client with the Widget CRD installed."""
    await api.ok("POST", CRDS, WIDGET_CRD)
    return api


async def eventually(check: Any, timeout: float = 20.0) -> Any:
    """Poll an async check until it returns a truthy value; generous for loaded CI machines."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check.__name__}")
        await asyncio.sleep(0.02)
