"""Scheduler + kubelet + nodes against the emulated API server, over HTTP."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from kube_emulator.client import resource_path
from tests.kube_emulator.node.conftest import MiniCluster

pytestmark = pytest.mark.slow
GPU = "nvidia.com/gpu"


def pod_manifest(name: str, code: str, gpus: int = 0, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "ignored",
                                 "command": ["python", "-c", code]}
    if gpus:
        container["resources"] = {"limits": {GPU: gpus}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


def phase(pod: dict[str, Any] | None) -> str | None:
    return None if pod is None else (pod.get("status") or {}).get("phase")


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


async def create(mini: MiniCluster, manifest: dict[str, Any]) -> str:
    await mini.client.create(resource_path("pods", "default"), manifest)
    return resource_path("pods", "default", manifest["metadata"]["name"])


async def test_pod_runs_to_succeeded_with_env_and_logs(mini: MiniCluster) -> None:
    code = "import os; print('hello from', os.environ['POD'])"
    manifest = pod_manifest("ok", code, gpus=1)
    manifest["spec"]["containers"][0]["env"] = [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    path = await create(mini, manifest)
    pod = await mini.wait_for(path, lambda p: phase(p) == "Succeeded")
    assert pod is not None
    assert pod["spec"]["nodeName"] == "local-node-0"
    assert pod["status"]["podIP"] == "127.0.0.1"
    assert terminated(pod)["exitCode"] == 0 and terminated(pod)["reason"] == "Completed"
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["PodScheduled"] == "True" and conditions["Ready"] == "False"
    log = await mini.client.request("GET", path + "/log")
    assert log == "hello from ok\n"
    events = (await mini.client.get(resource_path("events", "default")))["items"]
    reasons = {e["reason"] for e in events if e["involvedObject"]["name"] == "ok"}
    assert {"Scheduled", "Started"} <= reasons


async def test_failing_pod_reports_exit_code_and_message(mini: MiniCluster) -> None:
    code = ("import os, sys; open(os.environ['TERMINATION_LOG'], 'w')"
            ".write('ProcessCrashed: rank 0'); sys.exit(3)")
    path = await create(mini, pod_manifest("bad", code))
    pod = await mini.wait_for(path, lambda p: phase(p) == "Failed")
    assert pod is not None
    state = terminated(pod)
    assert (state["exitCode"], state["reason"], state["message"]) == (
        3, "Error", "ProcessCrashed: rank 0")
    missing = pod_manifest("nope", "")
    missing["spec"]["containers"][0]["command"] = ["/no/such/program"]
    pod = await mini.wait_for(await create(mini, missing), lambda p: phase(p) == "Failed")
    assert pod is not None
    assert terminated(pod)["reason"] == "StartError"
    assert "/no/such/program" in terminated(pod)["message"]


async def test_unschedulable_until_gpus_are_added(mini: MiniCluster) -> None:
    hold = await create(mini, pod_manifest("hold", "import time; time.sleep(600)", gpus=1))
    await mini.wait_for(hold, lambda p: phase(p) == "Running")
    waiting = await create(mini, pod_manifest("waiting", "print('ran')", gpus=1))

    def unschedulable(p: dict[str, Any] | None) -> bool:
        conds = {c["type"]: c for c in ((p or {}).get("status") or {}).get("conditions") or ()}
        cond = conds.get("PodScheduled") or {}
        return cond.get("status") == "False" and cond.get("reason") == "Unschedulable"

    pod = await mini.wait_for(waiting, unschedulable)
    assert pod is not None and phase(pod) == "Pending" and not pod["spec"].get("nodeName")
    message = next(c["message"] for c in pod["status"]["conditions"]
                   if c["type"] == "PodScheduled")
    assert message == "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    events = (await mini.client.get(resource_path("events", "default")))["items"]
    assert any(e["reason"] == "FailedScheduling" and e["involvedObject"]["name"] == "waiting"
               for e in events)
    await mini.nodes.add_gpus(1)
    pod = await mini.wait_for(waiting, lambda p: phase(p) == "Succeeded")
    assert pod is not None and pod["spec"]["nodeName"] == "local-node-0"


async def test_deletion_sends_sigterm_then_pod_is_gone(mini: MiniCluster) -> None:
    code = ("import signal, sys, time\n"
            "def bye(*_):\n    print('got SIGTERM', flush=True); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\nprint('up', flush=True)\ntime.sleep(600)\n")
    path = await create(mini, pod_manifest("term", code, gpus=1))
    await mini.wait_for(path, lambda p: phase(p) == "Running")
    log_file = mini.kubelet.log_path("default", "term")
    await mini.wait_for(path, lambda p: "up" in log_file.read_text())
    await mini.client.delete(path, gracePeriodSeconds=30)
    await mini.wait_for(path, lambda p: p is None)
    assert log_file.read_text().split("\n")[:2] == ["up", "got SIGTERM"]


async def test_grace_period_ends_with_sigkill_and_chaos_kill(mini: MiniCluster) -> None:
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(600)")
    path = await create(mini, pod_manifest("stubborn", stubborn))
    await mini.wait_for(path, lambda p: phase(p) == "Running")
    log_file = mini.kubelet.log_path("default", "stubborn")
    await mini.wait_for(path, lambda p: "up" in log_file.read_text())
    await mini.client.delete(path, gracePeriodSeconds=1)
    await mini.wait_for(path, lambda p: p is None)
    victim = await create(mini, pod_manifest("victim", "import time; time.sleep(600)"))
    await mini.wait_for(victim, lambda p: phase(p) == "Running")
    assert mini.kubelet.kill_pod("victim") >= 1
    pod = await mini.wait_for(victim, lambda p: phase(p) == "Failed")
    assert pod is not None
    assert (terminated(pod)["exitCode"], terminated(pod)["signal"]) == (137, 9)


async def test_restart_policy_on_failure_restarts_in_place(mini: MiniCluster) -> None:
    # Fails on the first run, succeeds on the second (a marker file remembers the attempt).
    marker = mini.kubelet.state_dir / "attempted"
    code = (f"import pathlib, sys; m = pathlib.Path({str(marker)!r})\n"
            "if m.exists(): sys.exit(0)\nm.write_text('1'); sys.exit(1)\n")
    path = await create(mini, pod_manifest("flaky", code, restartPolicy="OnFailure"))
    pod = await mini.wait_for(path, lambda p: phase(p) == "Succeeded")
    assert pod is not None
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert sys.executable  # python resolved to this interpreter, or nothing would have run


async def test_removing_gpus_evicts_the_pods_that_no_longer_fit(mini: MiniCluster) -> None:
    first = await create(mini, pod_manifest("first", "import time; time.sleep(600)", gpus=1))
    await mini.wait_for(first, lambda p: phase(p) == "Running")
    free = await create(mini, pod_manifest("cpu-only", "import time; time.sleep(600)"))
    await mini.wait_for(free, lambda p: phase(p) == "Running")
    assert await mini.nodes.remove_gpus(1) == ["first"]
    assert await mini.nodes.gpus("local-node-0") == 0
    await mini.wait_for(first, lambda p: p is None)
    pod = await mini.client.get(free)
    assert phase(pod) == "Running" and not pod["metadata"].get("deletionTimestamp")
