"""The emulator over HTTPS, and refusing requests as an overloaded kube-apiserver does."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from kube_emulator.apiserver.server import ApiServer
from tests.kube_emulator.apiserver.conftest import PODS, Client, pod
from tests.security.etcd_cluster import make_pki


async def test_refused_requests_get_a_status_and_retry_after_and_store_nothing(
    api: Client,
) -> None:
    api.server.refuse(1, 429, retry_after=2)
    api.server.refuse(1, 503)
    async with api.session.post(api.server.url + PODS, json=pod("a")) as rsp:
        assert (rsp.status, rsp.headers["Retry-After"]) == (429, "2")
        body = await rsp.json()
    assert body["reason"] == "TooManyRequests" and body["code"] == 429
    assert body["details"] == {"retryAfterSeconds": 2}
    status, body = await api.post(PODS, pod("a"))
    assert (status, body["reason"]) == (503, "ServiceUnavailable")
    assert api.server.objects("v1", "pods") == [] and api.server.audit == []
    status, _ = await api.post(PODS, pod("a"))  # the refusals are used up
    assert status == 201
    with pytest.raises(ValueError, match="only 429 and 503"):
        api.server.refuse(1, 500)


async def test_serves_https_with_the_given_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    server = ApiServer(ssl_context=context)
    await server.start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=pki.ca)
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/api/v1", ssl=trusted) as rsp:
                assert rsp.status == 200 and (await rsp.json())["kind"] == "APIResourceList"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(server.url + "/api/v1",
                                  ssl=ssl.create_default_context(cafile=pki.other_ca))
    finally:
        await server.stop()
