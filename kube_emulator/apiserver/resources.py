"""What the emulated API server serves: resource descriptions and API discovery documents.

A :class:`ResourceInfo` is one (group, version, plural) with the facts discovery publishes
(kind, scope, verbs, short names, subresources) and the facts the store needs (status and
scale subresources, the OpenAPI schema of custom resources, extra field-selector fields).
Built-in resources are listed in :data:`BUILTIN_RESOURCES`; custom resources come from a
CustomResourceDefinition through :func:`resources_from_crd`, one per served version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUB_VERBS = ("get", "patch", "update")


@dataclass(frozen=True)
class ScaleSpec:
    """Where a scale subresource reads and writes (JSON paths like ``.spec.replicas``)."""

    spec_replicas_path: str
    status_replicas_path: str
    label_selector_path: str | None = None


@dataclass(frozen=True)
class ResourceInfo:
    """One served resource at one group/version."""

    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    status: bool = False
    scale: ScaleSpec | None = None
    schema: dict[str, Any] | None = None
    field_selectors: tuple[str, ...] = ()
    extra_subresources: tuple[str, ...] = ()  # e.g. pods/log, pods/binding
    printer_columns: tuple[dict[str, Any], ...] = ()  # a CRD's additionalPrinterColumns

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, ``group/version`` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> tuple[str, str]:
        """Objects are stored once per (group, plural), whatever version serves them."""
        return (self.group, self.plural)

    @property
    def qualified(self) -> str:
        """``plural.group`` as Kubernetes names resources in messages (``pods`` for core)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def kind_qualified(self) -> str:
        """``Kind.group`` as used in 422 Invalid messages (``Pod`` for core)."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def selectable_fields(self) -> tuple[str, ...]:
        """Fields a field selector may use on this resource."""
        base = ("metadata.name",) + (("metadata.namespace",) if self.namespaced else ())
        return base + self.field_selectors

    def discovery_entries(self) -> list[dict[str, Any]]:
        """The APIResource entries of this resource and its subresources."""
        main: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        entries = [main]
        if self.status:
            entries.append(self._sub("status", self.kind, SUB_VERBS))
        if self.scale is not None:
            scale = self._sub("scale", "Scale", SUB_VERBS)
            scale.update(group="autoscaling", version="v1")
            entries.append(scale)
        for extra in self.extra_subresources:
            verbs = {"binding": ("create",), "eviction": ("create",),
                     "exec": ("create", "get")}.get(extra, ("get",))
            kind = {"binding": "Binding", "eviction": "Eviction",
                    "exec": "PodExecOptions"}.get(extra, self.kind)
            entries.append(self._sub(extra, kind, verbs))
        return entries

    def _sub(self, name: str, kind: str, verbs: tuple[str, ...]) -> dict[str, Any]:
        return {"name": f"{self.plural}/{name}", "singularName": "",
                "namespaced": self.namespaced, "kind": kind, "verbs": list(verbs)}


def _core(plural: str, kind: str, namespaced: bool = True, **extra: Any) -> ResourceInfo:
    return ResourceInfo("", "v1", plural, kind.lower(), kind, namespaced, **extra)


BUILTIN_RESOURCES: tuple[ResourceInfo, ...] = (
    _core("namespaces", "Namespace", False, short_names=("ns",), status=True,
          verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
          field_selectors=("status.phase",)),
    _core("pods", "Pod", short_names=("po",), categories=("all",), status=True,
          field_selectors=("spec.nodeName", "status.phase", "spec.schedulerName"),
          extra_subresources=("binding", "eviction", "exec", "log")),
    _core("services", "Service", short_names=("svc",), categories=("all",), status=True,
          verbs=("create", "delete", "deletecollection", "get", "list", "patch", "update",
                 "watch")),
    _core("events", "Event", short_names=("ev",),
          field_selectors=("involvedObject.kind", "involvedObject.name",
                           "involvedObject.namespace", "involvedObject.uid", "reason", "type")),
    _core("nodes", "Node", False, short_names=("no",), status=True,
          field_selectors=("spec.unschedulable",)),
    _core("persistentvolumeclaims", "PersistentVolumeClaim", short_names=("pvc",),
          status=True),
    _core("secrets", "Secret", field_selectors=("type",)),
    _core("configmaps", "ConfigMap", short_names=("cm",)),
    _core("serviceaccounts", "ServiceAccount", short_names=("sa",)),
    ResourceInfo("events.k8s.io", "v1", "events", "event", "Event", True, short_names=("ev",),
                 field_selectors=("regarding.kind", "regarding.name", "reason", "type")),
    ResourceInfo("coordination.k8s.io", "v1", "leases", "lease", "Lease", True),
    ResourceInfo("apps", "v1", "deployments", "deployment", "Deployment", True,
                 short_names=("deploy",), categories=("all",), status=True,
                 scale=ScaleSpec(".spec.replicas", ".status.replicas")),
    ResourceInfo("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                 "customresourcedefinition", "CustomResourceDefinition", False,
                 short_names=("crd", "crds"), categories=("api-extensions",), status=True),
)

CRD_KEY = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACE_KEY = ("", "namespaces")
POD_KEY = ("", "pods")
PVC_KEY = ("", "persistentvolumeclaims")
DEPLOYMENT_KEY = ("apps", "deployments")
SERVICE_KEY = ("", "services")


def resources_from_crd(crd: dict[str, Any]) -> list[ResourceInfo]:
    """The resources a CustomResourceDefinition serves, one per served version."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    out: list[ResourceInfo] = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        scale = subresources.get("scale")
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        out.append(ResourceInfo(
            group=spec["group"],
            version=version["name"],
            plural=names["plural"],
            singular=names.get("singular") or names["kind"].lower(),
            kind=names["kind"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            status="status" in subresources,
            scale=ScaleSpec(scale["specReplicasPath"], scale["statusReplicasPath"],
                            scale.get("labelSelectorPath")) if scale is not None else None,
            schema=schema,
            printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
        ))
    return out


def validate_crd(crd: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) problems that make kube-apiserver refuse a CRD; empty when fine."""
    problems: list[tuple[str, str]] = []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    for key in ("group", "names", "scope", "versions"):
        if not spec.get(key):
            problems.append((f"spec.{key}", "Required value"))
    for key in ("plural", "kind"):
        if not names.get(key):
            problems.append((f"spec.names.{key}", "Required value"))
    if spec.get("scope") not in (None, "Namespaced", "Cluster"):
        problems.append(("spec.scope", f'Unsupported value: "{spec.get("scope")}": supported '
                                       'values: "Cluster", "Namespaced"'))
    expected = f"{names.get('plural')}.{spec.get('group')}"
    name = (crd.get("metadata") or {}).get("name")
    if names.get("plural") and spec.get("group") and name != expected:
        problems.append(("metadata.name", f'Invalid value: "{name}": must be spec.names.plural'
                                          f'+"."+spec.group'))
    versions = spec.get("versions") or []
    if versions and sum(1 for v in versions if v.get("storage")) != 1:
        problems.append(("spec.versions", "Invalid value: must have exactly one version marked"
                                          " as storage version"))
    return problems
