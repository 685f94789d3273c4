"""Free GPUs per node, computed the way kube-scheduler would count them.

A node offers its allocatable GPU resource (``nvidia.com/gpu`` by default, configurable) when it
is schedulable: not cordoned (``spec.unschedulable``) and its ``Ready`` condition is ``True``.
A pod holds GPUs on a node from the moment it is bound (``spec.nodeName``) until it reaches
``Succeeded``/``Failed`` or is gone; a terminating pod (``deletionTimestamp``) still holds them,
as on a real node, but is reported separately as *releasing* so the policy can count on them.

Whether a job's workers may use a node (:func:`node_admits`) follows the scheduler's filters that
matter for GPU placement: NoSchedule/NoExecute taints against the template's tolerations, the
template's ``nodeSelector``, and the ``requiredDuringSchedulingIgnoredDuringExecution`` node
affinity terms (matchExpressions with In, NotIn, Exists, DoesNotExist, Gt, Lt; terms are ORed,
expressions ANDed). Preferred affinity, pod (anti-)affinity and topology spread are not
modelled: a pod they keep Pending is handled by the policy's unschedulable timeout.

:class:`CapacityCache` is fed one watch event at a time and keeps per-node usage incrementally,
so a decision never lists the cluster. It also keeps, per node, the least the node offered
since the previous decision (:meth:`CapacityCache.take_floor`, applied with
:meth:`CapacitySnapshot.lowered`): decisions are debounced and
periodic, so GPUs taken and freed again between two of them would otherwise go unseen, and the
growth window would count them as free the whole time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from elastic_operator.api.kube import (
    TERMINAL_PHASES,
    QuantityError,
    gpu_quantity,
    parse_epoch,
    pod_gpu_request,
    tolerates,
)
from elastic_operator.labels import DEFAULT_GPU_RESOURCE, JOB_NAME

Obj = Mapping[str, Any]
_BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


def _expression_matches(expr: Obj, node_labels: Mapping[str, str]) -> bool:
    key, operator = expr.get("key", ""), expr.get("operator", "")
    values = [str(v) for v in expr.get("values") or ()]
    present = key in node_labels
    value = node_labels.get(key, "")
    if operator == "In":
        return present and value in values
    if operator == "NotIn":
        return not present or value not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt"):
        try:
            have, want = int(value), int(values[0])
        except (ValueError, IndexError):
            return False
        return have > want if operator == "Gt" else have < want
    return False


def _affinity_matches(pod_spec: Obj, node_labels: Mapping[str, str]) -> bool:
    node_affinity = (pod_spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = required.get("nodeSelectorTerms") or ()
    if not terms:
        return True
    return any(
        all(_expression_matches(e, node_labels) for e in term.get("matchExpressions") or ())
        for term in terms
    )


@dataclass(frozen=True)
class NodeInfo:
    """What the autoscaler needs of one Node."""

    name: str
    gpus: int
    schedulable: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Obj, ...] = ()

    @classmethod
    def from_object(cls, node: Obj, resource: str = DEFAULT_GPU_RESOURCE) -> NodeInfo:
        """Read a Node; a malformed GPU quantity makes the node offer none (and never raises),
        because one odd node must not stop the autoscaler."""
        meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, \
            node.get("status") or {}
        try:
            gpus = gpu_quantity((status.get("allocatable") or {}).get(resource, 0),
                                f"node {meta.get('name')} allocatable")
        except QuantityError:
            gpus = 0
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or ())
        return cls(
            name=str(meta.get("name", "")),
            gpus=gpus,
            schedulable=ready and not spec.get("unschedulable"),
            labels=dict(meta.get("labels") or {}),
            taints=tuple(spec.get("taints") or ()),
        )


def placement_key(pod_spec: Obj) -> str:
    """The parts of a pod spec that :func:`node_admits` reads, as one string: specs with
    equal keys are admitted by the same nodes."""
    affinity = (pod_spec.get("affinity") or {}).get("nodeAffinity") or {}
    return json.dumps([pod_spec.get("tolerations") or (), pod_spec.get("nodeSelector") or {},
                       affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}],
                      sort_keys=True, default=str)


def node_admits(node: NodeInfo, pod_spec: Obj) -> bool:
    """Whether a pod with this spec may be scheduled onto the node (GPU fit aside)."""
    if not node.schedulable:
        return False
    tolerations = pod_spec.get("tolerations") or ()
    for taint in node.taints:
        if taint.get("effect") in _BLOCKING_EFFECTS and not tolerates(tolerations, taint):
            return False
    selector = pod_spec.get("nodeSelector") or {}
    if any(node.labels.get(k) != str(v) for k, v in selector.items()):
        return False
    return _affinity_matches(pod_spec, node.labels)


@dataclass(frozen=True)
class PodInfo:
    """What the autoscaler needs of one Pod: where it is, what it holds, and who owns it."""

    namespace: str
    name: str
    node: str | None
    gpus: int
    phase: str
    terminating: bool
    created: float
    labels: Mapping[str, str]
    priority: int
    spec: Obj
    # When the scheduler last said it cannot place the pod (PodScheduled=False, Unschedulable).
    unschedulable_since: float | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def holds_gpus(self) -> bool:
        """Bound, not finished, and requesting GPUs: it counts against its node."""
        return bool(self.node) and self.phase not in TERMINAL_PHASES and self.gpus > 0

    @property
    def pending(self) -> bool:
        """Waiting for a node: unbound, not finished, not being deleted."""
        return not self.node and self.phase not in TERMINAL_PHASES and not self.terminating

    @property
    def job(self) -> str | None:
        """``namespace/name`` of the ElasticJob this pod is a worker of, if any."""
        name = self.labels.get(JOB_NAME)
        return f"{self.namespace}/{name}" if name else None

    @classmethod
    def from_object(cls, pod: Obj, resource: str = DEFAULT_GPU_RESOURCE) -> PodInfo:
        """Read a Pod; a malformed GPU quantity counts as 0 (the API server rejects those)."""
        meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, \
            pod.get("status") or {}
        try:
            gpus = pod_gpu_request(spec, resource)
        except QuantityError:
            gpus = 0
        unschedulable_since = None
        for cond in status.get("conditions") or ():
            if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                    and cond.get("reason") == "Unschedulable"):
                unschedulable_since = parse_epoch(cond.get("lastTransitionTime"))
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            node=spec.get("nodeName") or None,
            gpus=gpus,
            phase=str(status.get("phase") or "Pending"),
            terminating=bool(meta.get("deletionTimestamp")),
            created=parse_epoch(meta.get("creationTimestamp")) or 0.0,
            labels=dict(meta.get("labels") or {}),
            priority=int(spec.get("priority") or 0),
            spec=spec,
            unschedulable_since=unschedulable_since,
        )


@dataclass(frozen=True)
class CapacitySnapshot:
    """Free and releasing GPUs per schedulable node at one moment.

    ``free[n]`` = allocatable - GPUs of every pod holding GPUs on ``n`` (never below 0: an
    over-committed node offers nothing). ``releasing[n]``: what becomes free in addition once
    the terminating pods on ``n`` are gone.
    """

    nodes: Mapping[str, NodeInfo]
    free: Mapping[str, int]
    releasing: Mapping[str, int]
    # Eligible nodes per placement_key: jobs mostly share a few templates' constraints, so a
    # decision tests each node once per distinct constraint, not once per job. Snapshots of
    # the same nodes may share it (CapacityCache does, until a node changes), so the sets,
    # and what the policy keys on them, carry over from one decision to the next.
    _eligible: dict[str, frozenset[str]] = field(default_factory=dict, compare=False,
                                                  repr=False)

    def eligible(self, pod_spec: Obj, key: str | None = None) -> frozenset[str]:
        """Schedulable nodes a pod with this spec may use (taints, selector, affinity);
        ``key`` is the spec's :func:`placement_key` when the caller keeps it."""
        key = placement_key(pod_spec) if key is None else key
        found = self._eligible.get(key)
        if found is None:
            found = frozenset(n.name for n in self.nodes.values() if node_admits(n, pod_spec))
            self._eligible[key] = found
        return found

    @property
    def total_free(self) -> int:
        return sum(self.free.values())

    def lowered(self, lowest: Mapping[str, int]) -> CapacitySnapshot:
        """This snapshot with each node's offer (free + releasing) capped at ``lowest[n]``
        (nodes not in it unchanged), free GPUs counted before releasing ones: the floor
        :meth:`CapacityCache.take_floor` describes."""
        free: dict[str, int] = {}
        releasing: dict[str, int] = {}
        for n in self.nodes:
            offer = self.free[n] + self.releasing[n]
            offer = min(offer, lowest.get(n, offer))
            free[n] = min(self.free[n], offer)
            releasing[n] = offer - free[n]
        return CapacitySnapshot(nodes=self.nodes, free=free, releasing=releasing,
                                _eligible=self._eligible)


class CapacityCache:
    """Nodes and GPU-holding pods, kept current from watch events.

    Guarantees: after any sequence of :meth:`apply_node`/:meth:`apply_pod` calls, the snapshot
    equals what :func:`compute_snapshot` gives for the latest version of every object seen, and
    ``by_job``/``waiting`` equal a regrouping of ``pods``. An event costs O(1) in the size of
    the cluster (usage per node and the groups are updated incrementally, so a snapshot costs
    O(nodes)). Only pods that ask for GPUs or belong to an ElasticJob are kept.
    ``snapshot().lowered(take_floor())`` never offers more on a node than any state the events
    passed through since the previous call.
    """

    def __init__(self, resource: str = DEFAULT_GPU_RESOURCE) -> None:
        self.resource = resource
        self.nodes: dict[str, NodeInfo] = {}
        self.pods: dict[str, PodInfo] = {}
        # The same pods grouped the way a decision reads them, kept per event so a decision
        # never regroups the cluster: workers by job, and pending GPU pods of no job (the
        # candidates for protected demand).
        self.by_job: dict[str, dict[str, PodInfo]] = {}
        self.waiting: dict[str, PodInfo] = {}
        self._used: dict[str, int] = {}
        self._releasing: dict[str, int] = {}
        # CapacitySnapshot._eligible of the current nodes, shared by every snapshot taken
        # until a node changes.
        self._eligible: dict[str, frozenset[str]] = {}
        # Least offer (free + releasing) per node since take_floor(); absent: unchanged since.
        # None until the first call: what the start-up listing passed through is no history.
        self._floor: dict[str, int] | None = None

    def apply_node(self, event_type: str, node: Obj) -> None:
        """Take one watch event (ADDED/MODIFIED/DELETED, or None for a listed object)."""
        info = NodeInfo.from_object(node, self.resource)
        self._before({info.name})
        old = self.nodes.get(info.name)
        if event_type == "DELETED":
            self.nodes.pop(info.name, None)
        else:
            self.nodes[info.name] = info
        if self.nodes.get(info.name) != old:
            # A new dict, not a cleared one: earlier snapshots keep the sets of their nodes.
            self._eligible = {}
        self._after({info.name})

    def apply_pod(self, event_type: str, pod: Obj) -> None:
        """Take one watch event of a pod (ADDED/MODIFIED/DELETED, or None for a listed one)."""
        info = PodInfo.from_object(pod, self.resource)
        old = self.pods.pop(info.key, None)
        touched = {p.node for p in (old, info) if p is not None and p.node}
        self._before(touched)
        if old is not None:
            self._account(old, -1)
            self._ungroup(old)
        if event_type != "DELETED" and (info.gpus > 0 or info.job):
            self.pods[info.key] = info
            self._account(info, +1)
            self._group(info)
        self._after(touched)

    def _group(self, pod: PodInfo) -> None:
        if pod.job is not None:
            self.by_job.setdefault(pod.job, {})[pod.key] = pod
        elif pod.pending and pod.gpus > 0:
            self.waiting[pod.key] = pod

    def _ungroup(self, pod: PodInfo) -> None:
        if pod.job is not None:
            group = self.by_job.get(pod.job, {})
            group.pop(pod.key, None)
            if not group:
                self.by_job.pop(pod.job, None)
        else:
            self.waiting.pop(pod.key, None)

    def _account(self, pod: PodInfo, sign: int) -> None:
        if not pod.holds_gpus:
            return
        node = str(pod.node)
        self._used[node] = self._used.get(node, 0) + sign * pod.gpus
        if pod.terminating:
            self._releasing[node] = self._releasing.get(node, 0) + sign * pod.gpus

    def _offer(self, node: str) -> int:
        """What the node offers the policy now: free plus releasing GPUs (0 when unusable)."""
        info = self.nodes.get(node)
        if info is None or not info.schedulable:
            return 0
        return max(0, info.gpus - self._used.get(node, 0) + self._releasing.get(node, 0))

    def _before(self, nodes: Iterable[str]) -> None:
        """Remember the offer of nodes an event is about to change (once per period)."""
        if self._floor is not None:
            for node in nodes:
                self._floor.setdefault(node, self._offer(node))

    def _after(self, nodes: Iterable[str]) -> None:
        if self._floor is not None:
            for node in nodes:
                self._floor[node] = min(self._floor[node], self._offer(node))

    def snapshot(self) -> CapacitySnapshot:
        """Free GPUs per schedulable node now."""
        nodes = {n: info for n, info in self.nodes.items() if info.schedulable and info.gpus > 0}
        return _snapshot(nodes, self._used, self._releasing, self._eligible)

    def take_floor(self) -> dict[str, int]:
        """The least offer (free + releasing) of every node an event changed since the previous
        call, the current state included, and start a new period; empty on the first call.

        ``snapshot().lowered(take_floor())`` is the floor the policy gets. The minima of
        different nodes may come from different moments, so it is a lower bound of the
        cluster, which is what growth may safely count on.
        """
        lowest, self._floor = self._floor or {}, {}
        return lowest


def compute_snapshot(nodes: Iterable[Obj], pods: Iterable[Obj],
                     resource: str = DEFAULT_GPU_RESOURCE) -> CapacitySnapshot:
    """The snapshot of a full listing, computed directly (the reference that
    :class:`CapacityCache`, fed the same objects as events, must agree with)."""
    infos = [NodeInfo.from_object(n, resource) for n in nodes]
    offered = {i.name: i for i in infos if i.schedulable and i.gpus > 0}
    used: dict[str, int] = {}
    releasing: dict[str, int] = {}
    for pod in pods:
        info = PodInfo.from_object(pod, resource)
        if not info.holds_gpus:
            continue
        node = str(info.node)
        used[node] = used.get(node, 0) + info.gpus
        if info.terminating:
            releasing[node] = releasing.get(node, 0) + info.gpus
    return _snapshot(offered, used, releasing)


def _snapshot(nodes: Mapping[str, NodeInfo], used: Mapping[str, int],
              releasing: Mapping[str, int],
              eligible: dict[str, frozenset[str]] | None = None) -> CapacitySnapshot:
    free = {n: max(0, i.gpus - used.get(n, 0)) for n, i in nodes.items()}
    # What is free once the terminating pods are gone, minus what is free already (an
    # over-committed node may get back less than its terminating pods hold).
    after = {n: max(0, i.gpus - used.get(n, 0) + releasing.get(n, 0)) for n, i in nodes.items()}
    return CapacitySnapshot(nodes=nodes, free=free,
                            releasing={n: after[n] - free[n] for n in nodes},
                            _eligible={} if eligible is None else eligible)
