"""PATCH formats: RFC 7386 merge patch, RFC 6902 JSON patch, strategic merge patch."""

from __future__ import annotations

from typing import Any

import pytest

from kube_emulator.apiserver.patching import (
    PatchError,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from tests.kube_emulator.apiserver.conftest import (
    JSONPATCH,
    MERGE,
    PODS,
    STRATEGIC,
    WIDGETS,
    Client,
    pod,
    widget,
)


# The examples of RFC 7386, appendix A.
@pytest.mark.parametrize(("target", "patch", "result"), [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
])
def test_merge_patch_rfc7386_examples(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


def test_json_patch_operations() -> None:
    doc = {"a": {"b": [1, 2]}, "c": "x"}
    ops = [
        {"op": "add", "path": "/a/b/1", "value": 9},
        {"op": "add", "path": "/a/b/-", "value": 3},
        {"op": "replace", "path": "/c", "value": "y"},
        {"op": "copy", "from": "/c", "path": "/d"},
        {"op": "move", "from": "/d", "path": "/e~1f"},
        {"op": "remove", "path": "/a/b/0"},
        {"op": "test", "path": "/e~1f", "value": "y"},
    ]
    assert json_patch(doc, ops) == {"a": {"b": [9, 2, 3]}, "c": "y", "e/f": "y"}
    assert doc == {"a": {"b": [1, 2]}, "c": "x"}  # input untouched


@pytest.mark.parametrize(("ops", "invalid"), [
    ([{"op": "test", "path": "/c", "value": "nope"}], True),
    ([{"op": "remove", "path": "/missing"}], True),
    ([{"op": "replace", "path": "/missing", "value": 1}], True),
    ([{"op": "add", "path": "/a/b/7", "value": 1}], True),
    ([{"op": "jump", "path": "/c"}], False),
    ([{"op": "add", "path": "c", "value": 1}], False),
    ({"op": "add"}, False),
])
def test_json_patch_errors(ops: Any, invalid: bool) -> None:
    with pytest.raises(PatchError) as info:
        json_patch({"a": {"b": [1]}, "c": "x"}, ops)
    assert info.value.invalid is invalid


def test_strategic_merge_patch_merges_keyed_lists() -> None:
    spec = {"containers": [{"name": "a", "image": "1", "env": [{"name": "X", "value": "1"}]},
                           {"name": "b", "image": "1"}], "args": ["x"]}
    patch = {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]},
                            {"name": "b", "$patch": "delete"},
                            {"name": "c", "image": "3"}], "args": ["y"]}
    assert strategic_merge_patch(spec, patch) == {
        "containers": [{"name": "a", "image": "1", "env": [{"name": "X", "value": "1"},
                                                           {"name": "Y", "value": "2"}]},
                       {"name": "c", "image": "3"}],
        "args": ["y"],
    }
    with pytest.raises(PatchError):
        strategic_merge_patch({}, {"$retainKeys": ["a"]})


async def test_patch_types_over_http(api: Client) -> None:
    await api.ok("POST", PODS, pod("a", {"keep": "1", "drop": "1"}))
    merged = await api.ok("PATCH", f"{PODS}/a",
                          {"metadata": {"labels": {"drop": None, "new": "1"}}}, MERGE)
    assert merged["metadata"]["labels"] == {"keep": "1", "new": "1"}
    rv = merged["metadata"]["resourceVersion"]
    patched = await api.ok("PATCH", f"{PODS}/a", [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}], JSONPATCH)
    assert patched["metadata"]["annotations"] == {"a": "b"}
    status, body = await api.patch(f"{PODS}/a", [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv}], JSONPATCH)
    assert (status, body["reason"]) == (422, "Invalid")
    two = pod("b")
    two["spec"]["containers"].append({"name": "side", "image": "s"})
    await api.ok("POST", PODS, two)
    strategic = await api.ok("PATCH", f"{PODS}/b",
                             {"spec": {"containers": [{"name": "side", "image": "s2"}]}},
                             STRATEGIC)
    assert [(c["name"], c["image"]) for c in strategic["spec"]["containers"]] == [
        ("main", "x"), ("side", "s2")]  # merged by name, not replaced


async def test_patch_with_stale_resource_version_conflicts(api: Client) -> None:
    created = await api.ok("POST", PODS, pod("a"))
    await api.ok("PATCH", f"{PODS}/a", {"metadata": {"labels": {"x": "1"}}}, MERGE)
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"],
                          "labels": {"x": "2"}}}
    status, body = await api.patch(f"{PODS}/a", stale, MERGE)
    assert (status, body["reason"]) == (409, "Conflict")


async def test_patch_errors_over_http(crd_api: Client) -> None:
    api = crd_api
    status, body = await api.patch(f"{PODS}/ghost", {"metadata": {}}, MERGE)
    assert status == 404
    await api.ok("POST", WIDGETS, widget("w"))
    status, body = await api.patch(f"{WIDGETS}/w", {"spec": {}}, STRATEGIC)
    assert (status, body["reason"]) == (415, "UnsupportedMediaType")
    status, body = await api.patch(f"{WIDGETS}/w", {"spec": {}}, "text/plain")
    assert status == 415
    status, body = await api.patch(f"{WIDGETS}/w", {"spec": {}}, "application/apply-patch+yaml")
    assert (status, body["reason"]) == (400, "BadRequest")  # an apply needs a fieldManager
    status, body = await api.patch(f"{WIDGETS}/w", {"op": "add"}, JSONPATCH)
    assert (status, body["reason"]) == (400, "BadRequest")
