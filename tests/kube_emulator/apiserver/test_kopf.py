"""kopf 1.45 runs against the emulator over HTTP through a written kubeconfig.

The operator below is the smallest one that exercises what ours relies on: discovery of a
CRD resource, list+watch, an on.create handler that creates a pod over HTTP and patches
``/status``, kopf's finalizer and an on.delete handler, and event posting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
import yaml
from kopf._core.intents.registries import SmartOperatorRegistry
from kubernetes_asyncio.config import kube_config

from tests.kube_emulator.apiserver.conftest import PODS, WIDGETS, Client, widget


async def _eventually(check: Any, timeout: float = 20.0) -> Any:
    """Poll an async check until it returns a truthy value (generous deadline for CI load)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


def _operator_registry(kubeconfig: Path) -> SmartOperatorRegistry:
    registry = SmartOperatorRegistry()  # with the kubeconfig logins
    config = yaml.safe_load(kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    token = config["users"][0]["user"]["token"]

    @kopf.on.create("example.test", "v1", "widgets", id="created", registry=registry)
    async def created(name: str, namespace: str, uid: str, body: kopf.Body,
                      **_: Any) -> dict[str, Any]:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{name}-worker", "labels": {"widget": name},
                            "ownerReferences": [{"apiVersion": "example.test/v1",
                                                 "kind": "Widget", "name": name, "uid": uid,
                                                 "controller": True,
                                                 "blockOwnerDeletion": True}]},
               "spec": {"containers": [{"name": "main", "image": "x"}]}}
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            url = f"{server}/api/v1/namespaces/{namespace}/pods"
            async with session.post(url, json=pod) as rsp:
                assert rsp.status == 201, await rsp.text()
        kopf.info(body, reason="WorkerCreated", message=f"created {name}-worker")
        return {"pods": 1}  # kopf stores handler results under status.created

    @kopf.on.delete("example.test", "v1", "widgets", id="deleted", registry=registry)
    async def deleted(**_: Any) -> None:
        return None

    return registry


@pytest.mark.parametrize("scope", ["clusterwide", "namespaced"])
async def test_kopf_operator_over_kubeconfig(crd_api: Client, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             scope: str) -> None:
    api = crd_api
    kubeconfig = api.server.write_kubeconfig(tmp_path / "kubeconfig", user="operator")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # kubernetes_asyncio (kopf's login here) reads $KUBECONFIG once, at import time; a fresh
    # `kopf run` process sees the variable, an in-process operator needs this nudge.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    registry = _operator_registry(kubeconfig)
    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 30
    settings.posting.level = logging.INFO
    stop = asyncio.Event()
    ready = asyncio.Event()
    options: dict[str, Any] = (
        {"clusterwide": True} if scope == "clusterwide" else {"namespaces": ["default"]})
    task = asyncio.create_task(kopf.operator(
        registry=registry, settings=settings, standalone=True, stop_flag=stop,
        ready_flag=ready, **options))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        await api.ok("POST", WIDGETS, widget("w1"))

        async def status_written() -> Any:
            _, obj = await api.get(f"{WIDGETS}/w1")
            return obj.get("status", {}).get("created") == {"pods": 1} and obj

        obj = await _eventually(status_written)
        assert "kopf.zalando.org/KopfFinalizerMarker" in obj["metadata"]["finalizers"]
        status, worker = await api.get(f"{PODS}/w1-worker")
        assert status == 200 and worker["metadata"]["labels"] == {"widget": "w1"}

        async def event_posted() -> Any:
            _, events = await api.get("/api/v1/namespaces/default/events")
            return [e for e in events["items"] if e["involvedObject"]["name"] == "w1"
                    and e["reason"] == "WorkerCreated"]

        assert await _eventually(event_posted)

        # Deletion: kopf's finalizer holds the object until its on.delete handler ran,
        # then the garbage collector removes the owned pod.
        await api.ok("DELETE", f"{WIDGETS}/w1")

        async def gone() -> bool:
            widget_status, _ = await api.get(f"{WIDGETS}/w1")
            pod_status, _ = await api.get(f"{PODS}/w1-worker")
            return widget_status == 404 and pod_status == 404

        await _eventually(gone)
        calls = api.server.audit_rules(user="operator")
        assert ("example.test", "widgets", "watch") in calls
        assert ("example.test", "widgets", "patch") in calls
        assert ("", "pods", "create") in calls
        assert ("", "events", "create") in calls
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


OPERATOR_SOURCE = '''
import kopf

@kopf.on.create("example.test", "v1", "widgets", id="seen")
def seen(name, **_):
    return {"by": "kopf-run", "name": name}
'''


@pytest.mark.slow
@pytest.mark.parametrize("scope", [["--all-namespaces"], ["--namespace", "default"]])
async def test_kopf_run_cli_with_kubeconfig(crd_api: Client, tmp_path: Path,
                                            scope: list[str]) -> None:
    """`kopf run` in its own process, configured only by $KUBECONFIG (http, token)."""
    api = crd_api
    kubeconfig = api.server.write_kubeconfig(tmp_path / "kubeconfig", user="kopf-cli")
    (tmp_path / "op.py").write_text(OPERATOR_SOURCE)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kopf", "run", "--standalone", *scope, str(tmp_path / "op.py"),
        env=env, cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        await api.ok("POST", WIDGETS, widget("cli"))

        async def handled() -> Any:
            _, obj = await api.get(f"{WIDGETS}/cli")
            return obj.get("status", {}).get("seen")

        try:
            assert await _eventually(handled, timeout=60) == {"by": "kopf-run", "name": "cli"}
        except AssertionError:
            process.kill()
            _, stderr = await process.communicate()
            raise AssertionError(stderr.decode()[-3000:]) from None
        assert ("example.test", "widgets", "watch") in api.server.audit_rules("kopf-cli")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
