"""The operator's REST client: errors, idempotence mapping and re-login after a 401."""

from __future__ import annotations

from collections.abc import AsyncIterator

import kopf
import pytest
from aiohttp import web

from elastic_operator import k8s


@pytest.fixture
async def server() -> AsyncIterator[web.AppRunner]:
    async def handler(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer fresh":
            return web.json_response({"kind": "Status", "reason": "Unauthorized",
                                      "message": "token expired"}, status=401)
        if request.method == "POST":
            return web.json_response({"kind": "Status", "reason": "AlreadyExists",
                                      "message": "pods \"p\" already exists"}, status=409)
        return web.json_response({"items": [{"metadata": {"name": "p"}}],
                                  "query": request.query_string})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner
    await runner.cleanup()


def url_of(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


async def test_relogin_after_401_then_errors_carry_the_reason(server: web.AppRunner) -> None:
    logins = []

    def relogin() -> kopf.ConnectionInfo:
        logins.append(1)
        return kopf.ConnectionInfo(server=url_of(server), token="fresh")

    api = k8s.Api(kopf.ConnectionInfo(server=url_of(server), token="stale"), relogin=relogin)
    try:
        items = await api.list("/api/v1/pods", label_selector="a=b")
        assert items == [{"metadata": {"name": "p"}}]
        assert logins == [1]
        with pytest.raises(k8s.ApiError) as err:
            await api.create("/api/v1/namespaces/n/pods", {})
        assert (err.value.code, err.value.reason) == (409, "AlreadyExists")
        assert "already exists" in str(err.value)
    finally:
        await api.close()


async def test_401_without_relogin_is_raised(server: web.AppRunner) -> None:
    api = k8s.Api(kopf.ConnectionInfo(server=url_of(server), token="stale"))
    try:
        with pytest.raises(k8s.ApiError) as err:
            await api.get("/api/v1/pods")
        assert err.value.code == 401
    finally:
        await api.close()


def test_paths() -> None:
    assert k8s.path("pods", "ns", "p", "status") == "/api/v1/namespaces/ns/pods/p/status"
    assert k8s.path("elasticjobs", "ns", group="elastic.dev", version="v1alpha1") == (
        "/apis/elastic.dev/v1alpha1/namespaces/ns/elasticjobs")
