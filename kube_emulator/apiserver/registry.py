"""Which resources the emulated API server serves, by group, version and plural.

Built-in resources are registered at start; a CustomResourceDefinition (re)registers every
served version of its resource when it is created or updated, and a removed CRD takes all
of them away. Lookups of something not served raise 404 NotFound worded like kube-apiserver.
"""

from __future__ import annotations

from typing import Any

from kube_emulator.apiserver import errors
from kube_emulator.apiserver.resources import ResourceInfo, resources_from_crd

StorageKey = tuple[str, str]


class ResourceRegistry:
    """Served resources; callers serialise writes (the store holds its lock)."""

    def __init__(self, builtin: tuple[ResourceInfo, ...] = ()) -> None:
        self._served: dict[tuple[str, str, str], ResourceInfo] = {}
        for info in builtin:
            self.register(info)

    def register(self, info: ResourceInfo) -> None:
        """Serve ``info`` (replacing an earlier description of the same group/version/plural)."""
        self._served[(info.group, info.version, info.plural)] = info

    def drop(self, group: str, plural: str) -> None:
        """Stop serving every version of ``plural.group``."""
        for key in [k for k in self._served if (k[0], k[2]) == (group, plural)]:
            del self._served[key]

    def serve_crd(self, crd: dict[str, Any]) -> None:
        """Serve exactly the versions a CRD marks as served (after a create or update)."""
        spec = crd["spec"]
        self.drop(spec["group"], spec["names"]["plural"])
        for info in resources_from_crd(crd):
            self.register(info)

    def resources(self) -> list[ResourceInfo]:
        """Every served resource."""
        return list(self._served.values())

    def resource(self, group: str, version: str, plural: str) -> ResourceInfo:
        """The served resource, or 404 NotFound."""
        info = self._served.get((group, version, plural))
        if info is None:
            raise errors.ApiError(
                404, "NotFound", f"the server could not find the requested resource "
                                 f"({plural}.{group or 'core'}/{version})")
        return info

    def info_for(self, key: StorageKey) -> ResourceInfo | None:
        """Some served version of a stored resource (None once it is not served)."""
        return next((i for i in list(self._served.values()) if i.storage_key == key), None)
