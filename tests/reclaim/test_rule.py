"""The reclaim rule: a table of cases, and properties that must hold for any facts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elastic_operator.reclaim.rule import (
    GPU_OFF,
    Action,
    GpuFacts,
    GpuState,
    KernelFacts,
    PodFacts,
    RulePolicy,
    decide,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = RulePolicy(idle_after=600, min_running=300, warning_period=120, starting_grace=300)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


IDLE_KERNEL = KernelFacts("k1", "idle", ago(3600), 0)
POD = PodFacts("ns", "kernel-k1", "k1", gpus=1, started_at=ago(7200))
WARNED = replace(POD, reclaim_at=NOW - timedelta(seconds=1))
WARNED_LATER = replace(POD, reclaim_at=NOW + timedelta(seconds=60))
GPU_IDLE = GpuFacts(GpuState.IDLE, "peak 0%")
# Started through the API, never connected to: jupyter_server keeps such a kernel "starting".
STARTING = replace(IDLE_KERNEL, execution_state="starting")
RUNNING = replace(POD, running_since=ago(7000))


@pytest.mark.parametrize(
    ("kernel", "pod", "gpu", "policy", "action", "reason"),
    [
        (IDLE_KERNEL, POD, GPU_OFF, POLICY, Action.WARN, "idle 3600s"),
        (IDLE_KERNEL, WARNED, GPU_OFF, POLICY, Action.RECLAIM, "warning period over"),
        (IDLE_KERNEL, WARNED_LATER, GPU_OFF, POLICY, Action.KEEP, "warned"),
        (IDLE_KERNEL, POD, GPU_OFF, replace(POLICY, warning_period=0), Action.RECLAIM, "idle"),
        (IDLE_KERNEL, replace(POD, exempt=True), GPU_OFF, POLICY, Action.KEEP, "exempt"),
        (IDLE_KERNEL, replace(WARNED, exempt=True), GPU_OFF, POLICY, Action.CLEAR_WARNING,
         "exempt"),
        (IDLE_KERNEL, replace(POD, gpus=0), GPU_OFF, POLICY, Action.KEEP, "no GPU"),
        (IDLE_KERNEL, replace(POD, gpus=0), GPU_OFF, replace(POLICY, gpu_only=False),
         Action.WARN, "idle"),
        (None, POD, GPU_OFF, POLICY, Action.KEEP, "not listed"),
        (None, WARNED, GPU_OFF, POLICY, Action.KEEP, "not listed"),
        (IDLE_KERNEL, replace(POD, kernel_id=None), GPU_OFF, POLICY, Action.KEEP, "no kernel id"),
        (replace(IDLE_KERNEL, execution_state="starting"), POD, GPU_OFF, POLICY, Action.KEEP,
         "starting"),
        (replace(IDLE_KERNEL, execution_state="starting"), WARNED, GPU_OFF, POLICY, Action.KEEP,
         "starting"),
        (replace(IDLE_KERNEL, execution_state=None), POD, GPU_OFF, POLICY, Action.KEEP,
         "missing"),
        (replace(IDLE_KERNEL, execution_state="busy"), POD, GPU_OFF, POLICY, Action.KEEP, "busy"),
        (replace(IDLE_KERNEL, execution_state="busy"), WARNED, GPU_OFF, POLICY,
         Action.CLEAR_WARNING, "busy"),
        (replace(IDLE_KERNEL, execution_state="busy"), POD, GPU_OFF,
         replace(POLICY, cull_busy=True), Action.WARN, "idle"),
        (replace(IDLE_KERNEL, connections=2), POD, GPU_OFF, POLICY, Action.KEEP, "2 open"),
        (replace(IDLE_KERNEL, connections=2), POD, GPU_OFF, replace(POLICY, cull_connected=True),
         Action.WARN, "idle"),
        (replace(IDLE_KERNEL, connections=None), POD, GPU_OFF, POLICY, Action.KEEP,
         "connections unknown"),
        (replace(IDLE_KERNEL, last_activity=None), POD, GPU_OFF, POLICY, Action.KEEP,
         "last_activity unknown"),
        (replace(IDLE_KERNEL, last_activity=ago(60)), POD, GPU_OFF, POLICY, Action.KEEP,
         "active 60s ago"),
        (replace(IDLE_KERNEL, last_activity=ago(60)), WARNED, GPU_OFF, POLICY,
         Action.CLEAR_WARNING, "active"),
        # Marked after the last activity: valid. Active after the mark, idle again: void.
        (replace(IDLE_KERNEL, last_activity=ago(700)),
         replace(POD, reclaim_at=ago(50) + timedelta(seconds=120)), GPU_OFF,
         POLICY, Action.KEEP, "warned"),
        (replace(IDLE_KERNEL, last_activity=ago(700)),
         replace(POD, reclaim_at=ago(800) + timedelta(seconds=120)), GPU_OFF,
         POLICY, Action.CLEAR_WARNING, "active since the warning"),
        (IDLE_KERNEL, replace(POD, started_at=ago(100)), GPU_OFF, POLICY, Action.KEEP,
         "minRunning"),
        (IDLE_KERNEL, replace(POD, started_at=None), GPU_OFF, POLICY, Action.KEEP,
         "start time unknown"),
        (IDLE_KERNEL, POD, GPU_IDLE, POLICY, Action.WARN, "GPU idle"),
        (IDLE_KERNEL, POD, GpuFacts(GpuState.BUSY, "peak 80%"), POLICY, Action.KEEP, "GPU busy"),
        (IDLE_KERNEL, WARNED, GpuFacts(GpuState.BUSY, "peak 80%"), POLICY, Action.CLEAR_WARNING,
         "GPU busy"),
        (IDLE_KERNEL, POD, GpuFacts(GpuState.UNKNOWN, "stale"), POLICY, Action.KEEP,
         "GPU idleness unknown"),
        # Stuck in "starting": kept through startingGrace (default 300s), then judged as idle.
        (STARTING, RUNNING, GPU_OFF, POLICY, Action.WARN, "never left starting in 3600s"),
        (STARTING, RUNNING, GPU_OFF, POLICY, Action.WARN, "judged as idle; idle 3600s"),
        (STARTING, replace(RUNNING, reclaim_at=NOW - timedelta(seconds=1)), GPU_OFF, POLICY,
         Action.RECLAIM, "warning period over"),
        (STARTING, replace(RUNNING, running_since=None), GPU_OFF, POLICY, Action.KEEP,
         "not Running"),
        (STARTING, replace(RUNNING, running_since=ago(200)), GPU_OFF, POLICY, Action.KEEP,
         "starting for 200s"),
        (STARTING, replace(RUNNING, running_since=ago(200), reclaim_at=ago(1)), GPU_OFF, POLICY,
         Action.KEEP, "startingGrace 300s"),
        # Activity restarts the count; so does a longer grace.
        (replace(STARTING, last_activity=ago(100)), RUNNING, GPU_OFF, POLICY, Action.KEEP,
         "starting for 100s"),
        (STARTING, RUNNING, GPU_OFF, replace(POLICY, starting_grace=4000), Action.KEEP,
         "startingGrace 4000s"),
        (replace(STARTING, last_activity=None), RUNNING, GPU_OFF, POLICY, Action.KEEP,
         "last_activity is unknown"),
        # Past the grace the usual rules apply: idleAfter, minRunning, connections, GPU.
        (replace(STARTING, last_activity=ago(400)), RUNNING, GPU_OFF, POLICY, Action.KEEP,
         "active 400s ago"),
        (STARTING, RUNNING, GPU_OFF, replace(POLICY, min_running=8000), Action.KEEP,
         "minRunning"),
        (replace(STARTING, connections=1), RUNNING, GPU_OFF, POLICY, Action.KEEP, "1 open"),
        (STARTING, RUNNING, GpuFacts(GpuState.BUSY, "peak 80%"), POLICY, Action.KEEP,
         "GPU busy"),
        (STARTING, RUNNING, GPU_OFF, replace(POLICY, warning_period=0), Action.RECLAIM,
         "never left starting"),
        (IDLE_KERNEL, WARNED, GpuFacts(GpuState.UNKNOWN, "stale"), POLICY, Action.KEEP,
         "GPU idleness unknown"),
    ],
)
def test_rule_table(
    kernel: KernelFacts | None,
    pod: PodFacts,
    gpu: GpuFacts,
    policy: RulePolicy,
    action: Action,
    reason: str,
) -> None:
    decision = decide(kernel, pod, gpu, policy, NOW)
    assert decision.action == action, decision
    assert reason in decision.reason


def test_warning_sets_the_time_it_will_go() -> None:
    decision = decide(IDLE_KERNEL, POD, GPU_OFF, POLICY, NOW)
    assert decision.reclaim_at == NOW + timedelta(seconds=POLICY.warning_period)
    assert decision.eligible and decision.idle_seconds == 3600


# -- properties --------------------------------------------------------------------------

times = st.one_of(
    st.none(),
    st.integers(min_value=-100, max_value=100_000).map(lambda s: NOW - timedelta(seconds=s)),
)
states = st.one_of(st.none(), st.sampled_from(["idle", "busy", "starting", "restarting",
                                               "unknown", "dead", "autorestarting"]))
kernels = st.one_of(st.none(), st.builds(
    KernelFacts, kernel_id=st.just("k1"), execution_state=states, last_activity=times,
    connections=st.one_of(st.none(), st.integers(0, 3)),
))
pods = st.builds(
    PodFacts, namespace=st.just("ns"), name=st.just("p"),
    kernel_id=st.one_of(st.none(), st.just("k1")), gpus=st.integers(0, 4), started_at=times,
    exempt=st.booleans(), reclaim_at=times, running_since=times,
)
gpus = st.builds(GpuFacts, state=st.sampled_from(list(GpuState)), detail=st.just(""))
policies = st.builds(
    RulePolicy, idle_after=st.floats(0, 5000), min_running=st.floats(0, 5000),
    warning_period=st.floats(0, 5000), starting_grace=st.floats(0, 5000),
    cull_busy=st.booleans(), cull_connected=st.booleans(), gpu_only=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(kernel=kernels, pod=pods, gpu=gpus, policy=policies)
def test_never_reclaims_on_unknown_or_exempt(
    kernel: KernelFacts | None, pod: PodFacts, gpu: GpuFacts, policy: RulePolicy
) -> None:
    decision = decide(kernel, pod, gpu, policy, NOW)
    if decision.action != Action.RECLAIM:
        return
    assert not pod.exempt
    assert kernel is not None and pod.kernel_id is not None
    assert kernel.execution_state in ("idle", "busy", "starting")
    assert kernel.last_activity is not None and kernel.connections is not None
    if kernel.execution_state == "starting":
        # Only a kernel stuck past the grace, counted from its pod running and its activity.
        assert pod.running_since is not None
        since = max(pod.running_since, kernel.last_activity)
        assert (NOW - since).total_seconds() >= policy.starting_grace
    assert pod.started_at is not None
    assert gpu.state in (GpuState.OFF, GpuState.IDLE)
    assert kernel.execution_state == "idle" or policy.cull_busy
    assert kernel.connections == 0 or policy.cull_connected
    assert (NOW - kernel.last_activity).total_seconds() >= policy.idle_after
    assert (NOW - pod.started_at).total_seconds() >= policy.min_running
    # Either no warning is asked for, or a mark exists and its time has come.
    assert policy.warning_period <= 0 or (pod.reclaim_at is not None and pod.reclaim_at <= NOW)


@settings(max_examples=150, deadline=None)
@given(kernel=kernels, pod=pods, gpu=gpus, policy=policies)
def test_marks_change_only_consistently(
    kernel: KernelFacts | None, pod: PodFacts, gpu: GpuFacts, policy: RulePolicy
) -> None:
    decision = decide(kernel, pod, gpu, policy, NOW)
    if decision.action == Action.CLEAR_WARNING:
        assert pod.reclaim_at is not None
    if decision.action == Action.WARN:
        assert pod.reclaim_at is None and decision.reclaim_at is not None
        assert decision.reclaim_at > NOW
    if decision.action in (Action.WARN, Action.RECLAIM):
        assert decision.eligible


@settings(max_examples=150, deadline=None)
@given(kernel=kernels, pod=pods, gpu=gpus, policy=policies)
def test_starting_kernel_in_its_grace_is_left_alone(
    kernel: KernelFacts | None, pod: PodFacts, gpu: GpuFacts, policy: RulePolicy
) -> None:
    """Within startingGrace (or with the pod not Running) a starting kernel is neither warned
    nor reclaimed, and a mark it carries stays: a start-up is no evidence either way."""
    if kernel is None or kernel.execution_state != "starting":
        return
    decision = decide(kernel, pod, gpu, policy, NOW)
    stuck = (
        pod.running_since is not None and kernel.last_activity is not None
        and (NOW - max(pod.running_since, kernel.last_activity)).total_seconds()
        >= policy.starting_grace
    )
    if not stuck and not pod.exempt and not (policy.gpu_only and pod.gpus <= 0):
        assert decision.action == Action.KEEP
    if decision.action in (Action.WARN, Action.RECLAIM):
        assert stuck and "never left starting" in decision.reason
