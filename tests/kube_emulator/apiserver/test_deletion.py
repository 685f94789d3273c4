"""Deletion: finalizers, graceful pod deletion, garbage collection, namespaces."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp

from kube_emulator.apiserver.server import ApiServer
from tests.kube_emulator.apiserver.conftest import MERGE, PODS, Client, eventually, pod

CMS = "/api/v1/namespaces/default/configmaps"


def owned_by(owner: dict[str, Any], block: bool = False) -> list[dict[str, Any]]:
    meta = owner["metadata"]
    return [{"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
             "uid": meta["uid"], "blockOwnerDeletion": block}]


async def absent(api: Client, path: str) -> bool:
    return (await api.get(path))[0] == 404


async def test_finalizer_holds_object_until_removed(api: Client) -> None:
    await api.ok("POST", CMS, {"metadata": {"name": "c", "finalizers": ["example.test/hold"]}})
    deleting = await api.ok("DELETE", f"{CMS}/c")
    assert deleting["metadata"]["deletionTimestamp"]
    assert deleting["metadata"]["deletionGracePeriodSeconds"] == 0
    still = await api.ok("GET", f"{CMS}/c")
    assert still["metadata"]["finalizers"] == ["example.test/hold"]
    status, body = await api.patch(
        f"{CMS}/c", {"metadata": {"finalizers": ["example.test/hold", "new/one"]}}, MERGE)
    assert status == 422 and "no new finalizers can be added" in body["message"]
    await api.ok("PATCH", f"{CMS}/c", {"metadata": {"finalizers": None}}, MERGE)
    assert await absent(api, f"{CMS}/c")


async def test_delete_preconditions(api: Client) -> None:
    await api.ok("POST", CMS, {"metadata": {"name": "c"}})
    status, body = await api.delete(f"{CMS}/c", {"preconditions": {"uid": "other"}})
    assert (status, body["reason"]) == (409, "Conflict")
    status, body = await api.delete(f"{CMS}/c", {"propagationPolicy": "Sideways"})
    assert (status, body["reason"]) == (400, "BadRequest")
    await api.ok("DELETE", f"{CMS}/c")
    status, body = await api.delete(f"{CMS}/c")
    assert (status, body["reason"]) == (404, "NotFound")


async def test_bound_pod_waits_for_kubelet_final_delete(api: Client) -> None:
    await api.ok("POST", PODS, pod("bound", nodeName="n1", terminationGracePeriodSeconds=20))
    deleting = await api.ok("DELETE", f"{PODS}/bound")
    assert deleting["metadata"]["deletionGracePeriodSeconds"] == 20
    assert deleting["metadata"]["deletionTimestamp"]
    assert (await api.get(f"{PODS}/bound"))[0] == 200
    shorter = await api.ok("DELETE", f"{PODS}/bound", {"gracePeriodSeconds": 5})
    assert shorter["metadata"]["deletionGracePeriodSeconds"] == 5
    await api.ok("DELETE", f"{PODS}/bound?gracePeriodSeconds=0")  # what a kubelet does
    assert await absent(api, f"{PODS}/bound")


async def test_unbound_and_finished_pods_go_at_once(api: Client) -> None:
    await api.ok("POST", PODS, pod("unbound"))
    await api.ok("DELETE", f"{PODS}/unbound")
    assert await absent(api, f"{PODS}/unbound")
    await api.ok("POST", PODS, pod("done", nodeName="n1"))
    await api.ok("PATCH", f"{PODS}/done/status", {"status": {"phase": "Succeeded"}}, MERGE)
    await api.ok("DELETE", f"{PODS}/done")
    assert await absent(api, f"{PODS}/done")


async def test_pods_graceful_off_deletes_bound_pods_at_once() -> None:
    server = ApiServer(pods_graceful=False)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Client(server, session)
            await api.ok("POST", PODS, pod("bound", nodeName="n1"))
            await api.ok("DELETE", f"{PODS}/bound")
            assert await absent(api, f"{PODS}/bound")
    finally:
        await server.stop()


async def test_background_gc_deletes_dependents(api: Client) -> None:
    owner = await api.ok("POST", CMS, {"metadata": {"name": "owner"}})
    for name in ("a", "b"):
        body = pod(name)
        body["metadata"]["ownerReferences"] = owned_by(owner)
        await api.ok("POST", PODS, body)
    await api.ok("POST", PODS, pod("unrelated"))
    await api.ok("DELETE", f"{CMS}/owner")

    async def collected() -> bool:
        return await absent(api, f"{PODS}/a") and await absent(api, f"{PODS}/b")

    await eventually(collected)
    assert not await absent(api, f"{PODS}/unrelated")


async def test_foreground_deletion_waits_for_blocking_dependents(api: Client) -> None:
    owner = await api.ok("POST", CMS, {"metadata": {"name": "owner"}})
    body = pod("dep")
    body["metadata"]["ownerReferences"] = owned_by(owner, block=True)
    body["metadata"]["finalizers"] = ["example.test/hold"]
    await api.ok("POST", PODS, body)
    deleting = await api.ok("DELETE", f"{CMS}/owner", {"propagationPolicy": "Foreground"})
    assert "foregroundDeletion" in deleting["metadata"]["finalizers"]

    async def dependent_deleting() -> bool:
        _, dep = await api.get(f"{PODS}/dep")
        return bool(dep["metadata"].get("deletionTimestamp"))

    await eventually(dependent_deleting)
    assert not await absent(api, f"{CMS}/owner")  # blocked by the dependent
    await api.ok("PATCH", f"{PODS}/dep", {"metadata": {"finalizers": None}}, MERGE)

    async def owner_gone() -> bool:
        return await absent(api, f"{CMS}/owner")

    await eventually(owner_gone)
    assert await absent(api, f"{PODS}/dep")


async def test_orphan_deletion_keeps_dependents(api: Client) -> None:
    owner = await api.ok("POST", CMS, {"metadata": {"name": "owner"}})
    body = pod("dep")
    body["metadata"]["ownerReferences"] = owned_by(owner)
    await api.ok("POST", PODS, body)
    await api.ok("DELETE", f"{CMS}/owner?propagationPolicy=Orphan")
    assert await absent(api, f"{CMS}/owner")
    dep = await api.ok("GET", f"{PODS}/dep")
    assert "ownerReferences" not in dep["metadata"]


async def test_dangling_owner_reference_is_collected(api: Client) -> None:
    body = pod("orphan")
    body["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap",
                                            "name": "gone", "uid": str(uuid.uuid4())}]
    await api.ok("POST", PODS, body)

    async def collected() -> bool:
        return await absent(api, f"{PODS}/orphan")

    await eventually(collected)


async def test_one_of_two_owners_gone_drops_only_that_reference(api: Client) -> None:
    keep = await api.ok("POST", CMS, {"metadata": {"name": "keep"}})
    lose = await api.ok("POST", CMS, {"metadata": {"name": "lose"}})
    body = pod("dep")
    body["metadata"]["ownerReferences"] = owned_by(keep) + owned_by(lose)
    await api.ok("POST", PODS, body)
    await api.ok("DELETE", f"{CMS}/lose")

    async def pruned() -> bool:
        _, dep = await api.get(f"{PODS}/dep")
        return [r["name"] for r in dep["metadata"]["ownerReferences"]] == ["keep"]

    await eventually(pruned)


async def test_namespace_deletion_removes_content(api: Client) -> None:
    await api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": "team"}})
    await api.ok("POST", "/api/v1/namespaces/team/pods", pod("a"))
    await api.ok("POST", "/api/v1/namespaces/team/configmaps", {"metadata": {"name": "c"}})
    terminating = await api.ok("DELETE", "/api/v1/namespaces/team")
    assert terminating["status"]["phase"] == "Terminating"

    async def gone() -> bool:
        return await absent(api, "/api/v1/namespaces/team")

    await eventually(gone)
    assert (await api.ok("GET", "/api/v1/pods"))["items"] == []
    status, _ = await api.post("/api/v1/namespaces/team/pods", pod("late"))
    assert status == 404


async def test_terminating_namespace_refuses_new_content(api: Client) -> None:
    await api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": "team"}})
    held = {"metadata": {"name": "c", "finalizers": ["example.test/hold"]}}
    await api.ok("POST", "/api/v1/namespaces/team/configmaps", held)
    await api.ok("DELETE", "/api/v1/namespaces/team")
    status, body = await api.post("/api/v1/namespaces/team/pods", pod("late"))
    assert (status, body["reason"]) == (403, "Forbidden")
    await api.ok("PATCH", "/api/v1/namespaces/team/configmaps/c",
                 {"metadata": {"finalizers": None}}, MERGE)

    async def gone() -> bool:
        return await absent(api, "/api/v1/namespaces/team")

    await eventually(gone)


async def test_deletecollection_with_label_selector(api: Client) -> None:
    await api.ok("POST", PODS, pod("a", {"job": "j1"}))
    await api.ok("POST", PODS, pod("b", {"job": "j1"}))
    await api.ok("POST", PODS, pod("c", {"job": "j2"}))
    result = await api.ok("DELETE", f"{PODS}?labelSelector=job%3Dj1")
    assert sorted(p["metadata"]["name"] for p in result["items"]) == ["a", "b"]
    remaining = await api.ok("GET", PODS)
    assert [p["metadata"]["name"] for p in remaining["items"]] == ["c"]
