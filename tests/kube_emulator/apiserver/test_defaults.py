"""Write-time conversions and defaults of built-in kinds, over HTTP."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.kube_emulator.apiserver.conftest import MERGE, Client


async def test_secret_string_data_becomes_data(api: Client) -> None:
    path = "/api/v1/namespaces/default/secrets"
    status, body = await api.call("POST", path, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "data": {"kept": base64.b64encode(b"old").decode(), "both": "eA=="},
        "stringData": {"user": "admin", "both": "string wins"}})
    assert status == 201, body
    assert "stringData" not in body and body["type"] == "Opaque"
    decoded = {k: base64.b64decode(v).decode() for k, v in body["data"].items()}
    assert decoded == {"kept": "old", "user": "admin", "both": "string wins"}
    status, body = await api.call("PATCH", f"{path}/creds",
                                        {"stringData": {"user": "root"}}, MERGE)
    assert status == 200 and "stringData" not in body
    assert base64.b64decode(body["data"]["user"]) == b"root"


@pytest.mark.parametrize("kind", ["Secret", "ConfigMap"])
async def test_immutable_data_cannot_change(api: Client, kind: str) -> None:
    path = f"/api/v1/namespaces/default/{kind.lower()}s"
    status, _ = await api.call("POST", path, {
        "apiVersion": "v1", "kind": kind, "metadata": {"name": "frozen"}, "immutable": True,
        "data": {"a": "YQ=="}})
    assert status == 201
    status, body = await api.call("PATCH", f"{path}/frozen", {"data": {"a": "Yg=="}}, MERGE)
    assert status == 422 and body["details"]["causes"][0]["field"] == "data"
    status, body = await api.call("PATCH", f"{path}/frozen", {"immutable": False}, MERGE)
    assert status == 422 and body["details"]["causes"][0]["field"] == "immutable"
    status, _ = await api.call("PATCH", f"{path}/frozen",
                                     {"metadata": {"labels": {"x": "y"}}}, MERGE)
    assert status == 200  # metadata stays writable


def _pod(name: str, **resources: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c", "image": "busybox", "command": ["true"],
                                 "ports": [{"containerPort": 80}]}
    if resources:
        container["resources"] = resources
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [container]}}


async def test_pod_defaults_and_qos(api: Client) -> None:
    path = "/api/v1/namespaces/default/pods"
    status, pod = await api.call("POST", path, _pod("plain"))
    assert status == 201
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert (spec["dnsPolicy"], spec["schedulerName"], spec["serviceAccountName"],
            spec["enableServiceLinks"], spec["priority"]) == (
        "ClusterFirst", "default-scheduler", "default", True, 0)
    assert (container["terminationMessagePath"], container["terminationMessagePolicy"],
            container["imagePullPolicy"], container["ports"][0]["protocol"]) == (
        "/dev/termination-log", "File", "Always", "TCP")
    assert pod["status"]["qosClass"] == "BestEffort"
    limits = {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}
    _, guaranteed = await api.call("POST", path, _pod("g", limits=limits))
    assert guaranteed["spec"]["containers"][0]["resources"]["requests"] == limits
    assert guaranteed["status"]["qosClass"] == "Guaranteed"
    _, burstable = await api.call("POST", path, _pod("b", requests={"cpu": "1"}))
    assert burstable["status"]["qosClass"] == "Burstable"


async def test_namespace_name_label_and_service_defaults(api: Client) -> None:
    status, ns = await api.call("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "labelled"}})
    assert status == 201 and ns["metadata"]["labels"] == {
        "kubernetes.io/metadata.name": "labelled"}
    _, ns = await api.call("PATCH", "/api/v1/namespaces/labelled",
                                 {"metadata": {"labels": None}}, MERGE)
    assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "labelled"}
    _, svc = await api.call("POST", "/api/v1/namespaces/default/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"ports": [{"port": 80}]}})
    assert (svc["spec"]["ipFamilies"], svc["spec"]["ipFamilyPolicy"],
            svc["spec"]["internalTrafficPolicy"]) == (["IPv4"], "SingleStack", "Cluster")
