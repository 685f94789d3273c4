"""What ``elastic-operator local apply/get/delete`` do, the way a kubectl user expects.

Kinds are resolved through the API server's discovery (so ``ej``, ``elasticjob``,
``elasticjobs``, ``po``, ``pods`` all work, and a CRD's printer columns show in ``get``);
``apply`` creates or merge-patches every document of a (multi-document) YAML file and is
all-or-nothing: when the server refuses one object (e.g. 422 Invalid naming the field), the
objects it created earlier in the same call are deleted again, so an invalid file leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

from elastic_operator.api.kube import (
    TERMINAL_PHASES,
    QuantityError,
    gpu_quantity,
    parse_time,
    pod_gpu_request,
)
from kube_emulator.client import ApiClient, ApiError, resource_path

Obj = dict[str, Any]


class UsageError(Exception):
    """A mistake in what the user asked (unknown kind, bad file); the message says the fix."""


@dataclass(frozen=True)
class Kind:
    """A resource as discovery describes it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    aliases: frozenset[str]

    def path(self, namespace: str | None, name: str | None = None) -> str:
        """REST path of the collection (or object) in ``namespace`` (None: all namespaces)."""
        return resource_path(self.plural, namespace if self.namespaced else None, name,
                             group=self.group, version=self.version)

    @property
    def qualified(self) -> str:
        """``elasticjob.elastic.dev`` / ``pod``, as kubectl names objects in messages."""
        singular = self.kind.lower()
        return f"{singular}.{self.group}" if self.group else singular


async def discover(client: ApiClient) -> list[Kind]:
    """Every top-level resource the server serves (subresources left out)."""
    lists = [("", "v1", await client.get("/api/v1"))]
    for group in (await client.get("/apis")).get("groups") or ():
        version = group["preferredVersion"]["version"]
        lists.append((group["name"], version,
                      await client.get(f"/apis/{group['name']}/{version}")))
    kinds = []
    for group, version, listing in lists:
        for res in listing.get("resources") or ():
            if "/" in res["name"]:
                continue
            aliases = {res["name"], res.get("singularName") or "", res["kind"].lower(),
                       *(res.get("shortNames") or ())}
            if group:
                aliases |= {f"{a}.{group}" for a in list(aliases) if a}
            kinds.append(Kind(group, version, res["name"], res["kind"], res["namespaced"],
                              frozenset(a for a in aliases if a)))
    return kinds


def resolve(kinds: Iterable[Kind], name: str) -> Kind:
    """The kind a user means by ``name`` (plural, singular, short name, or Kind); the core
    group wins a tie (``events`` means core/v1 events, as with kubectl)."""
    wanted = name.lower()
    matches = [k for k in kinds if wanted in k.aliases]
    if not matches:
        known = sorted({min(k.aliases, key=len) for k in kinds})
        raise UsageError(f'the server doesn\'t have a resource type "{name}" '
                         f"(known: {', '.join(known)})")
    return sorted(matches, key=lambda k: (k.group != "", k.group))[0]


def by_api_version(kinds: Iterable[Kind], api_version: str, kind: str) -> Kind:
    """The resource of a manifest's apiVersion and kind."""
    group, _, version = api_version.rpartition("/")
    for k in kinds:
        if k.group == group and k.version == version and k.kind == kind:
            return k
    raise UsageError(f'no matches for kind "{kind}" in version "{api_version}": is the CRD '
                     "installed? (`elastic-operator local up` installs the project's CRDs)")


def load_manifests(text: str, source: str) -> list[Obj]:
    """The non-empty YAML documents of a file, each checked to have apiVersion, kind and
    metadata.name (or generateName)."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: not valid YAML: {exc}") from None
    for index, doc in enumerate(docs):
        where = f"{source}, document {index + 1}"
        if not isinstance(doc, dict):
            raise UsageError(f"{where}: expected a mapping (an object), got {type(doc).__name__}")
        for key in ("apiVersion", "kind"):
            if not doc.get(key):
                raise UsageError(f"{where}: {key} is missing; every object needs apiVersion and "
                                 "kind")
        meta = doc.get("metadata") or {}
        if not (meta.get("name") or meta.get("generateName")):
            raise UsageError(f"{where}: metadata.name is missing")
    return docs


async def apply(client: ApiClient, docs: list[Obj], namespace: str) -> list[str]:
    """Create or update every document; returns kubectl-style lines (``x created``).

    Every object is first sent with ``dryRun=All`` (and, like kubectl, strict field
    validation, so a misspelt field is an error naming it); only when the server accepts all
    of them are they written. Should a write still be refused (a race), what this call
    created is deleted again before the ApiError propagates.
    """
    kinds = await discover(client)
    plan: list[tuple[Kind, str | None, Obj, Obj | None]] = []
    for doc in docs:
        kind = by_api_version(kinds, doc["apiVersion"], doc["kind"])
        meta = doc.setdefault("metadata", {})
        ns = meta.setdefault("namespace", namespace) if kind.namespaced else None
        current = None
        if meta.get("name"):
            try:
                current = await client.get(kind.path(ns, meta["name"]))
            except ApiError as exc:
                if exc.code != 404:
                    raise
        plan.append((kind, ns, doc, current))
    for dry_run in (True, False):
        lines = await _write(client, plan, dry_run)
    return lines


async def _write(client: ApiClient, plan: list[tuple[Kind, str | None, Obj, Obj | None]],
                 dry_run: bool) -> list[str]:
    params = {"fieldValidation": "Strict", **({"dryRun": "All"} if dry_run else {})}
    created: list[str] = []
    lines = []
    try:
        for kind, ns, doc, current in plan:
            if current is None:
                obj = await client.create(kind.path(ns), doc, **params)
                if not dry_run:
                    created.append(kind.path(ns, obj["metadata"]["name"]))
                lines.append(f"{kind.qualified}/{obj['metadata'].get('name')} created")
                continue
            name = doc["metadata"]["name"]
            patch = {k: v for k, v in doc.items() if k != "status"}
            updated = await client.patch(kind.path(ns, name), patch, **params)
            same = updated["metadata"].get("resourceVersion") == \
                current["metadata"].get("resourceVersion")
            lines.append(f"{kind.qualified}/{name} {'unchanged' if same else 'configured'}")
    except ApiError:
        for path in reversed(created):
            try:
                await client.delete(path, gracePeriodSeconds=0)
            except ApiError as exc:
                if exc.code != 404:
                    raise
        raise
    return lines


# ----- tables ---------------------------------------------------------------------------
def age(stamp: str | None, now: datetime | None = None) -> str:
    """kubectl's short age (``45s``, ``3m``, ``2h``, ``4d``) of an RFC 3339 timestamp."""
    then = parse_time(stamp)
    if then is None:
        return "<unknown>"
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "d" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def render_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns left-aligned and separated by three spaces, as kubectl prints them."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["   ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def pod_status(pod: Obj) -> str:
    """The STATUS column of ``kubectl get pods``."""
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or ():
        state = cs.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason") not in (None,
                                                                          "ContainerCreating"):
            return str(state["waiting"]["reason"])
        if "terminated" in state and status.get("phase") in TERMINAL_PHASES:
            return str(state["terminated"].get("reason") or status.get("phase"))
    if status.get("phase") == "Pending" and (pod.get("spec") or {}).get("nodeName"):
        return "ContainerCreating"
    return str(status.get("phase") or "Pending")


def pods_table(pods: list[Obj], wide: bool) -> tuple[list[str], list[list[str]]]:
    header = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] + (["IP", "NODE"] if wide else [])
    rows = []
    for pod in pods:
        statuses = (pod.get("status") or {}).get("containerStatuses") or ()
        total = len((pod.get("spec") or {}).get("containers") or ())
        ready = sum(1 for s in statuses if s.get("ready"))
        row = [pod["metadata"]["name"], f"{ready}/{total}", pod_status(pod),
               str(sum(int(s.get("restartCount") or 0) for s in statuses)),
               age(pod["metadata"].get("creationTimestamp"))]
        if wide:
            row += [(pod.get("status") or {}).get("podIP") or "<none>",
                    (pod.get("spec") or {}).get("nodeName") or "<none>"]
        rows.append(row)
    return header, rows


def nodes_table(nodes: list[Obj], pods: list[Obj], resource: str
                ) -> tuple[list[str], list[list[str]]]:
    """``get nodes``: each node's state and GPUs in use of allocatable, counted as the
    autoscaler counts them (:mod:`elastic_operator.api.kube`): a pod bound to the node and not
    finished holds its request, a terminating one too until it is gone."""
    used: dict[str, int] = {}
    for pod in pods:
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            continue
        with contextlib.suppress(QuantityError):  # the autoscaler counts such a pod as 0 too
            used[node] = used.get(node, 0) + pod_gpu_request(spec, resource)
    rows = []
    for node in nodes:
        name = node["metadata"]["name"]
        status = node.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or ())
        state = "Ready" if ready else "NotReady"
        if (node.get("spec") or {}).get("unschedulable"):
            state += ",SchedulingDisabled"
        try:
            alloc = str(gpu_quantity((status.get("allocatable") or {}).get(resource, 0),
                                     f"node {name} status.allocatable[{resource}]"))
        except QuantityError:
            alloc = "?"
        rows.append([name, state, f"{used.get(name, 0)}/{alloc}",
                     age(node["metadata"].get("creationTimestamp"))])
    return ["NAME", "STATUS", "GPUS(USED/ALLOC)", "AGE"], rows


def events_table(events: list[Obj]) -> tuple[list[str], list[list[str]]]:
    def stamp(e: Obj) -> str:
        return str(e.get("lastTimestamp") or e.get("eventTime") or
                   e["metadata"].get("creationTimestamp") or "")
    rows = []
    for event in sorted(events, key=stamp):
        obj = event.get("involvedObject") or {}
        rows.append([age(stamp(event)[:19] + "Z" if stamp(event) else None),
                     event.get("type", ""), event.get("reason", ""),
                     f"{str(obj.get('kind', '')).lower()}/{obj.get('name', '')}",
                     str(event.get("message", "")).replace("\n", " ")])
    return ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], rows


def json_path(obj: Obj, path: str) -> Any:
    """A printer column's simple JSONPath (``.status.phase``)."""
    current: Any = obj
    for part in path.strip(".").split("."):
        if not isinstance(current, dict):
            return None
        current = current.get(part)
    return current


async def custom_table(client: ApiClient, kind: Kind, items: list[Obj]
                       ) -> tuple[list[str], list[list[str]]]:
    """NAME plus the CRD's additionalPrinterColumns (AGE for other kinds)."""
    columns: list[Obj] = []
    if kind.group:
        try:
            crd = await client.get(resource_path(
                "customresourcedefinitions", name=f"{kind.plural}.{kind.group}",
                group="apiextensions.k8s.io"))
            for version in crd["spec"]["versions"]:
                if version["name"] == kind.version:
                    columns = list(version.get("additionalPrinterColumns") or ())
        except ApiError as exc:
            if exc.code != 404:
                raise
    if not columns:
        columns = [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    header = ["NAME"] + [c["name"].upper() for c in columns]
    rows = []
    for item in items:
        row = [item["metadata"]["name"]]
        for col in columns:
            value = json_path(item, col["jsonPath"])
            if col.get("type") == "date":
                row.append(age(value) if value else "<unknown>")
            else:
                row.append("<none>" if value is None else str(value))
        rows.append(row)
    return header, rows
