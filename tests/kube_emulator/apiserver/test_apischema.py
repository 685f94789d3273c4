"""Structural-schema admission as a pure function: pruning, defaults, each keyword."""

from __future__ import annotations

from typing import Any

import pytest

from kube_emulator.apiserver.schema import admit_custom_resource


def root(**spec_props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {
        "metadata": {"type": "object"},
        "spec": {"type": "object", "properties": spec_props}}}


def admit(schema: dict[str, Any], spec: Any) -> tuple[dict[str, Any], list[dict[str, str]]]:
    obj = {"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"}, "spec": spec}
    causes = admit_custom_resource(schema, obj)
    return obj, causes


@pytest.mark.parametrize(("prop", "value", "message"), [
    ({"type": "integer", "minimum": 1, "exclusiveMinimum": True}, 1,
     "Invalid value: 1: spec.v in body should be greater than 1"),
    ({"type": "number", "maximum": 2.5, "exclusiveMaximum": True}, 2.5,
     "Invalid value: 2.5: spec.v in body should be less than 2.5"),
    ({"type": "integer", "maximum": 3}, 4,
     "Invalid value: 4: spec.v in body should be less than or equal to 3"),
    ({"type": "array", "minItems": 2, "items": {"type": "string"}}, ["a"],
     'Invalid value: ["a"]: spec.v in body should have at least 2 items'),
    ({"type": "string", "minLength": 2}, "a",
     'Invalid value: "a": spec.v in body should be at least 2 chars long'),
    ({"type": "boolean"}, "yes",
     'Invalid value: "string": spec.v in body must be of type boolean: "string"'),
    ({"type": "object", "x-kubernetes-embedded-resource": True,
      "x-kubernetes-preserve-unknown-fields": True}, {"kind": "Pod"}, "Required value"),
])
def test_keyword_violations(prop: dict[str, Any], value: Any, message: str) -> None:
    _, causes = admit(root(v=prop), {"v": value})
    assert [c["message"] for c in causes] == [message]


@pytest.mark.parametrize(("prop", "value"), [
    ({"type": "integer", "minimum": 1, "exclusiveMinimum": True}, 2),
    ({"type": "number"}, 3),
    ({"type": "integer"}, 3.0),
    ({"type": "string", "nullable": True}, None),
    ({"x-kubernetes-int-or-string": True}, "25%"),
    ({"type": "object", "x-kubernetes-embedded-resource": True,
      "x-kubernetes-preserve-unknown-fields": True}, {"apiVersion": "v1", "kind": "Pod"}),
    ({"type": "object", "additionalProperties": True}, {"free": {"form": 1}}),
])
def test_accepted_values(prop: dict[str, Any], value: Any) -> None:
    obj, causes = admit(root(v=prop), {"v": value})
    assert causes == [] and obj["spec"]["v"] == value


def test_pruning_keeps_declared_preserved_and_embedded_metadata() -> None:
    schema = root(
        known={"type": "string"},
        items={"type": "array", "items": {"type": "object",
                                          "properties": {"a": {"type": "integer"}}}},
        free={"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        embedded={"type": "object", "x-kubernetes-embedded-resource": True,
                  "properties": {"spec": {"type": "object"}}},
        byKey={"type": "object", "additionalProperties": {"type": "object", "properties": {
            "x": {"type": "integer"}}}},
    )
    obj, causes = admit(schema, {
        "known": "k", "unknown": 1, "items": [{"a": 1, "b": 2}], "free": {"any": {"x": 1}},
        "embedded": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                     "spec": {}, "junk": 1},
        "byKey": {"one": {"x": 1, "y": 2}},
    })
    assert causes == []
    assert obj["spec"] == {
        "known": "k", "items": [{"a": 1}], "free": {"any": {"x": 1}},
        "embedded": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}},
        "byKey": {"one": {"x": 1}},
    }
    assert obj["metadata"] == {"name": "n"}


def test_defaults_apply_recursively_but_not_over_given_values() -> None:
    schema = root(
        policy={"type": "object", "default": {},
                "properties": {"kind": {"type": "string", "default": "linear"},
                               "base": {"type": "integer"}}},
        n={"type": "integer", "default": 1},
        list={"type": "array", "items": {"type": "object", "properties": {
            "w": {"type": "integer", "default": 5}}}},
    )
    obj, causes = admit(schema, {"n": 7, "list": [{}, {"w": 1}]})
    assert causes == []
    assert obj["spec"] == {"n": 7, "policy": {"kind": "linear"},
                           "list": [{"w": 5}, {"w": 1}]}


def test_cel_rules_are_not_evaluated_on_type_errors() -> None:
    schema = root(a={"type": "integer"}, b={"type": "integer"})
    schema["properties"]["spec"]["x-kubernetes-validations"] = [{"rule": "self.a <= self.b"}]
    _, causes = admit(schema, {"a": "1", "b": 0})
    assert [c["reason"] for c in causes] == ["FieldValueTypeInvalid", "FieldValueInvalid"]
    assert "some validation rules were not checked" in causes[1]["message"]
    _, causes = admit(schema, {"a": 2, "b": 1})
    assert causes == [{"reason": "FieldValueInvalid", "field": "spec",
                       "message": 'Invalid value: "object": failed rule: self.a <= self.b'}]
