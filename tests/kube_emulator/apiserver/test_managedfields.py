"""Field ownership and server-side apply over HTTP (kubectl's own runs are in
tests/kube_emulator/kubectl)."""

from __future__ import annotations

from typing import Any

from tests.kube_emulator.apiserver.conftest import MERGE, Client

APPLY = "application/apply-patch+yaml"
CMS = "/api/v1/namespaces/default/configmaps"


def _owners(obj: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["manager"], e["operation"]): e["fieldsV1"]
            for e in obj["metadata"].get("managedFields") or ()}


async def test_updates_record_their_manager(api: Client) -> None:
    created = await api.ok("POST", f"{CMS}?fieldManager=maker", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}},
        "data": {"x": "1"}})
    assert _owners(created) == {("maker", "Update"): {
        "f:data": {"f:x": {}}, "f:metadata": {"f:labels": {"f:a": {}}}}}
    patched = await api.ok("PATCH", f"{CMS}/c?fieldManager=editor", {"data": {"x": "2"}}, MERGE)
    owners = _owners(patched)
    assert owners[("editor", "Update")] == {"f:data": {"f:x": {}}}
    assert owners[("maker", "Update")] == {"f:metadata": {"f:labels": {"f:a": {}}}}
    # Clients cannot forge ownership, but [{}] clears it.
    forged = {**patched, "metadata": {**patched["metadata"], "managedFields": []}}
    assert _owners(await api.ok("PUT", f"{CMS}/c", forged)) == owners
    reset = {**patched, "metadata": {**patched["metadata"], "managedFields": [{}],
                                     "resourceVersion": None}}
    assert "managedFields" not in (await api.ok("PUT", f"{CMS}/c", reset))["metadata"]


async def test_apply_creates_merges_conflicts_and_forces(api: Client) -> None:
    # JSON is YAML: the body of an apply may be either (kubectl sends YAML, tested there).
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"},
              "data": {"a": "1", "b": "2"}}
    status, created = await api.call("PATCH", f"{CMS}/s?fieldManager=alice", config, APPLY)
    assert status == 201 and created["data"] == {"a": "1", "b": "2"}
    assert _owners(created) == {("alice", "Apply"): {"f:data": {"f:a": {}, "f:b": {}}}}
    await api.ok("PATCH", f"{CMS}/s?fieldManager=bob", {"data": {"a": "9"}}, MERGE)
    status, body = await api.call("PATCH", f"{CMS}/s?fieldManager=alice", config, APPLY)
    assert (status, body["reason"]) == (409, "Conflict")
    assert body["message"] == ('Apply failed with 1 conflict: conflict with "bob" using v1: '
                               ".data.a")
    assert body["details"]["causes"] == [{"reason": "FieldManagerConflict",
                                          "message": 'conflict with "bob" using v1',
                                          "field": ".data.a"}]
    # The same value is shared, not a conflict; dropping b removes it (alice alone owned it).
    shared = {**config, "data": {"a": "9"}}
    applied = await api.ok("PATCH", f"{CMS}/s?fieldManager=alice", shared, APPLY)
    assert applied["data"] == {"a": "9"}
    assert _owners(applied)[("bob", "Update")] == {"f:data": {"f:a": {}}}
    forced = await api.ok("PATCH", f"{CMS}/s?fieldManager=alice&force=true", config, APPLY)
    assert forced["data"] == {"a": "1", "b": "2"}
    assert ("bob", "Update") not in _owners(forced)


async def test_apply_needs_a_field_manager(api: Client) -> None:
    status, body = await api.call("PATCH", f"{CMS}/nobody", {"data": {}}, APPLY)
    assert (status, body["reason"]) == (400, "BadRequest") and "fieldManager" in body["message"]
