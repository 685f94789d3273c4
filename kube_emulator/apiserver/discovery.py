"""API discovery documents, shaped as kube-apiserver serves them to kubectl, kopf and clients.

``/version`` (version.Info), ``/api`` (APIVersions), ``/apis`` (APIGroupList),
``/apis/{group}`` (APIGroup) and ``/api/v1`` or ``/apis/{group}/{version}`` (APIResourceList
with subresources such as ``pods/status`` or ``elasticjobs/scale``). Only the unaggregated
(v1) discovery format is served; kubectl falls back to it when aggregated discovery
(``as=APIGroupDiscoveryList``) is not offered.
"""

from __future__ import annotations

import re
from typing import Any

from kube_emulator.apiserver import errors
from kube_emulator.apiserver.resources import ResourceInfo

KUBERNETES_VERSION = ("1", "31")


def version_info() -> dict[str, Any]:
    """The ``/version`` document (a Kubernetes 1.31-compatible server)."""
    major, minor = KUBERNETES_VERSION
    return {
        "major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0-elastic-emulator",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.22.0", "compiler": "gc",
        "platform": "linux/amd64",
    }


def core_versions(server_address: str) -> dict[str, Any]:
    """The ``/api`` document."""
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": server_address}]}


def _group_versions(resources: list[ResourceInfo]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for info in resources:
        if info.group and info.version not in groups.setdefault(info.group, []):
            groups[info.group].append(info.version)
    return groups


def _version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes version priority: GA > beta > alpha, then higher numbers first."""
    match = re.match(r"^v(\d+)(?:(alpha|beta)(\d+))?$", version)
    if not match:
        return (-1, 0, 0)
    stability = {"alpha": 0, "beta": 1, None: 2}[match.group(2)]
    return (stability, int(match.group(1)), int(match.group(3) or 0))


def _group_doc(name: str, versions: list[str]) -> dict[str, Any]:
    ordered = sorted(versions, key=_version_priority, reverse=True)
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in ordered]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def group_list(resources: list[ResourceInfo]) -> dict[str, Any]:
    """The ``/apis`` document."""
    groups = _group_versions(resources)
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_group_doc(name, versions) for name, versions in sorted(groups.items())]}


def group(resources: list[ResourceInfo], name: str) -> dict[str, Any] | None:
    """The ``/apis/{group}`` document, or None for an unknown group."""
    versions = _group_versions(resources).get(name)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(name, versions)}


def resource_list(resources: list[ResourceInfo], group_name: str,
                  version: str) -> dict[str, Any] | None:
    """The APIResourceList of one group/version, or None when nothing is served there."""
    served = sorted((i for i in resources if (i.group, i.version) == (group_name, version)),
                    key=lambda i: i.plural)
    if not served:
        return None
    entries = [entry for info in served for entry in info.discovery_entries()]
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group_name}/{version}" if group_name else version,
            "resources": entries}


def document(path: str, resources: list[ResourceInfo], host: str) -> dict[str, Any] | None:
    """The discovery document at ``path`` (no trailing slash); None when ``path`` is not a
    discovery path; 404 NotFound for an unknown group or version."""
    if path == "/version":
        return version_info()
    if path == "/api":
        return core_versions(host)
    if path == "/apis":
        return group_list(resources)
    parts = path.strip("/").split("/")
    doc: dict[str, Any] | None
    if parts[0] == "api" and len(parts) == 2:
        doc = resource_list(resources, "", parts[1])
    elif parts[0] == "apis" and len(parts) == 2:
        doc = group(resources, parts[1])
    elif parts[0] == "apis" and len(parts) == 3:
        doc = resource_list(resources, parts[1], parts[2])
    else:
        return None
    if doc is None:
        raise errors.ApiError(404, "NotFound",
                                 f"the server could not find the requested resource ({path})")
    return doc
