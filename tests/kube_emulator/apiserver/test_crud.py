"""Create, get, list, update and the metadata the server maintains, over HTTP."""

from __future__ import annotations

from tests.kube_emulator.apiserver.conftest import PODS, Client, pod


async def test_create_fills_metadata_and_get_returns_it(api: Client) -> None:
    created = await api.ok("POST", PODS, pod("a"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1 and meta["namespace"] == "default"
    assert created["status"]["phase"] == "Pending"
    status, fetched = await api.get(f"{PODS}/a")
    assert status == 200 and fetched == created


async def test_generate_name_makes_unique_names(api: Client) -> None:
    body = {"metadata": {"generateName": "w-"}, "spec": {"containers": [{"name": "c"}]}}
    first = await api.ok("POST", PODS, body)
    second = await api.ok("POST", PODS, body)
    assert first["metadata"]["name"].startswith("w-")
    assert len(first["metadata"]["name"]) == 7
    assert first["metadata"]["name"] != second["metadata"]["name"]


async def test_duplicate_create_is_already_exists(api: Client) -> None:
    await api.ok("POST", PODS, pod("a"))
    status, body = await api.post(PODS, pod("a"))
    assert status == 409
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["reason"] == "AlreadyExists" and body["code"] == 409
    assert body["message"] == 'pods "a" already exists'
    assert body["details"] == {"name": "a", "kind": "pods"}


async def test_missing_namespace_is_not_found(api: Client) -> None:
    status, body = await api.post("/api/v1/namespaces/nope/pods", pod("a"))
    assert (status, body["reason"], body["message"]) == (
        404, "NotFound", 'namespaces "nope" not found')


async def test_missing_object_and_unknown_resource_are_not_found(api: Client) -> None:
    status, body = await api.get(f"{PODS}/ghost")
    assert (status, body["reason"], body["message"]) == (404, "NotFound", 'pods "ghost" not found')
    status, body = await api.get("/apis/nothing.test/v1/things")
    assert (status, body["reason"]) == (404, "NotFound")


async def test_invalid_name_and_missing_name_are_invalid(api: Client) -> None:
    status, body = await api.post(PODS, pod("Not_Valid"))
    assert status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    status, body = await api.post(PODS, {"metadata": {}, "spec": {}})
    assert status == 422
    assert "name or generateName is required" in body["message"]


async def test_namespace_mismatch_and_bad_json_are_bad_request(api: Client) -> None:
    body = pod("a")
    body["metadata"]["namespace"] = "other"
    status, result = await api.post(PODS, body)
    assert (status, result["reason"]) == (400, "BadRequest")
    status, result = await api.call("POST", PODS, None)
    assert status in (400, 422)
    async with api.session.post(api.server.url + PODS, data=b"{not json",
                                headers={"Content-Type": "application/json"}) as rsp:
        assert rsp.status == 400 and (await rsp.json())["reason"] == "BadRequest"


async def test_method_not_allowed(api: Client) -> None:
    status, body = await api.post(f"{PODS}/a", pod("a"))
    assert (status, body["reason"]) == (405, "MethodNotAllowed")
    status, body = await api.delete("/api/v1/namespaces")
    assert (status, body["reason"]) == (405, "MethodNotAllowed")


async def test_resource_version_is_global_and_monotonic(api: Client) -> None:
    a = await api.ok("POST", PODS, pod("a"))
    cm = await api.ok("POST", "/api/v1/namespaces/default/configmaps",
                      {"metadata": {"name": "c"}, "data": {"k": "v"}})
    b = await api.ok("POST", PODS, pod("b"))
    versions = [int(o["metadata"]["resourceVersion"]) for o in (a, cm, b)]
    assert versions == sorted(versions) and len(set(versions)) == 3
    listing = await api.ok("GET", PODS)
    assert listing["kind"] == "PodList" and listing["apiVersion"] == "v1"
    assert int(listing["metadata"]["resourceVersion"]) >= versions[-1]
    assert [p["metadata"]["name"] for p in listing["items"]] == ["a", "b"]


async def test_stale_update_conflicts_and_fresh_update_succeeds(api: Client) -> None:
    cm_url = "/api/v1/namespaces/default/configmaps"
    created = await api.ok("POST", cm_url, {"metadata": {"name": "c"}, "data": {"k": "1"}})
    fresh = dict(created, data={"k": "2"})
    updated = await api.ok("PUT", f"{cm_url}/c", fresh)
    assert int(updated["metadata"]["resourceVersion"]) > int(
        created["metadata"]["resourceVersion"])
    stale = dict(created, data={"k": "3"})
    status, body = await api.put(f"{cm_url}/c", stale)
    assert (status, body["reason"]) == (409, "Conflict")
    assert "the object has been modified" in body["message"]
    assert (await api.ok("GET", f"{cm_url}/c"))["data"] == {"k": "2"}


async def test_noop_update_keeps_resource_version(api: Client) -> None:
    cm_url = "/api/v1/namespaces/default/configmaps"
    created = await api.ok("POST", cm_url, {"metadata": {"name": "c"}, "data": {"k": "1"}})
    again = await api.ok("PUT", f"{cm_url}/c", created)
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_generation_moves_only_on_spec_changes(api: Client) -> None:
    created = await api.ok("POST", PODS, pod("a"))
    labelled = await api.ok("PATCH", f"{PODS}/a", {"metadata": {"labels": {"x": "y"}}},
                            "application/merge-patch+json")
    assert labelled["metadata"]["generation"] == 1
    respec = await api.ok("PATCH", f"{PODS}/a", {"spec": {"activeDeadlineSeconds": 60}},
                          "application/merge-patch+json")
    assert respec["metadata"]["generation"] == 2
    assert created["metadata"]["uid"] == respec["metadata"]["uid"]


async def test_status_subresource_separates_spec_and_status(api: Client) -> None:
    await api.ok("POST", PODS, pod("a"))
    current = await api.ok("GET", f"{PODS}/a")
    # A write to the main resource ignores status ...
    current["status"] = {"phase": "Running"}
    current["metadata"]["labels"] = {"via": "main"}
    after_main = await api.ok("PUT", f"{PODS}/a", current)
    assert after_main["status"]["phase"] == "Pending"
    assert after_main["metadata"]["labels"] == {"via": "main"}
    # ... and a write to /status changes only the status.
    after_main["status"] = {"phase": "Running"}
    after_main["metadata"]["labels"] = {"via": "status"}
    after_main["spec"]["activeDeadlineSeconds"] = 5
    after_status = await api.ok("PUT", f"{PODS}/a/status", after_main)
    assert after_status["status"] == {"phase": "Running"}
    assert after_status["metadata"]["labels"] == {"via": "main"}
    assert "activeDeadlineSeconds" not in after_status["spec"]
    assert after_status["metadata"]["generation"] == 1
    status, body = await api.get(f"{PODS}/a/status")
    assert status == 200 and body["status"] == {"phase": "Running"}


async def test_cluster_scoped_resources(api: Client) -> None:
    node = {"metadata": {"name": "n1"}, "status": {"capacity": {"nvidia.com/gpu": "4"}}}
    created = await api.ok("POST", "/api/v1/nodes", node)
    assert "namespace" not in created["metadata"]
    assert created["status"]["capacity"] == {"nvidia.com/gpu": "4"}  # nodes keep status
    namespaces = await api.ok("GET", "/api/v1/namespaces")
    assert {"default", "kube-system"} <= {n["metadata"]["name"] for n in namespaces["items"]}
    ns = await api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": "team"}})
    assert ns["status"] == {"phase": "Active"}


async def test_list_pagination_with_limit_and_continue(api: Client) -> None:
    for name in ("a", "b", "c"):
        await api.ok("POST", PODS, pod(name))
    first = await api.ok("GET", f"{PODS}?limit=2")
    assert [p["metadata"]["name"] for p in first["items"]] == ["a", "b"]
    assert first["metadata"]["remainingItemCount"] == 1
    rest = await api.ok("GET", f"{PODS}?limit=2&continue={first['metadata']['continue']}")
    assert [p["metadata"]["name"] for p in rest["items"]] == ["c"]
    assert "continue" not in rest["metadata"]


async def test_all_namespaces_list_and_leases_and_secrets(api: Client) -> None:
    await api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": "other"}})
    await api.ok("POST", PODS, pod("a"))
    await api.ok("POST", "/api/v1/namespaces/other/pods", pod("b"))
    everywhere = await api.ok("GET", "/api/v1/pods")
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in everywhere["items"]} == {
        ("default", "a"), ("other", "b")}
    lease = await api.ok("POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases",
                         {"metadata": {"name": "l"}, "spec": {"holderIdentity": "me"}})
    assert lease["apiVersion"] == "coordination.k8s.io/v1" and lease["kind"] == "Lease"
    secret = await api.ok("POST", "/api/v1/namespaces/default/secrets",
                          {"metadata": {"name": "s"}, "data": {"k": "dg=="}})
    assert secret["data"] == {"k": "dg=="}


async def test_pod_spec_is_immutable_but_for_images_and_deadlines(api: Client) -> None:
    await api.ok("POST", PODS, pod("a"))
    image = {"spec": {"containers": [{"name": "main", "image": "y"}]}}
    assert (await api.ok("PATCH", f"{PODS}/a", image, "application/strategic-merge-patch+json")
            )["spec"]["containers"][0]["image"] == "y"
    status, body = await api.patch(f"{PODS}/a", {"spec": {"nodeName": "n1"}},
                                   "application/merge-patch+json")
    assert (status, body["reason"]) == (422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "spec"
    assert "pod updates may not change fields" in body["message"]


async def test_service_gets_cluster_ip_and_port_defaults(api: Client) -> None:
    svc_url = "/api/v1/namespaces/default/services"
    svc = await api.ok("POST", svc_url, {"metadata": {"name": "s"},
                                         "spec": {"ports": [{"port": 80}]}})
    assert svc["spec"]["clusterIP"].startswith("10.96.") and svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    headless = await api.ok("POST", svc_url, {"metadata": {"name": "h"},
                                              "spec": {"clusterIP": "None"}})
    assert headless["spec"]["clusterIP"] == "None"
    other = await api.ok("POST", svc_url, {"metadata": {"name": "o"}, "spec": {}})
    assert other["spec"]["clusterIP"] != svc["spec"]["clusterIP"]


async def test_subresources_only_take_their_verbs(api: Client) -> None:
    await api.ok("POST", PODS, pod("a"))
    for method, path in (("DELETE", f"{PODS}/a/status"), ("POST", f"{PODS}/a/status"),
                         ("GET", f"{PODS}/a/binding"), ("PUT", f"{PODS}/a/log")):
        status, body = await api.call(method, path, {} if method != "GET" else None)
        assert (status, body["reason"]) == (405, "MethodNotAllowed"), (method, path)
    assert (await api.get(f"{PODS}/a"))[0] == 200  # the DELETE on /status deleted nothing
    status, _ = await api.get(f"{PODS}/a/scale")  # pods have no scale subresource
    assert status == 404


async def test_malformed_parameters_are_bad_request(api: Client) -> None:
    await api.ok("POST", PODS, pod("a"))
    for method, path, body in (("GET", f"{PODS}?limit=ten", None),
                               ("GET", f"{PODS}?watch=true&timeoutSeconds=soon", None),
                               ("DELETE", f"{PODS}/a?gracePeriodSeconds=x", None),
                               ("DELETE", f"{PODS}/a", [1])):
        status, result = await api.call(method, path, body)
        assert (status, result["reason"]) == (400, "BadRequest"), path


async def test_binary_bodies_are_unsupported_media(api: Client) -> None:
    """Protobuf (the typed create commands of kubectl 1.37 send it) and CBOR bodies: 415, as a
    server that cannot decode them answers, not 400."""
    for content_type in ("application/vnd.kubernetes.protobuf", "application/cbor"):
        status, body = await api.call("POST", "/api/v1/namespaces/default/configmaps",
                                      {"metadata": {"name": "x"}}, content_type)
        assert (status, body["reason"]) == (415, "UnsupportedMediaType")
        assert "application/json" in body["message"]
