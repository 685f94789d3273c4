"""``kubectl get`` prints the server's Table: printer columns, built-in columns, watches."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Callable

from tests.harness import elastic_job, jobs_path, pods_path
from tests.kube_emulator.kubectl.conftest import Kubectl

NODE = {"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "gpu-0", "labels": {"node-role.kubernetes.io/worker": ""}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                   "nodeInfo": {"kubeletVersion": "v1.31.0"}}}


def _pod(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "x", "command": ["sleep", "9"]}]}}


def _lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def test_custom_resource_printer_columns(kubectl: Kubectl) -> None:
    job = elastic_job("cols", min_replicas=1, max_replicas=3, replicas=2)
    kubectl.api.create(jobs_path("default"), job)
    kubectl.api.request("PATCH", jobs_path("default", "cols", "status"),
                        {"status": {"phase": "Running", "readyReplicas": 2}},
                        "application/merge-patch+json")
    header, row = _lines(kubectl("get", "ej", "cols").stdout)
    assert header == ["NAME", "MIN", "MAX", "DESIRED", "READY", "PHASE", "AGE"]
    assert row[:6] == ["cols", "1", "3", "2", "2", "Running"]
    assert row[6].endswith("s")  # an age such as 0s, made by the server from the date column
    everywhere = _lines(kubectl("get", "ej", "-A").stdout)
    assert everywhere[0][:2] == ["NAMESPACE", "NAME"]


def test_builtin_columns(kubectl: Kubectl) -> None:
    kubectl.api.create(pods_path("default"), _pod("web"))
    kubectl.api.create("/api/v1/nodes", NODE)
    kubectl.api.create("/api/v1/namespaces/default/events", {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.1"},
        "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
        "reason": "Scheduled", "message": "assigned default/web to gpu-0", "type": "Normal",
        "source": {"component": "default-scheduler"}, "count": 1})
    pods = _lines(kubectl("get", "pods").stdout)
    assert pods[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert pods[1][:4] == ["web", "0/1", "Pending", "0"]
    wide = _lines(kubectl("get", "pods", "-o", "wide").stdout)
    assert wide[0][5:7] == ["IP", "NODE"]
    nodes = _lines(kubectl("get", "nodes").stdout)
    assert nodes[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert nodes[1][:3] == ["gpu-0", "Ready", "worker"] and nodes[1][4] == "v1.31.0"
    events = kubectl("get", "events").stdout.splitlines()
    assert events[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert "Normal   Scheduled   pod/web   assigned default/web to gpu-0" in events[1]
    assert _lines(kubectl("get", "ns").stdout)[0] == ["NAME", "STATUS", "AGE"]
    kubectl.api.create("/api/v1/namespaces/default/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}}})
    services = _lines(kubectl("get", "svc", "web").stdout)
    assert services[0] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert services[1][1] == "ClusterIP" and services[1][3:5] == ["<none>", "80/TCP"]


def _read_until(process: subprocess.Popen[str], text: str, timeout: float = 30,
                nudge: Callable[[], object] | None = None) -> str:
    """What a long-running kubectl printed until ``text`` appeared (unbuffered reads, so a
    line is seen as soon as kubectl writes it); ``nudge`` runs each idle second."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    out = ""
    deadline = time.monotonic() + timeout
    while text not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready and nudge is not None:
            nudge()
        if ready:
            chunk = os.read(fd, 65536).decode()
            if not chunk:
                break
            out += chunk
    assert text in out, out
    return out


def test_get_watch_prints_changes(kubectl: Kubectl) -> None:
    kubectl.api.create(pods_path("default"), _pod("watched"))
    watch = kubectl.popen("get", "pod", "watched", "-w")
    try:
        first = _read_until(watch, "watched")
        assert first.splitlines()[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        kubectl.api.request("PATCH", pods_path("default", "watched", "status"), {"status": {
            "phase": "Running", "containerStatuses": [{
                "name": "c", "ready": True, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}},
            "application/merge-patch+json")
        # kubectl watches an object from resourceVersion 0 and skips the first (synthetic)
        # ADDED event, so a change made before its watch began can go unprinted, as on a
        # real cluster: touch a label until the new state shows.
        touches = iter(range(1000))
        later = _read_until(watch, "Running", nudge=lambda: kubectl.api.patch(
            pods_path("default", "watched"), {"metadata": {"labels": {"n": str(next(touches))}}}))
        assert "1/1" in later and "NAME" not in later  # one header only
    finally:
        watch.kill()
        watch.communicate()
