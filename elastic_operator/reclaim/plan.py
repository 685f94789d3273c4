"""One check of a policy, decided purely: pod bodies and probe results in, decisions and the
next status out. The handler does the I/O on both sides.

A *pod verdict* pairs a kernel pod with the rule's :class:`~elastic_operator.reclaim.rule.Decision`;
:func:`next_status` folds the verdicts of a check (and what was actually done) into the policy's
status, keeping the cumulative counters and the last few decisions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from elastic_operator.api.common import Condition, set_condition
from elastic_operator.api.kernelreclaim import (
    RECENT_DECISIONS,
    DecisionRecord,
    KernelReclaimPolicySpec,
    KernelReclaimPolicyStatus,
)
from elastic_operator.api.kube import now_rfc3339
from elastic_operator.reclaim import rule
from elastic_operator.reclaim.pods import ObservedPod
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


def pod_facts(pod: ObservedPod, spec: KernelReclaimPolicySpec) -> PodFacts:
    """The rule's facts about a pod, read with the policy's kernel id label and GPU resource."""
    return PodFacts(
        namespace=pod.namespace,
        name=pod.name,
        kernel_id=pod.labels.get(spec.kernelIdLabel) or None,
        gpus=pod.gpus(spec.gpuResourceName),
        started_at=pod.started_at,
        exempt=pod.exempt,
        reclaim_at=pod.reclaim_at,
        running_since=pod.running_since,
    )


@dataclass(frozen=True)
class Verdict:
    """A pod and what the rule decided for it."""

    pod: PodFacts
    decision: Decision


def decide_all(
    pods: Iterable[ObservedPod],
    kernels: list[KernelFacts],
    gpu: dict[str, GpuFacts],
    spec: KernelReclaimPolicySpec,
    now: datetime,
) -> list[Verdict]:
    """The rule applied to every running selected pod, in a stable order (by pod name)."""
    by_id = {k.kernel_id: k for k in kernels}
    policy = rule_policy(spec)
    verdicts = []
    for pod in sorted(pods, key=lambda p: p.name):
        if pod.finished:
            continue
        facts = pod_facts(pod, spec)
        kernel = by_id.get(facts.kernel_id) if facts.kernel_id else None
        gpu_facts = gpu.get(facts.name, rule.GPU_OFF) if spec.gpuIdle else rule.GPU_OFF
        verdicts.append(Verdict(facts, rule.decide(kernel, facts, gpu_facts, policy, now)))
    return verdicts


def candidates_for_gpu_check(
    pods: Iterable[ObservedPod], spec: KernelReclaimPolicySpec
) -> list[str]:
    """Names of the pods whose GPU metrics a check needs (GPU-holding, not exempt, running)."""
    return sorted(p.name for p in pods
                  if not p.finished and not p.exempt and p.gpus(spec.gpuResourceName) > 0)


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
