"""Generate CustomResourceDefinitions from the pydantic API models.

The role controller-gen plays for Go types: the models are the only place a field, a default,
a range or an enum is written down, and the CRD YAML in ``crds/`` is derived from them. A test
fails when the committed YAML differs from what this module generates.

Pydantic emits JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI v3.0
schema: no ``$ref``, no ``anyOf`` for optionals (``nullable`` instead), boolean
``exclusiveMinimum``, and no titles. :func:`structural_schema` does that translation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel

from elastic_operator import labels

# Keys of JSON Schema that the Kubernetes structural schema accepts as they are.
_PASSTHROUGH = {
    "type", "format", "description", "default", "enum", "minimum", "maximum", "minLength",
    "maxLength", "pattern", "minItems", "maxItems", "uniqueItems", "nullable",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string", "x-kubernetes-validations", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
}


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI v3 structural schema of ``model`` (wire names, refs inlined)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs)


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        nullable = len(options) != len(node["anyOf"])
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        out = _convert({**options[0], **rest}, defs)
        if nullable:
            out["nullable"] = True
        return out
    if "allOf" in node and len(node["allOf"]) == 1:
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return _convert({**node["allOf"][0], **rest}, defs)

    out: dict[str, Any] = {k: v for k, v in node.items() if k in _PASSTHROUGH}
    if out.get("default", 0) is None:
        del out["default"]  # "unset" is the default of every optional field already
    if "const" in node:
        out["enum"] = [node["const"]]
        out.setdefault("type", "string")
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:
            out[flag] = node[bound]
            out[bound] = True
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {k: _convert(v, defs) for k, v in node["properties"].items()}
        if node.get("required"):
            out["required"] = list(node["required"])
    additional = node.get("additionalProperties")
    preserve = out.get("x-kubernetes-preserve-unknown-fields")
    if isinstance(additional, dict) and not preserve:
        out["additionalProperties"] = _convert(additional, defs)
    if "items" in node:
        out["items"] = _convert(node["items"], defs)
    shaped = {"properties", "additionalProperties"} & set(out)
    free_form = out.get("type") == "object" and not shaped
    if free_form and not preserve:
        # dict[str, Any]: keep its content instead of letting the API server prune it.
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


@dataclass(frozen=True)
class CrdSpec:
    """What a generated CRD needs besides the models."""

    kind: str
    plural: str
    singular: str
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    description: str
    short_names: list[str] = field(default_factory=list)
    namespaced: bool = True
    scale: bool = False
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    spec_rules: list[dict[str, Any]] = field(default_factory=list)
    categories: list[str] = field(default_factory=lambda: ["elastic"])


def crd_manifest(spec: CrdSpec) -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition for ``spec``."""
    spec_schema = structural_schema(spec.spec_model)
    if spec.spec_rules:
        spec_schema["x-kubernetes-validations"] = spec.spec_rules
    status_schema = structural_schema(spec.status_model)
    subresources: dict[str, Any] = {"status": {}}
    if spec.scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    version = {
        "name": labels.VERSION,
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": spec.description,
                "required": ["spec"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": spec_schema,
                    "status": status_schema,
                },
            }
        },
        "subresources": subresources,
    }
    if spec.printer_columns:
        version["additionalPrinterColumns"] = spec.printer_columns
    names: dict[str, Any] = {
        "kind": spec.kind,
        "listKind": f"{spec.kind}List",
        "plural": spec.plural,
        "singular": spec.singular,
    }
    if spec.short_names:
        names["shortNames"] = spec.short_names
    if spec.categories:
        names["categories"] = spec.categories
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{spec.plural}.{labels.GROUP}"},
        "spec": {
            "group": labels.GROUP,
            "scope": "Namespaced" if spec.namespaced else "Cluster",
            "names": names,
            "versions": [version],
        },
    }


def render(crd: dict[str, Any]) -> str:
    """YAML text of one CRD, stable across runs (a test compares it byte for byte)."""
    return yaml.safe_dump(crd, sort_keys=False, width=100)
