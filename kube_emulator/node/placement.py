"""Where a pod may run: the embedded scheduler's pure decision.

:func:`place` takes one pod, the nodes, and what the pods already bound to each node request,
and returns the chosen node or why none fits, worded the way kube-scheduler words a
``FailedScheduling`` event (``0/2 nodes are available: 2 Insufficient nvidia.com/gpu.``).
No API calls here, so every rule is a table-driven unit test.

The rules are the subset of kube-scheduler's filters that decide placement on an emulated GPU
cluster: the node is Ready and not cordoned, the pod tolerates the node's NoSchedule/NoExecute
taints, the pod's ``nodeSelector`` matches the node's labels, and the node has enough free
allocatable units of every *counted* resource (by default only the GPU resource: CPU and memory
of emulated nodes are not modelled, so they never make a pod wait). Among the fitting nodes the
one with the fewest free GPUs after placement wins (bin-packing keeps whole nodes free for
larger pods), ties broken by name so the choice is deterministic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
# The default counted resource, NVIDIA's device-plugin name; a cluster passes its own.
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
TERMINAL_PHASES = ("Succeeded", "Failed")
_SCHEDULING_EFFECTS = ("NoSchedule", "NoExecute")


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity (``2``, ``"500m"``, ``"1Gi"``) as a number of units.

    Raises ValueError naming the value when it is not a quantity.
    """
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)], suffixes[suffix]
            break
    else:
        number, scale = text, 1.0
    try:
        return float(number) * scale
    except ValueError:
        raise ValueError(f"quantity {value!r} is not a Kubernetes quantity "
                         "(use e.g. 1, 500m, 2Gi)") from None


def pod_requests(pod: Obj, resources: Iterable[str]) -> dict[str, float]:
    """What the pod's containers request of each resource (a limit without a request counts
    as the request, as Kubernetes defaults it; extended resources like GPUs are usually given
    only as limits). Init containers run one at a time, so the pod needs their maximum."""
    spec = pod.get("spec") or {}
    wanted = list(resources)

    def container_amount(container: Obj, name: str) -> float:
        res = container.get("resources") or {}
        amount = (res.get("requests") or {}).get(name, (res.get("limits") or {}).get(name, 0))
        return parse_quantity(amount)

    totals: dict[str, float] = {}
    for name in wanted:
        regular = sum(container_amount(c, name) for c in spec.get("containers") or ())
        init = max((container_amount(c, name) for c in spec.get("initContainers") or ()),
                   default=0.0)
        totals[name] = max(regular, init)
    return totals


@dataclass(frozen=True)
class NodeView:
    """The facts placement needs about one node."""

    name: str
    allocatable: Mapping[str, float]
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, str], ...] = ()
    unschedulable: bool = False
    ready: bool = True

    @classmethod
    def from_node(cls, node: Obj, resources: Iterable[str]) -> NodeView:
        """Read a Node object; a resource missing from ``status.allocatable`` counts as 0."""
        meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, \
            node.get("status") or {}
        allocatable = status.get("allocatable") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or ())
        return cls(
            name=meta["name"],
            allocatable={r: parse_quantity(allocatable.get(r, 0)) for r in resources},
            labels=dict(meta.get("labels") or {}),
            taints=tuple(spec.get("taints") or ()),
            unschedulable=bool(spec.get("unschedulable")),
            ready=ready,
        )


@dataclass(frozen=True)
class Placement:
    """The decision for one pod: ``node`` is None when no node fits, and ``message`` says why."""

    node: str | None
    message: str


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, str]) -> bool:
    """Whether one of the pod's tolerations tolerates the taint (Kubernetes' matching rules:
    an empty key with Exists tolerates everything; an empty effect matches every effect).

    The operator's autoscaler has its own copy of this rule; this one is kept apart on
    purpose: the emulator is the independent oracle the operator is judged by, so a mistake
    in the product's copy shows up as a disagreement instead of being shared."""
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        operator = tol.get("operator", "Equal")
        if not tol.get("key"):
            if operator == "Exists":
                return True
            continue
        if tol["key"] != taint.get("key"):
            continue
        if operator == "Exists" or tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def _rejection(pod: Obj, node: NodeView, need: Mapping[str, float],
               used: Mapping[str, float]) -> str | None:
    spec = pod.get("spec") or {}
    if not node.ready:
        return "node(s) were not ready"
    if node.unschedulable:
        return "node(s) were unschedulable"
    tolerations = spec.get("tolerations") or ()
    for taint in node.taints:
        if taint.get("effect") in _SCHEDULING_EFFECTS and not tolerates(tolerations, taint):
            return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
    selector = spec.get("nodeSelector") or {}
    if any(node.labels.get(k) != v for k, v in selector.items()):
        return "node(s) didn't match Pod's node affinity/selector"
    for resource, amount in need.items():
        if amount and used.get(resource, 0.0) + amount > node.allocatable.get(resource, 0.0):
            return f"Insufficient {resource}"
    return None


def place(pod: Obj, nodes: Iterable[NodeView], used: Mapping[str, Mapping[str, float]],
          resources: Iterable[str] = (DEFAULT_GPU_RESOURCE,)) -> Placement:
    """Choose a node for ``pod``.

    ``used`` maps a node name to what the pods already bound there request (see
    :func:`node_usage`). Guarantees: the chosen node passes every rule in the module docstring
    with the pod's requests added to its usage; when none does, ``message`` counts the nodes
    per reason in kube-scheduler's format and ``node`` is None.
    """
    resources = tuple(resources)
    primary = resources[0] if resources else DEFAULT_GPU_RESOURCE
    need = pod_requests(pod, resources)
    node_list = sorted(nodes, key=lambda n: n.name)
    reasons: Counter[str] = Counter()
    fitting: list[tuple[float, str]] = []
    for node in node_list:
        node_used = used.get(node.name, {})
        why = _rejection(pod, node, need, node_used)
        if why is not None:
            reasons[why] += 1
            continue
        free_after = (node.allocatable.get(primary, 0.0) - node_used.get(primary, 0.0)
                      - need.get(primary, 0.0))
        fitting.append((free_after, node.name))
    if fitting:
        return Placement(min(fitting)[1], "")
    if not node_list:
        return Placement(None, "0/0 nodes are available: no nodes available to schedule pods.")
    detail = ", ".join(f"{count} {why}" for why, count in sorted(reasons.items()))
    return Placement(None, f"0/{len(node_list)} nodes are available: {detail}.")


def node_usage(pods: Iterable[Obj], resources: Iterable[str] = (DEFAULT_GPU_RESOURCE,)
               ) -> dict[str, dict[str, float]]:
    """Per node, the sum of what its bound, unfinished pods request. A terminating pod still
    holds its resources until it is gone, as on a real node."""
    resources = tuple(resources)
    usage: dict[str, dict[str, float]] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            continue
        into = usage.setdefault(node, dict.fromkeys(resources, 0.0))
        for resource, amount in pod_requests(pod, resources).items():
            into[resource] += amount
    return usage


def scheduling_order(pods: Iterable[Obj]) -> list[Obj]:
    """Pending pods in the order they get a chance: higher ``spec.priority`` first, then the
    older one (by creationTimestamp, then name), as kube-scheduler's default queue sorts."""
    def key(pod: Obj) -> tuple[int, str, str, str]:
        meta = pod.get("metadata") or {}
        return (-int((pod.get("spec") or {}).get("priority") or 0),
                meta.get("creationTimestamp") or "", meta.get("namespace") or "",
                meta.get("name") or "")
    return sorted(pods, key=key)
