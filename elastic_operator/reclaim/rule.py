"""The reclaim rule: given what was observed about one kernel, decide what to do with it.

Pure: no I/O, no clock (``now`` is an argument), so every branch is testable from a table.

The rule is the one Jupyter's cullers share (idle longer than a limit by ``last_activity``, not
busy, no connections), made safe:

- an unknown fact never reclaims: a failed or partial probe, a kernel the server does not list,
  an execution state other than ``idle``/``busy`` (``restarting``, ``unknown`` ...),
  GPU metrics that are missing, stale or do not cover the window;
- a kernel ``starting`` for ``startingGrace`` since its pod became Running, with no activity in
  that time, is no start-up but a kernel nobody connected to (jupyter_server and Enterprise
  Gateway leave those ``starting`` for good) and is judged like an idle one; a younger one
  is kept;
- a pod annotated ``elastic.dev/reclaim: "never"`` is never reclaimed;
- a kernel is first marked with the time it will go (``warningPeriod``), and activity in that
  period clears the mark.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

# The only execution states the rule trusts; anything else is kept as unknown, and STARTING
# only until the starting grace is over.
IDLE = "idle"
BUSY = "busy"
STARTING = "starting"

EXEMPT_VALUE = "never"


class Action(StrEnum):
    """What the controller does with a kernel after a check."""

    KEEP = "keep"
    WARN = "warn"
    RECLAIM = "reclaim"
    CLEAR_WARNING = "clearWarning"


@dataclass(frozen=True)
class KernelFacts:
    """One kernel as the Jupyter server reported it; ``None`` fields were absent or malformed."""

    kernel_id: str
    execution_state: str | None
    last_activity: datetime | None
    connections: int | None


@dataclass(frozen=True)
class PodFacts:
    """The kernel pod: identity, GPU request, exemption and warning mark."""

    namespace: str
    name: str
    kernel_id: str | None
    gpus: int
    started_at: datetime | None
    exempt: bool = False
    reclaim_at: datetime | None = None  # the mark; None when not warned (or unparseable)
    running_since: datetime | None = None  # when every container ran; None: not Running


class GpuState(StrEnum):
    OFF = "off"  # the policy has no GPU check
    IDLE = "idle"  # every sample in the window below the threshold, window covered, fresh
    BUSY = "busy"  # some sample at or above the threshold
    UNKNOWN = "unknown"  # no data, stale data, partial window, or the query failed


@dataclass(frozen=True)
class GpuFacts:
    """The GPU-idleness verdict for one pod, with the detail that explains it."""

    state: GpuState
    detail: str = ""


GPU_OFF = GpuFacts(GpuState.OFF)


@dataclass(frozen=True)
class RulePolicy:
    """The policy fields the rule reads, in seconds."""

    idle_after: float
    min_running: float
    warning_period: float
    starting_grace: float
    cull_busy: bool = False
    cull_connected: bool = False
    gpu_only: bool = True


@dataclass(frozen=True)
class Decision:
    """The rule's answer; ``eligible`` says the kernel passed every idleness test this check."""

    action: Action
    reason: str
    eligible: bool = False
    reclaim_at: datetime | None = None
    idle_seconds: float = 0.0  # how long the kernel had been idle, for eligible decisions


def decide(
    kernel: KernelFacts | None,
    pod: PodFacts,
    gpu: GpuFacts,
    policy: RulePolicy,
    now: datetime,
) -> Decision:
    """Decide for one kernel pod. ``kernel`` is None when the server does not list the kernel.

    Guarantees: RECLAIM only if every fact is known and says idle (a kernel stuck in starting
    past the grace counts as idle), the pod is not exempt, and a warning mark set at least
    ``warning_period`` ago (or a zero period) is still valid.
    CLEAR_WARNING only if the pod carries a mark; WARN only if it carries none (or a void one).
    """
    warned = pod.reclaim_at is not None

    def keep(reason: str) -> Decision:
        # Evidence of use (or an exemption) voids a mark; an unknown fact leaves it alone.
        return Decision(Action.CLEAR_WARNING if warned else Action.KEEP, reason)

    def wait(reason: str) -> Decision:
        return Decision(Action.KEEP, reason)

    if pod.exempt:
        return keep(f'exempt (annotation reclaim: "{EXEMPT_VALUE}")')
    if policy.gpu_only and pod.gpus <= 0:
        return keep("requests no GPU (gpuOnly)")
    if pod.kernel_id is None:
        return wait("pod has no kernel id label")
    if kernel is None:
        return wait(f"kernel {pod.kernel_id} not listed by the Jupyter server")

    state = kernel.execution_state
    if state == BUSY and not policy.cull_busy:
        return keep("kernel is busy")
    stuck_note = ""
    if state == STARTING:
        stuck = _stuck_starting(kernel, pod, policy, now)
        if isinstance(stuck, str):
            return wait(stuck)
        stuck_note = (
            f"never left starting in {stuck:.0f}s since its pod ran "
            f"(startingGrace {policy.starting_grace:.0f}s), judged as idle; "
        )
    elif state not in (IDLE, BUSY):
        return wait(f"kernel state is {state or 'missing'}; only idle kernels are reclaimed")
    if kernel.connections is None:
        return wait("kernel connections unknown")
    if kernel.connections > 0 and not policy.cull_connected:
        return keep(f"kernel has {kernel.connections} open connection(s)")
    if kernel.last_activity is None:
        return wait("kernel last_activity unknown")

    idle_for = (now - kernel.last_activity).total_seconds()
    if idle_for < policy.idle_after:
        return keep(f"active {idle_for:.0f}s ago (idleAfter {policy.idle_after:.0f}s)")
    if pod.started_at is None:
        return wait("pod start time unknown")
    running = (now - pod.started_at).total_seconds()
    if running < policy.min_running:
        return wait(f"running {running:.0f}s (minRunning {policy.min_running:.0f}s)")
    if gpu.state == GpuState.BUSY:
        return keep(f"GPU busy: {gpu.detail}")
    if gpu.state == GpuState.UNKNOWN:
        return wait(f"GPU idleness unknown: {gpu.detail}")

    gpu_note = f"; GPU idle: {gpu.detail}" if gpu.state == GpuState.IDLE else ""
    idle = f"{stuck_note}idle {idle_for:.0f}s (idleAfter {policy.idle_after:.0f}s){gpu_note}"
    if pod.reclaim_at is not None:
        marked_at = pod.reclaim_at - timedelta(seconds=policy.warning_period)
        if kernel.last_activity > marked_at:
            return Decision(Action.CLEAR_WARNING, "active since the warning")
        if now >= pod.reclaim_at:
            return Decision(
                Action.RECLAIM, f"{idle}; warning period over", True, idle_seconds=idle_for
            )
        return Decision(Action.KEEP, f"{idle}; warned", True, pod.reclaim_at, idle_for)
    if policy.warning_period <= 0:
        return Decision(Action.RECLAIM, idle, True, idle_seconds=idle_for)
    reclaim_at = now + timedelta(seconds=policy.warning_period)
    return Decision(Action.WARN, idle, True, reclaim_at, idle_for)


def _stuck_starting(
    kernel: KernelFacts, pod: PodFacts, policy: RulePolicy, now: datetime
) -> float | str:
    """Seconds a ``starting`` kernel has been stuck (grace over), or why it is kept.

    The grace counts from the later of the pod becoming Running and the kernel's last
    activity: a start-up takes place in a running pod, and any activity restarts the count.
    """
    if pod.running_since is None:
        return "kernel state is starting and its pod is not Running yet"
    if kernel.last_activity is None:
        return "kernel state is starting and its last_activity is unknown"
    stuck = (now - max(pod.running_since, kernel.last_activity)).total_seconds()
    if stuck < policy.starting_grace:
        return (
            f"kernel starting for {stuck:.0f}s since its pod ran or was last active "
            f"(startingGrace {policy.starting_grace:.0f}s)"
        )
    return stuck
