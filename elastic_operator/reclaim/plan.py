"""One check of a policy, decided purely: pod bodies and probe results in, decisions and the
next status out. The handler does the I/O on both sides.

A *pod verdict* pairs a kernel pod with the rule's :class:`~elastic_operator.reclaim.rule.Decision`;
:func:`next_status` folds the verdicts of a check (and what was actually done) into the policy's
status, keeping the cumulative counters and the last few decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from elastic_operator import labels
from elastic_operator.api.common import Condition, now_rfc3339, set_condition
from elastic_operator.api.kernelreclaim import (
    RECENT_DECISIONS,
    DecisionRecord,
    KernelReclaimPolicySpec,
    KernelReclaimPolicyStatus,
)
from elastic_operator.api.kube import QuantityError, parse_time, pod_gpu_request
from elastic_operator.reclaim import rule
from elastic_operator.reclaim.rule import Action, Decision, GpuFacts, KernelFacts, PodFacts

# Condition types of a KernelReclaimPolicy.
READY = "Ready"  # the last check could decide (Jupyter answered, spec valid, token readable)
GPU_METRICS = "GpuMetricsAvailable"  # the last GPU query worked (only with spec.gpuIdle)


def rule_policy(spec: KernelReclaimPolicySpec) -> rule.RulePolicy:
    """The rule's view of a spec (durations in seconds)."""
    return rule.RulePolicy(
        idle_after=spec.seconds("idleAfter"),
        min_running=spec.seconds("minRunning"),
        warning_period=spec.seconds("warningPeriod"),
        starting_grace=spec.seconds("startingGrace"),
        cull_busy=spec.cullBusy,
        cull_connected=spec.cullConnected,
        gpu_only=spec.gpuOnly,
    )


def gpu_request(pod: dict[str, Any], resource: str) -> int:
    """GPUs the pod holds, counted as the autoscaler counts them
    (:func:`~elastic_operator.api.kube.pod_gpu_request`); a malformed quantity counts 0, as
    the API server rejects those."""
    try:
        return pod_gpu_request(pod.get("spec") or {}, resource)
    except QuantityError:
        return 0


def running_since(pod: dict[str, Any]) -> datetime | None:
    """When the pod's last container started running: the moment the pod as a whole ran.
    None unless the pod is Running with every container's ``running.startedAt`` known."""
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return None
    starts = [
        parse_time(((c.get("state") or {}).get("running") or {}).get("startedAt"))
        for c in status.get("containerStatuses") or []
    ]
    if not starts or any(s is None for s in starts):
        return None
    return max(s for s in starts if s is not None)


def pod_facts(pod: dict[str, Any], spec: KernelReclaimPolicySpec) -> PodFacts:
    """The rule's facts about a pod body as the API returned it."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    status = pod.get("status") or {}
    return PodFacts(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        kernel_id=(meta.get("labels") or {}).get(spec.kernelIdLabel) or None,
        gpus=gpu_request(pod, spec.gpuResourceName),
        started_at=parse_time(status.get("startTime")) or parse_time(meta.get("creationTimestamp")),
        exempt=annotations.get(labels.RECLAIM) == rule.EXEMPT_VALUE,
        reclaim_at=parse_time(annotations.get(labels.RECLAIM_AT)),
        running_since=running_since(pod),
    )


def is_finished(pod: dict[str, Any]) -> bool:
    """A pod that no longer runs (or is being deleted) holds nothing worth reclaiming."""
    phase = (pod.get("status") or {}).get("phase")
    return phase in ("Succeeded", "Failed") or bool(
        (pod.get("metadata") or {}).get("deletionTimestamp")
    )


@dataclass(frozen=True)
class Verdict:
    """A pod and what the rule decided for it."""

    pod: PodFacts
    decision: Decision


def decide_all(
    pods: list[dict[str, Any]],
    kernels: list[KernelFacts],
    gpu: dict[str, GpuFacts],
    spec: KernelReclaimPolicySpec,
    now: datetime,
) -> list[Verdict]:
    """The rule applied to every running selected pod, in a stable order (by pod name)."""
    by_id = {k.kernel_id: k for k in kernels}
    policy = rule_policy(spec)
    verdicts = []
    for body in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name", "")):
        if is_finished(body):
            continue
        facts = pod_facts(body, spec)
        kernel = by_id.get(facts.kernel_id) if facts.kernel_id else None
        gpu_facts = gpu.get(facts.name, rule.GPU_OFF) if spec.gpuIdle else rule.GPU_OFF
        verdicts.append(Verdict(facts, rule.decide(kernel, facts, gpu_facts, policy, now)))
    return verdicts


def candidates_for_gpu_check(
    pods: list[dict[str, Any]], spec: KernelReclaimPolicySpec
) -> list[str]:
    """Names of the pods whose GPU metrics a check needs (GPU-holding, not exempt, running)."""
    names = []
    for body in pods:
        facts = pod_facts(body, spec)
        if not is_finished(body) and not facts.exempt and facts.gpus > 0:
            names.append(facts.name)
    return sorted(names)


@dataclass(frozen=True)
class Outcome:
    """What the handler did for one verdict: the action it reports and its reason."""

    pod: PodFacts
    action: str  # a DecisionRecord action
    reason: str
    idle_seconds: float = 0.0  # how long the kernel had been idle (for reclaims)


def gpu_hours(gpus: int, idle_seconds: float) -> float:
    """The idle GPU-hours a reclaim ended: its GPUs x how long the kernel had been idle. The
    one definition behind status.gpuHoursReclaimed and the gpu_hours metric."""
    return gpus * idle_seconds / 3600.0


def next_status(
    previous: KernelReclaimPolicyStatus,
    *,
    now: datetime,
    verdicts: list[Verdict],
    outcomes: list[Outcome],
    ready: Condition,
    gpu_condition: Condition | None,
    generation: int,
) -> KernelReclaimPolicyStatus:
    """The status after a check. Counters of reclaims only grow by what actually succeeded
    (outcomes with action ``reclaim``); a failed check (no verdicts) keeps the last numbers."""
    conditions = set_condition(previous.conditions, ready, now)
    if gpu_condition is not None:
        conditions = set_condition(conditions, gpu_condition, now)
    else:
        conditions = [c for c in conditions if c.type != GPU_METRICS]
    stamp = now_rfc3339(now)
    records = list(previous.recentDecisions) + [
        DecisionRecord(
            time=stamp,
            pod=o.pod.name,
            kernelId=o.pod.kernel_id or "",
            action=o.action,  # type: ignore[arg-type]
            reason=o.reason,
            gpus=o.pod.gpus,
        )
        for o in outcomes
    ]
    reclaimed = [o for o in outcomes if o.action == "reclaim"]
    checked = ready.status == "True"
    update: dict[str, Any] = {
        "lastCheckTime": stamp,
        "conditions": conditions,
        "recentDecisions": records[-RECENT_DECISIONS:],
        "reclaimed": previous.reclaimed + len(reclaimed),
        "gpusReclaimed": previous.gpusReclaimed + sum(o.pod.gpus for o in reclaimed),
        # Rounded so the printer column and status stay readable; counters only grow.
        "gpuHoursReclaimed": round(
            previous.gpuHoursReclaimed
            + sum(gpu_hours(o.pod.gpus, o.idle_seconds) for o in reclaimed),
            3,
        ),
        "observedGeneration": generation,
    }
    if checked:
        warned_now = {o.pod.name for o in outcomes if o.action == "warn"}
        cleared = {o.pod.name for o in outcomes if o.action in ("clearWarning", "reclaim")}
        still = {
            v.pod.name
            for v in verdicts
            if v.pod.reclaim_at is not None and v.pod.name not in cleared
        }
        update |= {
            "kernelsSeen": len(verdicts),
            "eligible": sum(1 for v in verdicts if v.decision.eligible),
            "warned": len(warned_now | still),
        }
    return previous.model_copy(update=update)


def record_action(decision: Decision, dry_run: bool) -> str | None:
    """The DecisionRecord action a decision leads to, or None for a plain keep."""
    if decision.action == Action.KEEP:
        return None
    if dry_run:
        return "wouldReclaim" if decision.action in (Action.WARN, Action.RECLAIM) else None
    return {
        Action.WARN: "warn",
        Action.RECLAIM: "reclaim",
        Action.CLEAR_WARNING: "clearWarning",
    }[decision.action]
