"""Server lifecycle, discovery shapes, kubeconfig, audit trail, pod binding and logs."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import yaml
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from kube_emulator.apiserver.server import ApiServer, ApiServerThread, write_kubeconfig
from tests.kube_emulator.apiserver.conftest import CRDS, MERGE, PODS, WIDGET_CRD, Client, pod


async def test_version_and_core_discovery(api: Client) -> None:
    version = await api.ok("GET", "/version")
    assert version["major"] == "1" and version["gitVersion"].startswith("v1.")
    core = await api.ok("GET", "/api")
    assert core["kind"] == "APIVersions" and core["versions"] == ["v1"]
    assert core["serverAddressByClientCIDRs"][0]["clientCIDR"] == "0.0.0.0/0"
    v1 = await api.ok("GET", "/api/v1")
    assert (v1["kind"], v1["groupVersion"]) == ("APIResourceList", "v1")
    by_name = {r["name"]: r for r in v1["resources"]}
    assert {"pods", "pods/status", "pods/binding", "pods/log", "services", "events", "nodes",
            "nodes/status", "namespaces", "secrets", "configmaps"} <= set(by_name)
    assert by_name["pods"] == {
        "name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update",
                  "watch"], "shortNames": ["po"], "categories": ["all"]}
    assert by_name["nodes"]["namespaced"] is False


async def test_group_discovery(api: Client) -> None:
    groups = await api.ok("GET", "/apis")
    assert groups["kind"] == "APIGroupList"
    names = {g["name"] for g in groups["groups"]}
    assert {"apiextensions.k8s.io", "coordination.k8s.io", "events.k8s.io"} <= names
    group = await api.ok("GET", "/apis/coordination.k8s.io")
    assert group["kind"] == "APIGroup"
    assert group["preferredVersion"]["groupVersion"] == "coordination.k8s.io/v1"
    leases = await api.ok("GET", "/apis/coordination.k8s.io/v1")
    assert [r["name"] for r in leases["resources"]] == ["leases"]
    status, body = await api.get("/apis/unknown.test")
    assert (status, body["reason"]) == (404, "NotFound")


async def test_events_in_both_groups(api: Client) -> None:
    core = {"metadata": {"name": "e1"}, "involvedObject": {"kind": "Pod", "name": "p"},
            "reason": "Started", "message": "m", "type": "Normal"}
    await api.ok("POST", "/api/v1/namespaces/default/events", core)
    new = {"metadata": {"name": "e2"}, "regarding": {"kind": "Pod", "name": "p"},
           "reason": "Started", "note": "m", "type": "Normal", "action": "Start",
           "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "x",
           "reportingInstance": "y"}
    created = await api.ok("POST", "/apis/events.k8s.io/v1/namespaces/default/events", new)
    assert created["apiVersion"] == "events.k8s.io/v1"
    listing = await api.ok("GET", "/api/v1/namespaces/default/events"
                                  "?fieldSelector=involvedObject.name%3Dp")
    assert [e["metadata"]["name"] for e in listing["items"]] == ["e1"]


async def test_binding_assigns_node_once(api: Client) -> None:
    await api.ok("POST", PODS, pod("a"))
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "a"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}}
    status, _ = await api.post(f"{PODS}/a/binding", binding)
    assert status == 201
    bound = await api.ok("GET", f"{PODS}/a")
    assert bound["spec"]["nodeName"] == "n1"
    assert {"type": "PodScheduled", "status": "True"}.items() <= bound["status"][
        "conditions"][0].items()
    assert bound["status"]["phase"] == "Pending"
    assert int(bound["metadata"]["resourceVersion"]) == int(
        api.server.store.resource_version)  # one write for node and condition
    status, body = await api.post(f"{PODS}/a/binding", binding)
    assert (status, body["reason"]) == (409, "Conflict")


async def test_pod_logs_come_from_the_log_source() -> None:
    server = ApiServer(log_source=lambda ns, name, query: f"{ns}/{name} tail={query['tailLines']}")
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Client(server, session)
            await api.ok("POST", PODS, pod("a"))
            status, text = await api.get(f"{PODS}/a/log?tailLines=5")
            assert (status, text) == (200, "default/a tail=5")
            status, _ = await api.get(f"{PODS}/ghost/log")
            assert status == 404
    finally:
        await server.stop()


async def test_audit_records_rbac_verbs_and_users(api: Client, tmp_path: Path) -> None:
    kubeconfig = api.server.write_kubeconfig(tmp_path / "kc", user="operator")
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": MERGE}
    await api.ok("POST", PODS, pod("a"))
    async with aiohttp.ClientSession(headers=headers) as operator:
        url = api.server.url
        async with operator.get(f"{url}{PODS}?watch=true&timeoutSeconds=1") as rsp:
            await rsp.read()
        async with operator.patch(f"{url}{PODS}/a/status",
                                  data=json.dumps({"status": {"phase": "Running"}})) as rsp:
            assert rsp.status == 200
        async with operator.get(f"{url}{PODS}/a") as rsp:
            assert rsp.status == 200
        async with operator.get(f"{url}/api/v1") as rsp:  # discovery is not audited
            assert rsp.status == 200
    await api.ok("DELETE", f"{PODS}?labelSelector=x%3Dy")
    assert api.server.audit_rules(user="operator") == {
        ("", "pods", "watch"), ("", "pods/status", "patch"), ("", "pods", "get")}
    everyone = api.server.audit_rules()
    assert ("", "pods", "create") in everyone and ("", "pods", "deletecollection") in everyone
    record = next(r for r in api.server.audit if r.verb == "patch")
    assert (record.namespace, record.name, record.subresource, record.user) == (
        "default", "a", "status", "operator")
    intruder = {"Authorization": "Bearer wrong"}
    async with aiohttp.ClientSession(headers=intruder) as session, session.get(
            f"{api.server.url}{PODS}") as rsp:
        assert rsp.status == 401


def test_thread_runner_and_kubeconfig_for_sync_code(tmp_path: Path) -> None:
    with ApiServerThread(pods_graceful=False) as runner:
        assert runner.url.startswith("http://127.0.0.1:")
        path = write_kubeconfig(runner, tmp_path / "kubeconfig", "ctx", user="cli")
        config = yaml.safe_load(path.read_text())
        assert config["current-context"] == "ctx"
        assert config["clusters"][0]["cluster"]["server"] == runner.url
        token = config["users"][0]["user"]["token"]
        request = urllib.request.Request(f"{runner.url}{PODS}",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request) as rsp:
            assert json.loads(rsp.read())["kind"] == "PodList"
        assert runner.server.audit[-1].user == "cli"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{runner.url}/version", timeout=2)


async def test_kubernetes_asyncio_client_via_kubeconfig(crd_api: Client, tmp_path: Path) -> None:
    """The official async client loads our kubeconfig and speaks to the server."""
    path = crd_api.server.write_kubeconfig(tmp_path / "kc", user="client")
    configuration = k8s_client.Configuration()
    await k8s_config.load_kube_config(config_file=str(path),
                                      client_configuration=configuration)
    async with k8s_client.ApiClient(configuration) as api_client:
        core = k8s_client.CoreV1Api(api_client)
        created = await core.create_namespaced_pod("default", pod("k"))
        assert created.metadata.name == "k"
        pods = await core.list_namespaced_pod("default", label_selector="")
        assert [p.metadata.name for p in pods.items] == ["k"]
        crds = k8s_client.ApiextensionsV1Api(api_client)
        listing = await crds.list_custom_resource_definition()
        assert [c.metadata.name for c in listing.items] == [WIDGET_CRD["metadata"]["name"]]
        custom = k8s_client.CustomObjectsApi(api_client)
        await custom.create_namespaced_custom_object(
            "example.test", "v1", "default", "widgets",
            {"apiVersion": "example.test/v1", "kind": "Widget", "metadata": {"name": "w"},
             "spec": {"maxReplicas": 2}})
        scale = await custom.patch_namespaced_custom_object_scale(
            "example.test", "v1", "default", "widgets", "w", {"spec": {"replicas": 2}},
            _content_type=MERGE)
        assert scale["spec"]["replicas"] == 2
    assert ("example.test", "widgets/scale", "patch") in crd_api.server.audit_rules("client")
    assert (await crd_api.ok("GET", CRDS))["items"]


async def test_python_side_read_helpers(api: Client) -> None:
    await api.ok("POST", PODS, pod("a", {"job": "j1"}))
    await api.ok("POST", PODS, pod("b", {"job": "j2"}))
    server = api.server
    assert [p["metadata"]["name"] for p in server.objects("v1", "pods", "default",
                                                          "job=j1")] == ["a"]
    copy = server.object("v1", "pods", "default", "a")
    assert copy is not None and copy["kind"] == "Pod"
    copy["spec"]["nodeName"] = "mutated"  # a copy: the stored object is unaffected
    assert "nodeName" not in (await api.ok("GET", f"{PODS}/a"))["spec"]
    assert server.object("v1", "pods", "default", "ghost") is None
    assert server.objects("apiextensions.k8s.io/v1", "customresourcedefinitions") == []
