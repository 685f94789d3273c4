"""Custom resource admission against a CRD's structural OpenAPI v3 schema.

What kube-apiserver does to a custom resource on create and update, in its order:
1. **prune** fields the schema does not declare (kept below
   ``x-kubernetes-preserve-unknown-fields: true``; ``apiVersion``/``kind``/``metadata`` are
   kept at the root and in ``x-kubernetes-embedded-resource`` objects);
2. **default**: a missing property with a ``default`` gets a copy of it (recursively, so a
   defaulted object gets its own defaults);
3. **validate**: type (with ``nullable`` and ``x-kubernetes-int-or-string``), ``required``,
   ``enum``, ``minimum``/``maximum`` (``exclusiveMinimum``/``exclusiveMaximum``),
   ``minLength``/``maxLength``, ``pattern``, ``minItems``/``maxItems``, ``items``,
   ``additionalProperties`` and ``x-kubernetes-validations`` (the CEL subset of
   :mod:`kube_emulator.apiserver.cel`).

Error causes carry kube-apiserver's reasons (FieldValueRequired, FieldValueInvalid,
FieldValueNotSupported, FieldValueTypeInvalid) and its message wording, e.g.
``Invalid value: 0: spec.minReplicas in body should be greater than or equal to 1``.
``format`` is not checked (kube-apiserver checks only a few formats).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from kube_emulator.apiserver.cel import evaluate_rule

Schema = dict[str, Any]
Cause = dict[str, str]

_ROOT_KEEP = ("apiVersion", "kind", "metadata")


class _Causes(list[Cause]):
    """Schema causes, with the CEL rule causes kept apart: kube-apiserver does not evaluate
    rules when the object has type errors, and says so instead."""

    def __init__(self) -> None:
        super().__init__()
        self.rules: list[Cause] = []

    def result(self) -> list[Cause]:
        blocking = any(c["reason"] in ("FieldValueTypeInvalid", "FieldValueNotSupported")
                       for c in self)
        if blocking and self.rules:
            return [*self, {"reason": "FieldValueInvalid", "field": "",
                            "message": "some validation rules were not checked because the "
                                       "object was invalid; correct the existing errors to "
                                       "complete validation"}]
        return [*self, *self.rules]


def admit_custom_resource(schema: Schema, obj: dict[str, Any],
                          pruned: list[str] | None = None) -> list[Cause]:
    """Prune and default ``obj`` in place, then return its validation errors (empty: valid).

    The paths of pruned fields are appended to ``pruned`` (for ``fieldValidation=Strict``).
    """
    pruned = [] if pruned is None else pruned
    for key in list(obj):
        if key not in _ROOT_KEEP:
            value = obj[key]
            sub = (schema.get("properties") or {}).get(key)
            if sub is None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                del obj[key]
                pruned.append(key)
            elif sub is not None:
                obj[key] = _prune(value, sub, key, pruned)
    _default(obj, schema)
    causes = _Causes()
    for key, sub in (schema.get("properties") or {}).items():
        if key in obj and key not in _ROOT_KEEP:
            _validate(obj[key], sub, key, causes)
    for key in schema.get("required") or ():
        if key not in obj:
            causes.append(_required(key))
    _rules(obj, schema, "", causes)
    return causes.result()


def _prune(value: Any, schema: Schema, path: str, pruned: list[str]) -> Any:
    if isinstance(value, dict) and not schema.get("x-kubernetes-int-or-string"):
        props = schema.get("properties")
        additional = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        embedded = schema.get("x-kubernetes-embedded-resource")
        out = {}
        for key, item in value.items():
            if props is not None and key in props:
                out[key] = _prune(item, props[key], f"{path}.{key}", pruned)
            elif isinstance(additional, dict):
                out[key] = _prune(item, additional, f"{path}.{key}", pruned)
            elif preserve or additional is True or (embedded and key in _ROOT_KEEP):
                out[key] = item
            else:
                pruned.append(f"{path}.{key}")
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_prune(item, schema["items"], f"{path}[{n}]", pruned)
                for n, item in enumerate(value)]
    return value


def _default(value: Any, schema: Schema) -> None:
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _default(value[key], sub)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key in value:
                if key not in (schema.get("properties") or {}):
                    _default(value[key], additional)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default(item, schema["items"])


def _go(value: Any) -> str:
    """A value as Go's %v-with-quotes prints it in Kubernetes field errors."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _required(path: str) -> Cause:
    return {"reason": "FieldValueRequired", "message": "Required value", "field": path}


def _invalid(path: str, value: Any, detail: str) -> Cause:
    return {"reason": "FieldValueInvalid", "field": path,
            "message": f"Invalid value: {_go(value)}: {detail}"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_ok(value: Any, schema: Schema) -> bool:
    wanted = schema.get("type")
    actual = _json_type(value)
    if schema.get("x-kubernetes-int-or-string"):
        return actual in ("integer", "string") or (
            actual == "number" and float(value).is_integer())
    if wanted is None:
        return True
    if wanted == "integer" and actual == "number":
        return float(value).is_integer()
    if wanted == "number":
        return actual in ("integer", "number")
    return wanted == actual


def _validate(value: Any, schema: Schema, path: str, causes: _Causes) -> None:
    if value is None:
        if not schema.get("nullable") and not schema.get("x-kubernetes-preserve-unknown-fields"):
            causes.append({"reason": "FieldValueTypeInvalid", "field": path,
                           "message": f'Invalid value: "null": {path} in body must be of type '
                                      f'{schema.get("type", "object")}: "null"'})
        return
    if not _type_ok(value, schema):
        wanted = "integer,string" if schema.get("x-kubernetes-int-or-string") else schema["type"]
        causes.append({"reason": "FieldValueTypeInvalid", "field": path,
                       "message": f'Invalid value: "{_json_type(value)}": {path} in body must be'
                                  f' of type {wanted}: {_go(_json_type(value))}'})
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_go(v) for v in schema["enum"])
        causes.append({"reason": "FieldValueNotSupported", "field": path,
                       "message": f"Unsupported value: {_go(value)}: supported values: "
                                  f"{supported}"})
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(value, schema, path, causes)
    if isinstance(value, str):
        _check_string(value, schema, path, causes)
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(_invalid(path, value, f"{path} in body should have at least "
                                                f"{schema['minItems']} items"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append({"reason": "FieldValueTooMany", "field": path,
                           "message": f"Too many: {len(value)}: must have at most "
                                      f"{schema['maxItems']} items"})
        if isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                _validate(item, schema["items"], f"{path}[{index}]", causes)
    if isinstance(value, dict) and not schema.get("x-kubernetes-int-or-string"):
        _check_object(value, schema, path, causes)
    _rules(value, schema, path, causes)


def _check_number(value: float, schema: Schema, path: str, causes: _Causes) -> None:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None:
        if schema.get("exclusiveMinimum") and value <= low:
            causes.append(_invalid(path, value, f"{path} in body should be greater than {low}"))
        elif value < low:
            causes.append(_invalid(path, value, f"{path} in body should be greater than or "
                                                f"equal to {low}"))
    if high is not None:
        if schema.get("exclusiveMaximum") and value >= high:
            causes.append(_invalid(path, value, f"{path} in body should be less than {high}"))
        elif value > high:
            causes.append(_invalid(path, value, f"{path} in body should be less than or "
                                                f"equal to {high}"))


def _check_string(value: str, schema: Schema, path: str, causes: _Causes) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        causes.append(_invalid(path, value, f"{path} in body should be at least "
                                            f"{schema['minLength']} chars long"))
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        causes.append({"reason": "FieldValueTooLong", "field": path,
                       "message": f"Too long: may not be more than {schema['maxLength']} "
                                  "bytes"})
    if "pattern" in schema and not re.search(schema["pattern"], value):
        causes.append(_invalid(path, value, f"{path} in body should match "
                                            f"'{schema['pattern']}'"))


def _check_object(value: dict[str, Any], schema: Schema, path: str,
                  causes: _Causes) -> None:
    props = schema.get("properties") or {}
    for key in schema.get("required") or ():
        if key not in value:
            causes.append(_required(f"{path}.{key}"))
    if schema.get("x-kubernetes-embedded-resource"):
        for key in ("apiVersion", "kind"):
            if not value.get(key):
                causes.append(_required(f"{path}.{key}"))
    additional = schema.get("additionalProperties")
    for key, item in value.items():
        if key in props:
            _validate(item, props[key], f"{path}.{key}", causes)
        elif isinstance(additional, dict):
            _validate(item, additional, f"{path}.{key}", causes)


def _rules(value: Any, schema: Schema, path: str, causes: _Causes) -> None:
    for rule in schema.get("x-kubernetes-validations") or ():
        failure = evaluate_rule(rule.get("rule", ""), value)
        if failure is None:
            continue
        field = path + rule["fieldPath"] if rule.get("fieldPath") else path
        message = rule.get("message") or f"failed rule: {rule.get('rule')}"
        if failure != "false":
            message = f"{failure} evaluating rule: {rule.get('rule')}"
        causes.rules.append({"reason": rule.get("reason") or "FieldValueInvalid",
                       "field": field.lstrip("."),
                       "message": f"Invalid value: {_go(_json_type(value))}: {message}"})
