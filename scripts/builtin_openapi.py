"""Write ``kube_emulator/apiserver/builtin_schemas.json``: the OpenAPI schemas of the built-in
kinds the emulator serves, for ``/openapi/v2`` and ``/openapi/v3``.

Run it after changing the list of served built-in kinds (``.venv/bin/python
scripts/builtin_openapi.py``). The schemas come from the models of the ``kubernetes_asyncio``
client (a test dependency), which are generated from kube-apiserver's own OpenAPI document:
field names, types, descriptions and required fields. What the models do not carry (Kubernetes'
patch strategies and list types, formats such as int-or-string) is absent, so the emulator's
documents are a faithful subset, not a copy. The emulator only reads the JSON file: it needs
no Kubernetes client at run time.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import models

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "kube_emulator" / "apiserver" / "builtin_schemas.json"

# (group, version, kind, model, package of the definitions first reached from it, description)
KINDS = [
    ("", "v1", "Pod", "V1Pod", "io.k8s.api.core.v1",
     "Pod is a collection of containers that can run on a host."),
    ("", "v1", "Service", "V1Service", "io.k8s.api.core.v1",
     "Service is a named abstraction of software service (for example, mysql) consisting of "
     "local port (for example 3306) that the proxy listens on, and the selector that "
     "determines which pods will answer requests sent through the proxy."),
    ("", "v1", "Secret", "V1Secret", "io.k8s.api.core.v1",
     "Secret holds secret data of a certain type."),
    ("", "v1", "ConfigMap", "V1ConfigMap", "io.k8s.api.core.v1",
     "ConfigMap holds configuration data for pods to consume."),
    ("", "v1", "Event", "CoreV1Event", "io.k8s.api.core.v1",
     "Event is a report of an event somewhere in the cluster."),
    ("", "v1", "Node", "V1Node", "io.k8s.api.core.v1",
     "Node is a worker node in Kubernetes."),
    ("", "v1", "Namespace", "V1Namespace", "io.k8s.api.core.v1",
     "Namespace provides a scope for Names."),
    ("", "v1", "ServiceAccount", "V1ServiceAccount", "io.k8s.api.core.v1",
     "ServiceAccount binds together a name, a principal that can be authenticated and a set "
     "of secrets."),
    ("", "v1", "Binding", "V1Binding", "io.k8s.api.core.v1",
     "Binding ties one object to another; for example, a pod is bound to a node by a "
     "scheduler."),
    ("", "v1", "PersistentVolumeClaim", "V1PersistentVolumeClaim", "io.k8s.api.core.v1",
     "PersistentVolumeClaim is a user's request for and claim to a persistent volume."),
    ("apps", "v1", "Deployment", "V1Deployment", "io.k8s.api.apps.v1",
     "Deployment enables declarative updates for Pods and ReplicaSets."),
    ("policy", "v1", "Eviction", "V1Eviction", "io.k8s.api.policy.v1",
     "Eviction evicts a pod from its node subject to certain policies and safety "
     "constraints."),
    ("events.k8s.io", "v1", "Event", "EventsV1Event", "io.k8s.api.events.v1",
     "Event is a report of an event somewhere in the cluster."),
    ("coordination.k8s.io", "v1", "Lease", "V1Lease", "io.k8s.api.coordination.v1",
     "Lease defines a lease concept."),
    ("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "V1CustomResourceDefinition",
     "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1",
     "CustomResourceDefinition represents a resource that should be exposed on the API "
     "server."),
    ("autoscaling", "v1", "Scale", "V1Scale", "io.k8s.api.autoscaling.v1",
     "Scale represents a scaling request for a resource."),
    ("", "v1", "Status", "V1Status", "io.k8s.apimachinery.pkg.apis.meta.v1",
     "Status is a return value for calls that don't return other objects."),
    ("", "v1", "DeleteOptions", "V1DeleteOptions", "io.k8s.apimachinery.pkg.apis.meta.v1",
     "DeleteOptions may be provided when deleting an API object."),
]
META = "io.k8s.apimachinery.pkg.apis.meta.v1"
META_TYPES = {"ObjectMeta", "ListMeta", "OwnerReference", "ManagedFieldsEntry", "LabelSelector",
              "LabelSelectorRequirement", "Status", "StatusDetails", "StatusCause",
              "DeleteOptions", "Preconditions", "Condition"}
_PREFIX = re.compile(r"^(CoreV1|EventsV1|ApiextensionsV1|V1)")
_SCALARS = {"str": {"type": "string"}, "int": {"type": "integer", "format": "int64"},
            "bool": {"type": "boolean"}, "float": {"type": "number", "format": "double"},
            "datetime": {"type": "string", "format": "date-time"},
            "date": {"type": "string", "format": "date"}, "object": {}}


def _short(model: str) -> str:
    return _PREFIX.sub("", model)


class Generator:
    def __init__(self) -> None:
        self.names: dict[str, str] = {}  # model -> definition name
        self.definitions: dict[str, dict[str, Any]] = {}

    def name(self, model: str, package: str) -> str:
        if model not in self.names:
            short = _short(model)
            self.names[model] = f"{META if short in META_TYPES else package}.{short}"
            self.definitions[self.names[model]] = self.schema(model, package)
        return self.names[model]

    def field(self, kind: str, package: str) -> dict[str, Any]:
        if kind in _SCALARS:
            return dict(_SCALARS[kind])
        if kind.startswith("list["):
            return {"type": "array", "items": self.field(kind[5:-1], package)}
        if kind.startswith("dict("):
            return {"type": "object",
                    "additionalProperties": self.field(kind.split(", ", 1)[1][:-1], package)}
        return {"$ref": self.name(kind, package)}

    def schema(self, model: str, package: str) -> dict[str, Any]:
        cls = getattr(models, model)
        props: dict[str, Any] = {}
        required: list[str] = []
        for attr, kind in cls.openapi_types.items():
            json_name = cls.attribute_map[attr]
            prop = self.field(kind, package)
            doc = inspect.getdoc(getattr(cls, attr).fget) or ""
            text = doc.split("\n\n")[1] if doc.count("\n\n") >= 2 else ""
            text = text.replace("# noqa: E501", "").strip()
            if text and not text.startswith(":return:"):
                prop = {"description": text, "allOf": [prop]} if "$ref" in prop else {
                    "description": text, **prop}
            props[json_name] = prop
            setter = inspect.getsource(getattr(cls, attr).fset)
            if f"`{attr}`, must not be `None`" in setter:
                required.append(json_name)
        out: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            out["required"] = required
        return out


def render() -> str:
    """The content of :data:`TARGET` for the installed ``kubernetes_asyncio`` models."""
    gen = Generator()
    kinds = {}
    for group, version, kind, model, package, description in KINDS:
        name = gen.name(model, package)
        gen.definitions[name]["description"] = description
        kinds[f"{group}/{version}/{kind}"] = name
        list_model = model + "List"
        if hasattr(models, list_model):
            list_name = gen.name(list_model, package)
            gen.definitions[list_name]["description"] = f"{kind}List is a list of {kind}s."
            kinds[f"{group}/{version}/{kind}List"] = list_name
    document = {"kinds": kinds, "definitions": dict(sorted(gen.definitions.items()))}
    return json.dumps(document, indent=None, separators=(",", ":"), sort_keys=True) + "\n"


def main() -> int:
    TARGET.write_text(render())
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
