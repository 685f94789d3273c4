"""kube-apiserver's printers of the built-in kinds: the columns ``kubectl get`` shows.

One column list per resource, as kube-apiserver's ``pkg/printers/internalversion`` defines
them (pods: NAME READY STATUS RESTARTS AGE, with IP, NODE, NOMINATED NODE and READINESS GATES
under ``-o wide``; nodes; core and events.k8s.io events: LAST SEEN TYPE REASON OBJECT
MESSAGE; services; deployments: NAME READY UP-TO-DATE AVAILABLE AGE; persistent volume
claims; namespaces; secrets; config maps; service accounts; leases; CRDs), and
the age format every printer uses. :mod:`~kube_emulator.apiserver.tables` assembles them
into a Table. The pod STATUS column covers container states, init containers in progress and
Terminating, not every kubelet reason.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]
Column = tuple[str, str, str, int, Callable[[Obj], Any]]  # name, type, format, priority, cell
NONE = "<none>"


def human_duration(seconds: float) -> str:
    """Kubernetes' ``duration.HumanDuration``: ``45s``, ``3m20s``, ``5h12m``, ``12d``..."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        return f"{minutes}m" if whole % 60 == 0 else f"{minutes}m{whole % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d" if hours % 24 == 0 else f"{days}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    if hours < 24 * 365 * 8:
        return f"{days // 365}y" if days % 365 == 0 else f"{days // 365}y{days % 365}d"
    return f"{days // 365}y"


def age(timestamp: Any) -> str:
    """How long ago an RFC 3339 timestamp was (``<unknown>`` when unset, as kubectl)."""
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    return human_duration((datetime.now(UTC) - moment).total_seconds())


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _created(obj: Obj) -> str:
    return age(_meta(obj).get("creationTimestamp"))


NAME: Column = ("Name", "string", "name", 0, lambda o: _meta(o).get("name", ""))
AGE: Column = ("Age", "string", "", 0, _created)


def pod_status(pod: Obj) -> tuple[str, str, str]:
    """(READY, STATUS, RESTARTS) as kubectl's pod printer computes them."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    total = len(spec.get("containers") or ())
    reason = status.get("reason") or status.get("phase") or "Unknown"
    restarts, ready, last_restart = 0, 0, ""
    inits = spec.get("initContainers") or ()
    for n, init in enumerate(status.get("initContainerStatuses") or ()):
        restarts += int(init.get("restartCount") or 0)
        state = init.get("state") or {}
        done = state.get("terminated") or {}
        if done and done.get("exitCode") == 0:
            continue
        if done:
            reason = f"Init:{done.get('reason') or 'ExitCode:' + str(done.get('exitCode'))}"
        elif (state.get("waiting") or {}).get("reason") not in (None, "PodInitializing"):
            reason = f"Init:{state['waiting']['reason']}"
        else:
            reason = f"Init:{n}/{len(inits)}"
        break
    else:
        running = False
        for container in reversed(status.get("containerStatuses") or ()):
            restarts += int(container.get("restartCount") or 0)
            finished = ((container.get("lastState") or {}).get("terminated") or {}).get(
                "finishedAt") or ""
            last_restart = max(last_restart, finished)
            state = container.get("state") or {}
            waiting, done = state.get("waiting") or {}, state.get("terminated") or {}
            if waiting.get("reason"):
                reason = waiting["reason"]
            elif done.get("reason"):
                reason = done["reason"]
            elif done:
                reason = (f"Signal:{done['signal']}" if done.get("signal")
                          else f"ExitCode:{done.get('exitCode')}")
            elif container.get("ready") and "running" in state:
                running = True
                ready += 1
        if reason == "Completed" and running:
            ready_condition = any(c.get("type") == "Ready" and c.get("status") == "True"
                                  for c in status.get("conditions") or ())
            reason = "Running" if ready_condition else "NotReady"
    if _meta(pod).get("deletionTimestamp"):
        reason = "Terminating"
    count = str(restarts) + (f" ({age(last_restart)} ago)" if restarts and last_restart else "")
    return f"{ready}/{total}", reason, count


def _pod_columns() -> list[Column]:
    status: Callable[[Obj], tuple[str, str, str]] = pod_status
    return [NAME,
            ("Ready", "string", "", 0, lambda o: status(o)[0]),
            ("Status", "string", "", 0, lambda o: status(o)[1]),
            ("Restarts", "string", "", 0, lambda o: status(o)[2]),
            AGE,
            ("IP", "string", "", 1, lambda o: (o.get("status") or {}).get("podIP") or NONE),
            ("Node", "string", "", 1, lambda o: (o.get("spec") or {}).get("nodeName") or NONE),
            ("Nominated Node", "string", "", 1,
             lambda o: (o.get("status") or {}).get("nominatedNodeName") or NONE),
            ("Readiness Gates", "string", "", 1, lambda o: _gates(o))]


def _gates(pod: Obj) -> str:
    gates = (pod.get("spec") or {}).get("readinessGates") or ()
    if not gates:
        return NONE
    conditions = {c.get("type"): c.get("status") for c in
                  (pod.get("status") or {}).get("conditions") or ()}
    met = sum(1 for g in gates if conditions.get(g.get("conditionType")) == "True")
    return f"{met}/{len(gates)}"


def _node_status(node: Obj) -> str:
    ready = next((c.get("status") for c in (node.get("status") or {}).get("conditions") or ()
                  if c.get("type") == "Ready"), None)
    text = {"True": "Ready", "False": "NotReady"}.get(str(ready), "Unknown")
    return text + (",SchedulingDisabled" if (node.get("spec") or {}).get("unschedulable")
                   else "")


def _roles(node: Obj) -> str:
    labels = _meta(node).get("labels") or {}
    roles = sorted(k.partition("/")[2] for k in labels
                   if k.startswith("node-role.kubernetes.io/") and k.partition("/")[2])
    roles += sorted({v for k, v in labels.items() if k == "kubernetes.io/role" and v})
    return ",".join(roles) or NONE


def _address(node: Obj, kind: str) -> str:
    return next((a.get("address") for a in (node.get("status") or {}).get("addresses") or ()
                 if a.get("type") == kind), NONE)


def _node_info(field: str) -> Callable[[Obj], Any]:
    return lambda o: ((o.get("status") or {}).get("nodeInfo") or {}).get(field) or NONE


def _node_columns() -> list[Column]:
    return [NAME, ("Status", "string", "", 0, _node_status),
            ("Roles", "string", "", 0, _roles), AGE,
            ("Version", "string", "", 0, _node_info("kubeletVersion")),
            ("Internal-IP", "string", "", 1, lambda o: _address(o, "InternalIP")),
            ("External-IP", "string", "", 1, lambda o: _address(o, "ExternalIP")),
            ("OS-Image", "string", "", 1, _node_info("osImage")),
            ("Kernel-Version", "string", "", 1, _node_info("kernelVersion")),
            ("Container-Runtime", "string", "", 1, _node_info("containerRuntimeVersion"))]


def _event_view(event: Obj) -> Obj:
    """A core/v1 Event's printed fields, also for an events.k8s.io/v1 Event."""
    if "regarding" in event or "note" in event or "reportingController" in event:
        series = event.get("series") or {}
        return {"involvedObject": event.get("regarding") or {}, "message": event.get("note"),
                "source": {"component": event.get("reportingController")},
                "lastTimestamp": series.get("lastObservedTime") or event.get("eventTime")
                or event.get("deprecatedLastTimestamp"),
                "firstTimestamp": event.get("eventTime") or event.get(
                    "deprecatedFirstTimestamp"),
                "count": series.get("count") or event.get("deprecatedCount") or 1,
                "type": event.get("type"), "reason": event.get("reason"),
                "metadata": _meta(event)}
    return event


def _event_cell(field: str) -> Callable[[Obj], Any]:
    def cell(event: Obj) -> Any:
        view = _event_view(event)
        involved = view.get("involvedObject") or {}
        if field == "last":
            return age(view.get("lastTimestamp") or view.get("eventTime")
                       or _meta(view).get("creationTimestamp"))
        if field == "first":
            return age(view.get("firstTimestamp") or view.get("eventTime")
                       or _meta(view).get("creationTimestamp"))
        if field == "object":
            return f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"
        if field == "subobject":
            return involved.get("fieldPath") or ""
        if field == "source":
            source = view.get("source") or {}
            parts = [source.get("component"), source.get("host")]
            return ", ".join(p for p in parts if p) or view.get("reportingComponent") or ""
        if field == "count":
            return int(view.get("count") or 1)
        return view.get(field) or ""
    return cell


def _event_columns() -> list[Column]:
    return [("Last Seen", "string", "", 0, _event_cell("last")),
            ("Type", "string", "", 0, _event_cell("type")),
            ("Reason", "string", "", 0, _event_cell("reason")),
            ("Object", "string", "", 0, _event_cell("object")),
            ("Subobject", "string", "", 1, _event_cell("subobject")),
            ("Source", "string", "", 1, _event_cell("source")),
            ("Message", "string", "", 0, _event_cell("message")),
            ("First Seen", "string", "", 1, _event_cell("first")),
            ("Count", "integer", "", 1, _event_cell("count")),
            ("Name", "string", "name", 1, NAME[4])]


def _ports(service: Obj) -> str:
    out = []
    for port in (service.get("spec") or {}).get("ports") or ():
        node = f":{port['nodePort']}" if port.get("nodePort") else ""
        out.append(f"{port.get('port')}{node}/{port.get('protocol') or 'TCP'}")
    return ",".join(out) or NONE


def _external_ips(service: Obj) -> str:
    spec = service.get("spec") or {}
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ()
    ips = list(spec.get("externalIPs") or ()) + [i.get("ip") or i.get("hostname")
                                                  for i in ingress]
    if spec.get("type") == "ExternalName":
        return spec.get("externalName") or NONE
    if spec.get("type") == "LoadBalancer" and not ips:
        return "<pending>"
    return ",".join(str(i) for i in ips if i) or NONE


def _service_columns() -> list[Column]:
    def spec(field: str) -> Callable[[Obj], Any]:
        return lambda o: (o.get("spec") or {}).get(field) or NONE
    return [NAME, ("Type", "string", "", 0, spec("type")),
            ("Cluster-IP", "string", "", 0, spec("clusterIP")),
            ("External-IP", "string", "", 0, _external_ips),
            ("Port(s)", "string", "", 0, _ports), AGE,
            ("Selector", "string", "", 1, lambda o: ",".join(
                f"{k}={v}" for k, v in sorted(((o.get("spec") or {}).get("selector")
                                               or {}).items())) or NONE)]


def _deployment_columns() -> list[Column]:
    def status(field: str) -> Callable[[Obj], int]:
        return lambda o: int((o.get("status") or {}).get(field) or 0)

    def containers(field: str) -> Callable[[Obj], str]:
        return lambda o: ",".join(str(c.get(field, "")) for c in (
            ((o.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
            "containers") or ())
    return [NAME, ("Ready", "string", "", 0, lambda o: f"{status('readyReplicas')(o)}/"
                   f"{int((o.get('spec') or {}).get('replicas') or 0)}"),
            ("Up-to-date", "integer", "", 0, status("updatedReplicas")),
            ("Available", "integer", "", 0, status("availableReplicas")), AGE,
            ("Containers", "string", "", 1, containers("name")),
            ("Images", "string", "", 1, containers("image")),
            ("Selector", "string", "", 1, lambda o: ",".join(
                f"{k}={v}" for k, v in sorted((((o.get("spec") or {}).get("selector") or {})
                                               .get("matchLabels") or {}).items())) or NONE)]


_ACCESS_MODES = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX",
                 "ReadWriteOncePod": "RWOP"}


def _claim_columns() -> list[Column]:
    def status(o: Obj) -> Obj:
        return o.get("status") or {}
    return [NAME, ("Status", "string", "", 0, lambda o: status(o).get("phase", "")),
            ("Volume", "string", "", 0, lambda o: (o.get("spec") or {}).get("volumeName", "")),
            ("Capacity", "string", "", 0,
             lambda o: (status(o).get("capacity") or {}).get("storage", "")),
            ("Access Modes", "string", "", 0, lambda o: ",".join(
                _ACCESS_MODES.get(m, m) for m in status(o).get("accessModes") or ())),
            ("StorageClass", "string", "", 0,
             lambda o: (o.get("spec") or {}).get("storageClassName") or NONE),
            ("VolumeAttributesClass", "string", "", 0,
             lambda o: (o.get("spec") or {}).get("volumeAttributesClassName") or NONE), AGE,
            ("VolumeMode", "string", "", 1,
             lambda o: (o.get("spec") or {}).get("volumeMode", ""))]


def _count(field: str) -> Callable[[Obj], int]:
    return lambda o: len(o.get(field) or {}) + (len(o.get("binaryData") or {})
                                               if field == "data" else 0)


BUILTIN_COLUMNS: dict[tuple[str, str], Callable[[], list[Column]]] = {
    ("", "pods"): _pod_columns,
    ("", "nodes"): _node_columns,
    ("", "events"): _event_columns,
    ("events.k8s.io", "events"): _event_columns,
    ("", "services"): _service_columns,
    ("apps", "deployments"): _deployment_columns,
    ("", "persistentvolumeclaims"): _claim_columns,
    ("", "namespaces"): lambda: [NAME, ("Status", "string", "", 0,
                                        lambda o: (o.get("status") or {}).get("phase", "")),
                                 AGE],
    ("", "secrets"): lambda: [NAME, ("Type", "string", "", 0, lambda o: o.get("type", "")),
                              ("Data", "integer", "", 0, _count("data")), AGE],
    ("", "configmaps"): lambda: [NAME, ("Data", "integer", "", 0, _count("data")), AGE],
    ("", "serviceaccounts"): lambda: [NAME, ("Secrets", "integer", "", 0,
                                             lambda o: len(o.get("secrets") or ())), AGE],
    ("coordination.k8s.io", "leases"): lambda: [
        NAME, ("Holder", "string", "", 0,
               lambda o: (o.get("spec") or {}).get("holderIdentity") or ""), AGE],
    ("apiextensions.k8s.io", "customresourcedefinitions"): lambda: [
        NAME, ("Created At", "date", "", 0,
               lambda o: _meta(o).get("creationTimestamp") or "")],
}
