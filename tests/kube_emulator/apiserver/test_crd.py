"""CustomResourceDefinitions: dynamic registration, schema admission, status and scale."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kube_emulator.apiserver.cel import evaluate_rule
from tests.kube_emulator.apiserver.conftest import (
    CRDS,
    JSONPATCH,
    MERGE,
    WIDGET_CRD,
    WIDGETS,
    Client,
    widget,
)

REPO = Path(__file__).resolve().parents[3]


async def test_crd_is_established_and_discoverable(crd_api: Client) -> None:
    api = crd_api
    crd = await api.ok("GET", f"{CRDS}/widgets.example.test")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert crd["status"]["acceptedNames"]["kind"] == "Widget"
    groups = await api.ok("GET", "/apis")
    group = next(g for g in groups["groups"] if g["name"] == "example.test")
    assert group["preferredVersion"] == {"groupVersion": "example.test/v1", "version": "v1"}
    resources = await api.ok("GET", "/apis/example.test/v1")
    by_name = {r["name"]: r for r in resources["resources"]}
    assert by_name["widgets"]["shortNames"] == ["wd"]
    assert by_name["widgets"]["namespaced"] is True
    assert by_name["widgets/status"]["verbs"] == ["get", "patch", "update"]
    assert (by_name["widgets/scale"]["group"], by_name["widgets/scale"]["kind"]) == (
        "autoscaling", "Scale")


async def test_invalid_crd_is_refused(api: Client) -> None:
    bad = copy.deepcopy(WIDGET_CRD)
    bad["metadata"]["name"] = "wrong.example.test"
    status, body = await api.post(CRDS, bad)
    assert (status, body["reason"]) == (422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.name"


async def test_defaults_and_pruning(crd_api: Client) -> None:
    body = widget("w", template={"anything": {"goes": 1}}, unknownField=1)
    body["status"] = {"ignored": "on create"}
    body["extraTopLevel"] = True
    created = await crd_api.ok("POST", WIDGETS, body)
    assert created["spec"] == {"maxReplicas": 3, "minReplicas": 1, "mode": "fast",
                               "template": {"anything": {"goes": 1}}}
    assert "status" not in created and "extraTopLevel" not in created


@pytest.mark.parametrize(("spec", "field", "message"), [
    ({"minReplicas": 0}, "spec.minReplicas",
     "Invalid value: 0: spec.minReplicas in body should be greater than or equal to 1"),
    ({"mode": "warp"}, "spec.mode",
     'Unsupported value: "warp": supported values: "fast", "slow"'),
    ({"maxReplicas": "3"}, "spec.maxReplicas",
     'Invalid value: "string": spec.maxReplicas in body must be of type integer: "string"'),
    ({"label": "ABC"}, "spec.label",
     "Invalid value: \"ABC\": spec.label in body should match '^[a-z]+$'"),
    ({"label": "abcdefghij"}, "spec.label", "Too long: may not be more than 8 bytes"),
    ({"tags": ["a", "b", "c"]}, "spec.tags", "Too many: 3: must have at most 2 items"),
    ({"tags": [""]}, "spec.tags[0]",
     'Invalid value: "": spec.tags[0] in body should be at least 1 chars long'),
    ({"size": 1.5}, "spec.size",
     'Invalid value: "number": spec.size in body must be of type integer,string: "number"'),
    ({"env": {"A": 1}}, "spec.env.A",
     'Invalid value: "integer": spec.env.A in body must be of type string: "integer"'),
    ({"minReplicas": 5}, "spec.minReplicas",
     'Invalid value: "object": spec.minReplicas must be <= spec.maxReplicas'),
    ({"replicas": None, "maxReplicas": None}, "spec.maxReplicas",
     'Invalid value: "null": spec.maxReplicas in body must be of type integer: "null"'),
])
async def test_schema_violations_are_422_with_causes(crd_api: Client, spec: dict[str, Any],
                                                     field: str, message: str) -> None:
    status, body = await crd_api.post(WIDGETS, widget("w", **spec))
    assert (status, body["reason"], body["code"]) == (422, "Invalid", 422)
    assert {"reason": body["details"]["causes"][0]["reason"], "field": field,
            "message": message} in body["details"]["causes"]
    assert body["message"].startswith('Widget.example.test "w" is invalid: ')
    assert body["details"]["group"] == "example.test"


async def test_valid_variants_are_accepted(crd_api: Client) -> None:
    for name, spec in (("a", {"size": 3}), ("b", {"size": "50%"}), ("c", {"replicas": None}),
                       ("d", {"env": {"A": "x"}, "tags": ["t"]})):
        await crd_api.ok("POST", WIDGETS, widget(name, **spec))


async def test_required_fields(crd_api: Client) -> None:
    status, body = await crd_api.post(WIDGETS, {"metadata": {"name": "w"}, "spec": {}})
    assert status == 422
    assert {"reason": "FieldValueRequired", "message": "Required value",
            "field": "spec.maxReplicas"} in body["details"]["causes"]
    status, body = await crd_api.post(WIDGETS, {"metadata": {"name": "w"}})
    assert body["details"]["causes"] == [
        {"reason": "FieldValueRequired", "message": "Required value", "field": "spec"}]


async def test_updates_are_validated_too(crd_api: Client) -> None:
    await crd_api.ok("POST", WIDGETS, widget("w"))
    status, body = await crd_api.patch(f"{WIDGETS}/w", {"spec": {"maxReplicas": 0}}, MERGE)
    assert status == 422
    # Several causes are listed in brackets, as kube-apiserver does.
    assert body["message"] == (
        'Widget.example.test "w" is invalid: [spec.maxReplicas: Invalid value: 0: '
        "spec.maxReplicas in body should be greater than or equal to 1, spec.minReplicas: "
        'Invalid value: "object": spec.minReplicas must be <= spec.maxReplicas]')


async def test_custom_resource_status_subresource(crd_api: Client) -> None:
    api = crd_api
    await api.ok("POST", WIDGETS, widget("w"))
    main = await api.ok("PATCH", f"{WIDGETS}/w", {"status": {"phase": "X"}}, MERGE)
    assert "status" not in main
    status = await api.ok("PATCH", f"{WIDGETS}/w/status",
                          {"status": {"phase": "Running"}, "spec": {"maxReplicas": 9}}, MERGE)
    assert status["status"] == {"phase": "Running"} and status["spec"]["maxReplicas"] == 3
    assert status["metadata"]["generation"] == 1
    spec = await api.ok("PATCH", f"{WIDGETS}/w", {"spec": {"maxReplicas": 4}}, MERGE)
    assert spec["metadata"]["generation"] == 2 and spec["status"] == {"phase": "Running"}


async def test_scale_subresource(crd_api: Client) -> None:
    api = crd_api
    await api.ok("POST", WIDGETS, widget("w", replicas=1))
    await api.ok("PATCH", f"{WIDGETS}/w/status",
                 {"status": {"replicas": 1, "selector": "app=w"}}, MERGE)
    scale = await api.ok("GET", f"{WIDGETS}/w/scale")
    assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"] == {"replicas": 1}
    assert scale["status"] == {"replicas": 1, "selector": "app=w"}
    # kubectl scale: a merge patch of the Scale.
    scaled = await api.ok("PATCH", f"{WIDGETS}/w/scale", {"spec": {"replicas": 3}}, MERGE)
    assert scaled["spec"]["replicas"] == 3
    assert (await api.ok("GET", f"{WIDGETS}/w"))["spec"]["replicas"] == 3
    # An HPA: PUT of the Scale with its resourceVersion (stale -> Conflict).
    scale = await api.ok("GET", f"{WIDGETS}/w/scale")
    scale["spec"]["replicas"] = 2
    await api.ok("PUT", f"{WIDGETS}/w/scale", scale)
    scale["spec"]["replicas"] = 1
    status, body = await api.put(f"{WIDGETS}/w/scale", scale)
    assert (status, body["reason"]) == (409, "Conflict")
    await api.ok("PATCH", f"{WIDGETS}/w/scale",
                 [{"op": "replace", "path": "/spec/replicas", "value": 0}], JSONPATCH)
    status, body = await api.patch(f"{WIDGETS}/w/scale", {"spec": {"replicas": -1}}, MERGE)
    assert status == 422


async def test_deleting_crd_removes_instances_and_resource(crd_api: Client) -> None:
    api = crd_api
    await api.ok("POST", WIDGETS, widget("w"))
    await api.ok("DELETE", f"{CRDS}/widgets.example.test")
    status, _ = await api.get(f"{CRDS}/widgets.example.test")
    assert status == 404
    status, _ = await api.get(WIDGETS)
    assert status == 404
    groups = await api.ok("GET", "/apis")
    assert "example.test" not in {g["name"] for g in groups["groups"]}
    # Re-creating it starts empty.
    await api.ok("POST", CRDS, WIDGET_CRD)
    assert (await api.ok("GET", WIDGETS))["items"] == []


async def test_crd_update_changes_the_served_schema(crd_api: Client) -> None:
    api = crd_api
    crd = await api.ok("GET", f"{CRDS}/widgets.example.test")
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["maxReplicas"]["maximum"] = 5
    await api.ok("PUT", f"{CRDS}/widgets.example.test", crd)
    status, body = await api.post(WIDGETS, widget("w", maxReplicas=6))
    assert status == 422 and "less than or equal to 5" in body["message"]


async def test_project_elasticjob_crd_message(api: Client) -> None:
    """The exact message kube-apiserver gives for the project's own CRD."""
    crd = yaml.safe_load((REPO / "crds" / "elasticjobs.elastic.dev.yaml").read_text())
    await api.ok("POST", CRDS, crd)
    body = {"apiVersion": "elastic.dev/v1alpha1", "kind": "ElasticJob",
            "metadata": {"name": "x"},
            "spec": {"minReplicas": 0, "maxReplicas": 2, "template": {"spec": {}}}}
    status, result = await api.post("/apis/elastic.dev/v1alpha1/namespaces/default/elasticjobs",
                                     body)
    assert status == 422
    assert result["message"] == (
        'ElasticJob.elastic.dev "x" is invalid: spec.minReplicas: Invalid value: 0: '
        "spec.minReplicas in body should be greater than or equal to 1")


@pytest.mark.parametrize(("rule", "value", "outcome"), [
    ("self.a <= self.b", {"a": 1, "b": 2}, None),
    ("self.a <= self.b", {"a": 3, "b": 2}, "false"),
    ("self.a < 2 && self.b >= 2", {"a": 1, "b": 2}, None),
    ("self.a == 1 || self.b == 1", {"a": 2, "b": 2}, "false"),
    ("!(self.a > 1)", {"a": 1}, None),
    ("has(self.a) || self.b == 1", {"b": 1}, None),
    ("!has(self.x.y)", {"x": {}}, None),
    ("size(self.s) <= 3 && self.l.size() == 2", {"s": "abc", "l": [1, 2]}, None),
    ("self.name != 'x'", {"name": "x"}, "false"),
    ('self.a + 1 == self.b * 2', {"a": 3, "b": 2}, None),
    ("self.a <= self.b", {"a": 1}, "no such key: b"),
    ("self.a < 'x'", {"a": 1}, "no such overload: <"),
    ("self.all(x, x > 0)", {}, None),  # outside the subset: skipped, not failed
    ("oldSelf == self", {}, None),
])
def test_cel_subset(rule: str, value: Any, outcome: str | None) -> None:
    assert evaluate_rule(rule, value) == outcome


def test_unsupported_cel_rule_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    evaluate_rule("self.items.exists(i, i == 1)", {})
    evaluate_rule("self.items.exists(i, i == 1)", {})
    warnings = [r for r in caplog.records if "outside the emulator's CEL subset" in r.message]
    assert len(warnings) == 1 and "NOT checked" in warnings[0].message


async def test_strict_field_validation_refuses_unknown_fields(crd_api: Client) -> None:
    body = widget("w", unknownField=1)
    status, result = await crd_api.post(f"{WIDGETS}?fieldValidation=Strict", body)
    assert (status, result["reason"]) == (400, "BadRequest")
    assert result["message"] == 'strict decoding error: unknown field "spec.unknownField"'
    assert (await crd_api.ok("GET", WIDGETS))["items"] == []


async def test_dry_run_validates_without_storing(crd_api: Client) -> None:
    preview = await crd_api.ok("POST", f"{WIDGETS}?dryRun=All", widget("w"))
    assert preview["spec"]["minReplicas"] == 1  # defaults applied
    assert "resourceVersion" not in preview["metadata"]
    status, _ = await crd_api.post(f"{WIDGETS}?dryRun=All", widget("w", minReplicas=0))
    assert status == 422
    assert (await crd_api.ok("GET", WIDGETS))["items"] == []
    await crd_api.ok("POST", WIDGETS, widget("w"))
    await crd_api.ok("PATCH", f"{WIDGETS}/w?dryRun=All", {"spec": {"maxReplicas": 9}}, MERGE)
    await crd_api.ok("DELETE", f"{WIDGETS}/w?dryRun=All")
    assert (await crd_api.ok("GET", f"{WIDGETS}/w"))["spec"]["maxReplicas"] == 3


async def test_every_served_version_shares_the_objects(api: Client) -> None:
    crd = copy.deepcopy(WIDGET_CRD)
    beta = copy.deepcopy(crd["spec"]["versions"][0])
    beta.update(name="v1beta1", storage=False)
    hidden = copy.deepcopy(beta)
    hidden.update(name="v1alpha1", served=False)
    crd["spec"]["versions"] += [beta, hidden]
    await api.ok("POST", CRDS, crd)
    await api.ok("POST", WIDGETS, widget("w"))
    seen = await api.ok("GET", "/apis/example.test/v1beta1/namespaces/default/widgets/w")
    assert seen["apiVersion"] == "example.test/v1beta1" and seen["spec"]["maxReplicas"] == 3
    group = await api.ok("GET", "/apis/example.test")
    assert [v["version"] for v in group["versions"]] == ["v1", "v1beta1"]
    assert group["preferredVersion"]["version"] == "v1"
    status, _ = await api.get("/apis/example.test/v1alpha1/namespaces/default/widgets")
    assert status == 404
    created = await api.ok("GET", f"{CRDS}/widgets.example.test")
    assert created["status"]["storedVersions"] == ["v1"]
