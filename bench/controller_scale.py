"""Controller scale benchmark: the autoscaler's and the reclaim controller's cost per watch event
and per decision at 1,000 pods / 100 nodes and 10,000 pods / 1,000 nodes (issue 13).

Each size is a synthetic cluster built from one seed: nodes of 8 GPUs (a tenth in an ``h100``
pool, a few cordoned, a twentieth tainted for notebooks), and pods that are 55% workers of
elastic jobs (8 workers, 1 GPU each or 2 for one job in five, a tenth of the jobs pinned to
the h100 pool, most with autoscaling on), 10% Enterprise Gateway kernel pods (1 GPU, in the
``notebooks`` namespace), 1% pending protected pods, the rest CPU-only pods. GPU pods are
bound first-fit until the nodes are full; the rest stay Pending, some reported Unschedulable.
Bodies carry the env, volumes and statuses a real pod has, so parsing them costs what it does.

What runs is the operator's own code: the autoscaler's event handlers
(:class:`~elastic_operator.autoscaler.handlers.Autoscaler` ``on_pod``/``on_node``/``on_job``)
and its decision (``Autoscaler.decide``); the reclaim controller's index function
(:func:`~elastic_operator.reclaim.handlers.reclaim_pods`, which kopf calls per pod event; the
bench keeps its entries in a dict as kopf's index does) and the pure part of a check
(select, GPU candidates, :func:`~elastic_operator.reclaim.plan.decide_all`, ``next_status``)
for one policy over every kernel. A stream of events (worker pods bound and replaced, kernel
annotations, CPU pods, node conditions, job resizes) is timed one by one after the initial
listing, and the autoscaler decides after every ``events / decisions`` of them (so each
decision has a floor to allocate against too, as in the operator). The baseline of
``event_growth`` is the 1k cluster of the same run: per-event cost at 10k / 1k, about 1 when
the bookkeeping is O(1) in the cluster. Times are this process's CPU time
(``time.process_time``: other work on the machine's shared cores inflates wall time, not
this), with the garbage collector off (as ``timeit`` does). Decisions are reported as median
and p95; the autoscaler's first decision after the listing, which parses every job's policy
input and eligible nodes once, is reported apart. The baseline of a decision is one pass over
the pods the autoscaler keeps (summing GPUs per node) in the same process: a decision that is
O(pods) keeps its multiple of that pass from 1k to 10k. Goals: decisions <= 50 ms at 10k pods
and 1k nodes; ``event_growth`` close to 1.

    .venv/bin/python bench/controller_scale.py [--seed 1] [--events 3000] [--decisions 15]

Last line: ``autoscaler_event_us_1k=.. autoscaler_event_us_10k=.. autoscaler_decide_ms_10k=..
autoscaler_decide_p95_ms_10k=.. autoscaler_decide_per_pass_10k=.. reclaim_event_us_10k=..
reclaim_decide_ms_10k=.. reclaim_decide_p95_ms_10k=.. event_growth=..``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry

from elastic_operator import labels
from elastic_operator.api.common import Condition
from elastic_operator.api.kernelreclaim import (
    EG_KERNEL_ID_LABEL,
    EG_KERNEL_LABELS,
    KernelReclaimPolicySpec,
    KernelReclaimPolicyStatus,
)
from elastic_operator.autoscaler.handlers import (
    Autoscaler,
    AutoscalerMetrics,
    AutoscalerSettings,
)
from elastic_operator.reclaim import plan
from elastic_operator.reclaim import pods as reclaim_pods_module
from elastic_operator.reclaim.handlers import reclaim_pods
from elastic_operator.reclaim.rule import KernelFacts

Obj = dict[str, Any]
GPU = labels.DEFAULT_GPU_RESOURCE
GPUS_PER_NODE = 8
START = datetime(2026, 1, 1, tzinfo=UTC)
NOW = START + timedelta(hours=6)


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def node_body(i: int, rng: random.Random) -> Obj:
    taints = [{"key": "dedicated", "value": "notebooks", "effect": "NoSchedule"}] \
        if i % 20 == 0 else []
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": f"node-{i:04d}", "resourceVersion": "1",
                     "labels": {"pool": "h100" if i % 10 == 0 else "a100",
                                "kubernetes.io/hostname": f"node-{i:04d}",
                                "topology.kubernetes.io/zone": f"zone-{i % 3}"}},
        "spec": {"unschedulable": rng.random() < 0.01, "taints": taints},
        "status": {"allocatable": {GPU: str(GPUS_PER_NODE), "cpu": "96", "memory": "1500Gi"},
                   "conditions": [{"type": "MemoryPressure", "status": "False"},
                                  {"type": "Ready", "status": "True",
                                   "lastTransitionTime": stamp(START)}]},
    }


def container(name: str, gpus: int) -> Obj:
    limits: Obj = {"cpu": "8", "memory": "64Gi"}
    if gpus:
        limits[GPU] = str(gpus)
    return {"name": name, "image": "registry.example/train:1.0",
            "env": [{"name": f"VAR_{k}", "value": str(k)} for k in range(12)],
            "resources": {"limits": limits, "requests": dict(limits)},
            "volumeMounts": [{"name": "data", "mountPath": "/data"},
                             {"name": "shm", "mountPath": "/dev/shm"}]}


def pod_body(ns: str, name: str, gpus: int, pod_labels: dict[str, str], *,
             tolerations: list[Obj] | None = None, selector: dict[str, str] | None = None,
             annotations: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}",
                     "resourceVersion": "1", "creationTimestamp": stamp(START),
                     "labels": dict(pod_labels), "annotations": dict(annotations or {})},
        "spec": {"containers": [container("main", gpus), container("sidecar", 0)],
                 "tolerations": list(tolerations or []), "nodeSelector": dict(selector or {}),
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                             {"name": "shm", "emptyDir": {"medium": "Memory"}}]},
        "status": {"phase": "Pending"},
    }


def bind(pod: Obj, node: str | None, unschedulable: bool = False) -> None:
    """Make the pod Running on ``node``, or Pending (Unschedulable when asked)."""
    if node is None:
        pod["spec"].pop("nodeName", None)
        pod["status"] = {"phase": "Pending"}
        if unschedulable:
            pod["status"]["conditions"] = [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "lastTransitionTime": stamp(START + timedelta(minutes=5))}]
        return
    pod["spec"]["nodeName"] = node
    started = stamp(START + timedelta(minutes=1))
    pod["status"] = {
        "phase": "Running", "startTime": started, "podIP": "10.0.0.1",
        "conditions": [{"type": t, "status": "True", "lastTransitionTime": started}
                       for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
        "containerStatuses": [{"name": c["name"], "ready": True, "restartCount": 0,
                               "state": {"running": {"startedAt": started}}}
                              for c in pod["spec"]["containers"]],
    }


def job_body(ns: str, name: str, gpus: int, enabled: bool, pinned: bool) -> Obj:
    template: Obj = {"spec": {"containers": [container("main", gpus)]}}
    if pinned:
        template["spec"]["nodeSelector"] = {"pool": "h100"}
    return {
        "apiVersion": labels.API_VERSION, "kind": "ElasticJob",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "resourceVersion": "1",
                     "creationTimestamp": stamp(START), "generation": 1},
        "spec": {"minReplicas": 2, "maxReplicas": 16, "replicas": 8, "priority": 0,
                 "autoscale": {"enabled": enabled, "stabilizationWindowSeconds": 60},
                 "template": template},
        "status": {"phase": "Running"},
    }


@dataclass
class Cluster:
    nodes: list[Obj]
    jobs: list[Obj]
    pods: list[Obj]
    kernels: list[KernelFacts] = field(default_factory=list)


def build(n_pods: int, n_nodes: int, seed: int) -> Cluster:
    """The synthetic cluster of the module docstring."""
    rng = random.Random(seed)
    nodes = [node_body(i, rng) for i in range(n_nodes)]
    free = {n["metadata"]["name"]: 0 if n["spec"]["unschedulable"] else GPUS_PER_NODE
            for n in nodes}
    tainted = {n["metadata"]["name"] for n in nodes if n["spec"]["taints"]}
    h100 = {n["metadata"]["name"] for n in nodes if n["metadata"]["labels"]["pool"] == "h100"}
    names = list(free)

    def place(gpus: int, allowed: Callable[[str], bool]) -> str | None:
        start = rng.randrange(len(names))
        for k in range(len(names)):
            n = names[(start + k) % len(names)]
            if free[n] >= gpus and allowed(n):
                free[n] -= gpus
                return n
        return None

    jobs, pods = [], []
    n_workers, n_kernels, n_protected = int(n_pods * 0.55), int(n_pods * 0.10), n_pods // 100
    for j in range(n_workers // 8):
        gpus, pinned = (2 if j % 5 == 0 else 1), j % 10 == 3
        job = job_body(f"team-{j % 20}", f"train-{j}", gpus, enabled=j % 10 != 0, pinned=pinned)
        jobs.append(job)
        for w in range(8):
            pod = pod_body(job["metadata"]["namespace"], f"train-{j}-worker-{w}", gpus,
                           {labels.JOB_NAME: f"train-{j}", labels.REPLICA_INDEX: str(w)},
                           selector={"pool": "h100"} if pinned else None)
            node = place(gpus, lambda n, p=pinned: n not in tainted and (not p or n in h100))
            bind(pod, node, unschedulable=node is None and w % 2 == 0)
            pods.append(pod)
    notebook_toleration = [{"key": "dedicated", "operator": "Equal", "value": "notebooks",
                            "effect": "NoSchedule"}]
    kernels = []
    for k in range(n_kernels):
        kid = f"kernel-{k:05d}"
        annotations = {labels.RECLAIM_AT: stamp(NOW + timedelta(minutes=10))} if k % 7 == 0 \
            else {}
        pod = pod_body("notebooks", f"kernel-pod-{k}", 1,
                       {**EG_KERNEL_LABELS, EG_KERNEL_ID_LABEL: kid},
                       tolerations=notebook_toleration, annotations=annotations)
        bind(pod, place(1, lambda n: True))
        pods.append(pod)
        idle_for = timedelta(minutes=rng.choice([5, 30, 90, 240]))
        kernels.append(KernelFacts(kid, rng.choice(["idle", "idle", "busy"]), NOW - idle_for,
                                   rng.choice([0, 0, 1])))
    for p in range(n_protected):
        pods.append(pod_body("serving", f"inference-{p}", 1, {labels.PROTECTED: "true"}))
    for c in range(n_pods - len(pods)):
        pod = pod_body("notebooks" if c % 5 == 0 else f"team-{c % 20}", f"cpu-{c}", 0,
                       {"app": "web"})
        bind(pod, names[c % len(names)])
        pods.append(pod)
    return Cluster(nodes, jobs, pods, kernels)


@dataclass
class Event:
    kind: str  # "pod" | "node" | "job"
    type: str
    body: Obj


def event_stream(cluster: Cluster, count: int, seed: int) -> list[Event]:
    """Realistic watch events after the listing: each body is a new version of an object."""
    rng = random.Random(seed + 1)
    workers = [p for p in cluster.pods if labels.JOB_NAME in p["metadata"]["labels"]]
    kernel_pods = [p for p in cluster.pods if EG_KERNEL_ID_LABEL in p["metadata"]["labels"]]
    others = [p for p in cluster.pods if p["metadata"]["labels"].get("app") == "web"]
    node_names = [n["metadata"]["name"] for n in cluster.nodes]
    events: list[Event] = []
    while len(events) < count:
        roll = rng.random()
        if roll < 0.35:  # a worker bound, or back to Pending
            pod = copy.deepcopy(rng.choice(workers))
            bind(pod, rng.choice(node_names) if rng.random() < 0.7 else None)
            events.append(Event("pod", "MODIFIED", pod))
        elif roll < 0.55:  # a worker replaced: deleted, created again Pending
            pod = copy.deepcopy(rng.choice(workers))
            events.append(Event("pod", "DELETED", pod))
            fresh = copy.deepcopy(pod)
            bind(fresh, None)
            events.append(Event("pod", "ADDED", fresh))
        elif roll < 0.75:  # a kernel marked or unmarked
            pod = copy.deepcopy(rng.choice(kernel_pods))
            annotations = pod["metadata"]["annotations"]
            if annotations.pop(labels.RECLAIM_AT, None) is None:
                annotations[labels.RECLAIM_AT] = stamp(NOW + timedelta(minutes=5))
            events.append(Event("pod", "MODIFIED", pod))
        elif roll < 0.90:  # a CPU pod's status
            pod = copy.deepcopy(rng.choice(others))
            pod["status"]["podIP"] = f"10.0.{rng.randrange(255)}.{rng.randrange(255)}"
            events.append(Event("pod", "MODIFIED", pod))
        elif roll < 0.95:  # a node's heartbeat-driven condition change
            node = copy.deepcopy(rng.choice(cluster.nodes))
            node["spec"]["unschedulable"] = rng.random() < 0.02
            events.append(Event("node", "MODIFIED", node))
        else:  # a job resized
            job = copy.deepcopy(rng.choice(cluster.jobs))
            job["spec"]["replicas"] = rng.randrange(2, 17)
            events.append(Event("job", "MODIFIED", job))
    return events[:count]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Figures:
    autoscaler_event_us: list[float]
    autoscaler_decide_ms: list[float]
    reclaim_event_us: list[float]
    reclaim_decide_ms: list[float]
    pass_ms: float  # the baseline: one pass over the pods the autoscaler keeps (fastest)
    cold_decide_ms: float  # the first decision after the listing


def one_pass(scaler: Autoscaler) -> float:
    """CPU ms of one pass over the pods the autoscaler keeps, summing GPUs per node: the least
    any decision that looked at every pod would cost, measured in the same process (the
    fastest of 15, as timeit reports)."""
    times = []
    for _ in range(15):
        t0 = time.process_time_ns()
        used: dict[str, int] = {}
        for pod in scaler.capacity.pods.values():
            if pod.node is not None:
                used[pod.node] = used.get(pod.node, 0) + pod.gpus
        times.append((time.process_time_ns() - t0) / 1e6)
    return min(times)


class ReclaimIndex:
    """What kopf does with :func:`reclaim_pods`' results: one entry per pod, replaced on
    every event, dropped on DELETED or when the pod no longer matches ``when`` (finished)."""

    def __init__(self) -> None:
        self.by_namespace: dict[str, dict[str, reclaim_pods_module.ObservedPod]] = {}

    def apply(self, event_type: str, body: Obj) -> None:
        meta = body["metadata"]
        entries = self.by_namespace.setdefault(meta["namespace"], {})
        if event_type == "DELETED" or reclaim_pods_module.is_finished(body):
            entries.pop(meta["name"], None)
            return
        for namespace, entry in reclaim_pods(body=body).items():
            self.by_namespace.setdefault(namespace, {})[meta["name"]] = entry


def run(n_pods: int, n_nodes: int, seed: int, n_events: int, n_decisions: int) -> Figures:
    cluster = build(n_pods, n_nodes, seed)
    events = event_stream(cluster, n_events, seed)
    scaler = Autoscaler(AutoscalerSettings(), AutoscalerMetrics(CollectorRegistry()))
    index = ReclaimIndex()
    for n in cluster.nodes:
        scaler.on_node(None, n)
    for j in cluster.jobs:
        scaler.on_job(None, j)
    for p in cluster.pods:
        scaler.on_pod(None, p)
        index.apply("ADDED", p)
    scaler.capacity.take_floor()

    # Timed with the collector off, as timeit does: a full collection walks every object of
    # the process, so its pauses grow with the heap, not with the bookkeeping measured.
    gc.collect()
    gc.disable()
    now = NOW.timestamp()
    # The first decision after the listing parses every job's policy input and eligible
    # nodes (the handlers keep them until a job, its pods or a node change): timed apart.
    t0 = time.process_time()
    scaler.decide(now - 5)
    cold_ms = (time.process_time() - t0) * 1000
    auto_us, reclaim_us, auto_ms = [], [], []
    handlers = {"pod": scaler.on_pod, "node": scaler.on_node, "job": scaler.on_job}
    # A decision after every batch of events, as the debounced loop runs: each one gets
    # the floor of what the batch passed through, so it allocates twice.
    batch = max(1, len(events) // n_decisions)
    for i, ev in enumerate(events):
        handler = handlers[ev.kind]
        t0 = time.process_time_ns()
        handler(ev.type, ev.body)
        auto_us.append((time.process_time_ns() - t0) / 1000)
        if ev.kind == "pod":  # the reclaim controller watches pods only
            t0 = time.process_time_ns()
            index.apply(ev.type, ev.body)
            reclaim_us.append((time.process_time_ns() - t0) / 1000)
        if (i + 1) % batch == 0 and len(auto_ms) < n_decisions:
            t0 = time.process_time()
            scaler.decide(now + 5 * len(auto_ms))
            auto_ms.append((time.process_time() - t0) * 1000)

    spec = KernelReclaimPolicySpec.model_validate(
        {"jupyter": {"url": "http://jupyter:8888"}, "idleAfter": "1h", "warningPeriod": "10m",
         "minRunning": "10m"})
    ready = Condition(type=plan.READY, status="True", reason="Checked", message="checked")
    status = KernelReclaimPolicyStatus()
    reclaim_ms = []
    for d in range(n_decisions):
        t0 = time.process_time()
        selected = reclaim_pods_module.select(index.by_namespace["notebooks"].values(),
                                              spec.selector)
        plan.candidates_for_gpu_check(selected, spec)
        when = NOW + timedelta(seconds=30 * d)
        verdicts = plan.decide_all(selected, cluster.kernels, {}, spec, when)
        status = plan.next_status(status, now=when, verdicts=verdicts, outcomes=[], ready=ready,
                                  gpu_condition=None, generation=1)
        reclaim_ms.append((time.process_time() - t0) * 1000)
    pass_ms = one_pass(scaler)
    gc.enable()
    return Figures(auto_us, auto_ms, reclaim_us, reclaim_ms, pass_ms, cold_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--decisions", type=int, default=15)
    args = parser.parse_args()
    results: dict[str, Figures] = {}
    for label, n_pods, n_nodes in (("1k", 1000, 100), ("10k", 10_000, 1000)):
        f = run(n_pods, n_nodes, args.seed, args.events, args.decisions)
        results[label] = f
        print(f"# {n_pods} pods / {n_nodes} nodes, {args.events} events, "
              f"{args.decisions} decisions")
        print(f"  autoscaler event: mean {statistics.fmean(f.autoscaler_event_us):.1f} us, "
              f"p99 {percentile(f.autoscaler_event_us, 0.99):.1f} us")
        decide = statistics.median(f.autoscaler_decide_ms)
        print(f"  autoscaler decide: median {decide:.1f} ms, "
              f"p95 {percentile(f.autoscaler_decide_ms, 0.95):.1f} ms "
              f"= {decide / f.pass_ms:.0f}x one pass over its pods ({f.pass_ms:.2f} ms); "
              f"first after the listing {f.cold_decide_ms:.1f} ms")
        print(f"  reclaim event: mean {statistics.fmean(f.reclaim_event_us):.1f} us, "
              f"p99 {percentile(f.reclaim_event_us, 0.99):.1f} us")
        print(f"  reclaim decide: median {statistics.median(f.reclaim_decide_ms):.1f} ms, "
              f"p95 {percentile(f.reclaim_decide_ms, 0.95):.1f} ms")
    small, large = results["1k"], results["10k"]
    auto_growth = statistics.fmean(large.autoscaler_event_us) / \
        statistics.fmean(small.autoscaler_event_us)
    reclaim_growth = statistics.fmean(large.reclaim_event_us) / \
        statistics.fmean(small.reclaim_event_us)
    # A decision that is O(pods) keeps its ratio to one pass over the pods from 1k to 10k.
    per_pass = {label: statistics.median(f.autoscaler_decide_ms) / f.pass_ms
                for label, f in results.items()}
    print(f"# per-event cost 10k/1k: autoscaler {auto_growth:.2f}, reclaim {reclaim_growth:.2f}")
    print(f"# autoscaler decide / one pass over the pods: 1k {per_pass['1k']:.0f}x, "
          f"10k {per_pass['10k']:.0f}x (10k/1k {per_pass['10k'] / per_pass['1k']:.2f})")
    print(f"autoscaler_event_us_1k={statistics.fmean(small.autoscaler_event_us):.1f} "
          f"autoscaler_event_us_10k={statistics.fmean(large.autoscaler_event_us):.1f} "
          f"autoscaler_decide_ms_10k={statistics.median(large.autoscaler_decide_ms):.1f} "
          f"autoscaler_decide_p95_ms_10k={percentile(large.autoscaler_decide_ms, 0.95):.1f} "
          f"autoscaler_decide_per_pass_10k={per_pass['10k']:.0f} "
          f"reclaim_event_us_10k={statistics.fmean(large.reclaim_event_us):.1f} "
          f"reclaim_decide_ms_10k={statistics.median(large.reclaim_decide_ms):.1f} "
          f"reclaim_decide_p95_ms_10k={percentile(large.reclaim_decide_ms, 0.95):.1f} "
          f"event_growth={max(auto_growth, reclaim_growth):.2f}")


if __name__ == "__main__":
    main()
