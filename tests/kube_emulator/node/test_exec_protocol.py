"""``pods/exec`` at the protocol level (what kubectl's WebSocket executor sends), against the
local kubelet: subprotocol negotiation, channels, the exit Status, stdin half-close, and the
requests refused before an upgrade."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from elastic_operator.local.cluster import ClusterConfig, LocalCluster
from kube_emulator.apiserver.remotecommand import exit_status

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[3]
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "box"},
       "spec": {"containers": [{"name": "main", "image": "x", "command": ["sleep", "300"]}]}}


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    config = ClusterConfig(state_dir=tmp_path / "c", nodes=1, workdir=ROOT, operator=False,
                           etcd=False)
    async with LocalCluster(config) as local:
        await local.api.request("POST", "/api/v1/namespaces/default/pods", body=POD)
        for _ in range(400):
            pod = await local.api.request("GET", "/api/v1/namespaces/default/pods/box")
            if (pod.get("status") or {}).get("phase") == "Running":
                break
            await asyncio.sleep(0.05)
        yield local


def _url(cluster: LocalCluster, *command: str, **flags: str) -> str:
    assert cluster.server is not None
    query = "&".join([*(f"command={c}" for c in command),
                      *(f"{k}={v}" for k, v in flags.items())])
    return f"{cluster.server.url}/api/v1/namespaces/default/pods/box/exec?{query}"


async def _run(cluster: LocalCluster, protocol: str, *command: str, feed: bytes | None = None,
               **flags: str) -> tuple[str, dict[int, bytes], Any]:
    frames: dict[int, bytes] = {}
    async with aiohttp.ClientSession() as session, session.ws_connect(
            _url(cluster, *command, **flags), protocols=(protocol,)) as ws:
        if feed is not None:
            await ws.send_bytes(b"\x00" + feed)
            await ws.send_bytes(b"\xff\x00")  # v5: close stdin
        async for message in ws:
            frames[message.data[0]] = frames.get(message.data[0], b"") + message.data[1:]
        return str(ws.protocol), frames, json.loads(frames.get(3, b"null"))


async def test_v4_streams_output_and_a_failure_status(cluster: LocalCluster) -> None:
    protocol, frames, status = await _run(cluster, "v4.channel.k8s.io", "sh", "-c",
                                          "echo%20out;echo%20err%3E%262;exit%205",
                                          stdout="true", stderr="true")
    assert protocol == "v4.channel.k8s.io"
    assert (frames[1], frames[2]) == (b"out\n", b"err\n")
    assert status == exit_status(5)
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "5"}]


async def test_v5_stdin_is_closed_by_the_close_message(cluster: LocalCluster) -> None:
    _, frames, status = await _run(cluster, "v5.channel.k8s.io", "wc", "-c", feed=b"abc",
                                   stdin="true", stdout="true")
    assert frames[1].strip() == b"3" and status == {"metadata": {}, "status": "Success"}


@pytest.mark.parametrize(("flags", "message"), [
    ({"stdout": "true", "tty": "true"}, "tty=true is not supported"),
    ({}, "at least one of stdin, stdout, stderr"),
])
async def test_bad_requests_are_refused_before_the_upgrade(
        cluster: LocalCluster, flags: dict[str, str], message: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(
            _url(cluster, "true", **flags)) as resp:
        assert resp.status == 400 and message in (await resp.json())["message"]


async def test_a_spdy_request_is_told_to_use_websockets(cluster: LocalCluster) -> None:
    headers = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
               "X-Stream-Protocol-Version": "v4.channel.k8s.io"}
    async with aiohttp.ClientSession() as session, session.post(
            _url(cluster, "true", stdout="true"), headers=headers) as resp:
        body = await resp.json()
    assert resp.status == 400 and "WebSocket only" in body["message"]


def test_exit_status_counts_a_signal_as_128_plus_n() -> None:
    assert exit_status(-9)["details"]["causes"] == [{"reason": "ExitCode", "message": "137"}]
    assert exit_status(0) == {"metadata": {}, "status": "Success"}
