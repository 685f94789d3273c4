"""The planner: table-driven cases and properties (clamping, idempotence, ordering)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elastic_operator import labels
from elastic_operator.api.elasticjob import ElasticJobStatus, Phase
from elastic_operator.job.planner import (
    COMPLETION_GRACE,
    CreatePod,
    CreateService,
    DeletePod,
    Event,
    JobView,
    MarkFailureRecorded,
    Plan,
    PlannerSettings,
    PodView,
    observe_pod,
    plan,
    resize_event,
)
from launcher.contract import Completion, FailureReport, ResizePath

STARTING = "Starting"
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
TEMPLATE = {"spec": {"containers": [{"name": "worker", "image": "img"}]}}


def spec(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"minReplicas": 2, "maxReplicas": 4, "template": TEMPLATE}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def job(status: ElasticJobStatus | None = None, generation: int = 1, **over: Any) -> JobView:
    return JobView(
        namespace="ns",
        name="j",
        uid="uid-1234567890",
        generation=generation,
        spec=spec(**over),
        status=status or ElasticJobStatus(),
    )


def pod(index: int, phase: str = "Running", ready: bool = True, **over: Any) -> PodView:
    return PodView(name=f"j-worker-{index}", index=index, phase=phase, ready=ready, **over)


def apply(p: Plan, pods: list[PodView], now: datetime = NOW) -> list[PodView]:
    """What the API looks like after the handler applied ``p`` (no kubelet: new pods Pending)."""
    deleted = {a.name for a in p.of(DeletePod)}
    out = []
    for existing in pods:
        if existing.name in deleted:
            continue
        marks = [a for a in p.of(MarkFailureRecorded) if a.name == existing.name]
        if marks:
            existing = dataclasses.replace(existing, failure_recorded_at=now)
        out.append(existing)
    names = {x.name for x in out}
    for create in p.of(CreatePod):
        name = f"j-worker-{create.index}"
        assert name not in names, f"create of {name} would collide"
        out.append(PodView(name=name, index=create.index, phase="Pending"))
    return out


def step(j: JobView, pods: list[PodView], now: datetime = NOW, **kw: Any) -> tuple[Plan, JobView]:
    p = plan(j, pods, now, **kw)
    return p, dataclasses.replace(j, status=p.status)


def events(p: Plan) -> list[str]:
    return [e.reason for e in p.of(Event)]


def cond(status: ElasticJobStatus, kind: str) -> tuple[str, str] | None:
    c = next((c for c in status.conditions if c.type == kind), None)
    return (c.status, c.reason) if c else None


# ----------------------------------------------------------------------------- sizing


@pytest.mark.parametrize(
    ("replicas", "minimum", "maximum", "desired", "clamped_event"),
    [
        (None, 2, 4, 2, False),
        (3, 2, 4, 3, False),
        (9, 2, 4, 4, True),
        (0, 2, 4, 2, True),
        (1, 1, 1, 1, False),
    ],
)
def test_new_job_creates_clamped_number_of_workers(
    replicas: int | None, minimum: int, maximum: int, desired: int, clamped_event: bool
) -> None:
    p = plan(job(replicas=replicas, minReplicas=minimum, maxReplicas=maximum), [], NOW)
    assert sorted(a.index for a in p.of(CreatePod)) == list(range(desired))
    assert ("ReplicasClamped" in events(p)) is clamped_event
    assert p.status.phase == Phase.PENDING
    assert p.status.replicas == desired
    assert p.status.selector == f"{labels.JOB_NAME}=j"
    assert p.status.observedGeneration == 1


def test_clamp_event_only_once_per_generation() -> None:
    p, j = step(job(replicas=9), [])
    assert "ReplicasClamped" in events(p)
    p2 = plan(j, apply(p, []), NOW)
    assert "ReplicasClamped" not in events(p2)


def test_scale_down_deletes_highest_index_first() -> None:
    pods = [pod(i) for i in range(4)]
    status = plan(job(replicas=4), pods, NOW).status
    p = plan(job(replicas=2, status=status, generation=2), pods, NOW)
    assert [a.name for a in p.of(DeletePod)] == ["j-worker-3", "j-worker-2"]
    assert not p.of(CreatePod)
    assert p.status.lastScaleTime is not None


def test_scale_up_fills_missing_indices_only() -> None:
    pods = [pod(0), pod(2)]
    p = plan(job(replicas=4), pods, NOW)
    assert [a.index for a in p.of(CreatePod)] == [1, 3]


def test_terminating_pod_blocks_its_index_until_gone() -> None:
    pods = [pod(0), pod(1, terminating=True)]
    p = plan(job(replicas=2), pods, NOW)
    assert not p.of(CreatePod)  # the name is still taken; the DELETED event re-triggers
    assert not p.of(DeletePod)


def test_missing_service_is_created() -> None:
    p = plan(job(), [], NOW, service_present=False)
    assert p.of(CreateService)


def test_pod_without_index_is_deleted_as_orphan() -> None:
    stray = PodView(name="j-worker-x", index=None, phase="Running")
    p = plan(job(), [pod(0), pod(1), stray], NOW)
    assert DeletePod("j-worker-x", "Orphan") in p.actions


# ----------------------------------------------------------------------------- phases


@pytest.mark.parametrize(
    ("pods", "phase", "ready"),
    [
        ([pod(0, "Pending", False), pod(1, "Pending", False)], Phase.PENDING, ("False", STARTING)),
        ([pod(0), pod(1, "Pending", False)], Phase.PENDING, ("False", STARTING)),
        ([pod(0), pod(1)], Phase.RUNNING, ("True", "MinReplicasReady")),
    ],
)
def test_phase_follows_ready_workers(
    pods: list[PodView], phase: Phase, ready: tuple[str, str]
) -> None:
    p = plan(job(), pods, NOW)
    assert p.status.phase == phase
    assert cond(p.status, "Ready") == ready


def test_scaling_phase_while_not_at_desired_size() -> None:
    p = plan(job(replicas=4), [pod(0), pod(1)], NOW)
    assert p.status.phase == Phase.SCALING
    assert cond(p.status, "Scaling") == ("True", "Resizing")
    assert p.status.readyReplicas == 2
    assert p.status.replicas == 4


def test_world_size_from_round_or_ready_pods() -> None:
    assert plan(job(nprocPerNode=8), [pod(0), pod(1)], NOW).status.worldSize == 16
    p = plan(job(nprocPerNode=8), [pod(0), pod(1)], NOW, observed_round=(5, 12))
    assert (p.status.generation, p.status.worldSize) == (5, 12)


def resized(path: str, node: str = "j-worker-0", generation: int = 3,
            reason: str = "") -> ResizePath:
    return ResizePath(generation, node, path, reason)


@pytest.mark.parametrize(("before", "after", "records", "expected"), [
    ((3, 2), (4, 3), [resized("in-place"), resized("in-place", "j-worker-1")],
     ("ResizedInPlace", "generation 3 -> 4, world size 2 -> 3: in place on 2 node(s)")),
    ((3, 3), (4, 2), [resized("in-place"), resized("restart", "j-worker-1", reason="no helpers")],
     ("ResizedByRestart", "in place on 1 node(s); by restart on 1 node(s): no helpers")),
    # The operator missed generation 4: records of 3 and 4 both explain 3 -> 5.
    ((3, 2), (5, 2), [resized("in-place"), resized("in-place", "j-worker-1", 4)],
     ("ResizedInPlace", "in place on 2 node(s)")),
    ((3, 2), (4, 2), [resized("in-place", generation=2)], None),  # an older round's record
    ((3, 2), (4, 2), [], None),  # nobody of the old round is left to say
    ((3, 2), (3, 2), [resized("in-place")], None),  # no change
    ((0, 0), (1, 2), [resized("in-place", generation=1)], None),  # the first round
    # The job grew before the operator saw round 1: round 1's records still explain it.
    ((0, 0), (2, 3), [resized("restart", generation=1, reason="no helpers")],
     ("ResizedByRestart", "by restart on 1 node(s): no helpers")),
    ((3, 2), None, [resized("in-place")], None),  # etcd unreadable
])
def test_resize_event_says_which_path_the_members_took(
        before: tuple[int, int], after: tuple[int, int] | None, records: list[ResizePath],
        expected: tuple[str, str] | None) -> None:
    event = resize_event(before, after, records)
    if expected is None:
        assert event is None
    else:
        assert event is not None and event.reason == expected[0] and event.type == "Normal"
        assert expected[1] in event.message, event.message


def test_plan_posts_the_resize_event_once_per_generation_change() -> None:
    running = ElasticJobStatus(phase=Phase.RUNNING, generation=3, worldSize=2, replicas=2,
                               readyReplicas=2)
    records = [resized("in-place"), resized("in-place", "j-worker-1")]
    p = plan(job(running), [pod(0), pod(1), pod(2)], NOW, observed_round=(4, 3),
             resizes=records)
    assert [e.reason for e in p.of(Event) if e.reason.startswith("Resized")] == [
        "ResizedInPlace"]
    again = plan(job(p.status), [pod(0), pod(1), pod(2)], NOW, observed_round=(4, 3),
                 resizes=records)
    assert not [e for e in again.of(Event) if e.reason.startswith("Resized")]


# ----------------------------------------------------------------------------- failures


def failed(index: int, message: str = "", **over: Any) -> PodView:
    return pod(index, "Failed", False, termination_message=message, exit_code=1, **over)


def test_failed_worker_is_counted_once_with_its_report() -> None:
    report = FailureReport("ProcessCrashed", "boom in step 7", "node-1", rank=3, exit_code=1)
    pods = [pod(0), failed(1, report.to_json())]
    p, j = step(job(), pods)
    assert p.status.restarts == 1
    assert p.status.lastFailure is not None
    assert p.status.lastFailure.reason == "ProcessCrashed"
    assert p.status.lastFailure.rank == 3
    assert p.status.lastFailure.pod == "j-worker-1"
    warning = next(e for e in p.of(Event) if e.reason == "WorkerFailed")
    assert "j-worker-1" in warning.message and "rank 3" in warning.message
    assert MarkFailureRecorded("j-worker-1", "2026-01-01T12:00:00.000000Z") in p.actions
    # Within the backoff: the failed pod stays (logs readable), nothing is created.
    assert not p.of(CreatePod) and not p.of(DeletePod)
    assert p.requeue_after == pytest.approx(1.0)
    again = plan(j, apply(p, pods), NOW)
    assert again.status.restarts == 1 and not again.actions


def test_raw_termination_message_is_kept() -> None:
    p = plan(job(), [pod(0), failed(1, "Traceback: CUDA error")], NOW)
    assert p.status.lastFailure is not None
    assert p.status.lastFailure.message == "Traceback: CUDA error"
    assert p.status.lastFailure.exitCode == 1


@pytest.mark.parametrize(("restarts", "delay"), [(1, 1), (2, 2), (3, 4), (7, 60), (200, 60)])
def test_backoff_is_exponential_and_capped(restarts: int, delay: float) -> None:
    assert PlannerSettings(1.0, 60.0).backoff(restarts) == delay


def test_failed_worker_recreated_after_backoff() -> None:
    status = ElasticJobStatus(restarts=3, observedGeneration=1)
    pods = [pod(0), failed(1, failure_recorded_at=NOW)]
    early = plan(job(maxRestarts=10, status=status), pods, NOW + timedelta(seconds=3.5))
    assert not early.of(CreatePod)
    assert early.requeue_after == pytest.approx(0.5)
    later = plan(job(maxRestarts=10, status=status), pods, NOW + timedelta(seconds=4))
    assert later.of(DeletePod) == [DeletePod("j-worker-1", "Restart")]
    assert later.of(CreatePod) == [CreatePod(1, "Restart")]
    assert later.status.restarts == 3


def test_max_restarts_exceeded_fails_job_and_deletes_workers() -> None:
    status = ElasticJobStatus(restarts=2)
    pods = [pod(0), failed(1, "oom")]
    p = plan(job(maxRestarts=2, status=status), pods, NOW)
    assert p.status.phase == Phase.FAILED
    assert cond(p.status, "Failed") == ("True", "MaxRestartsExceeded")
    failed_cond = next(c for c in p.status.conditions if c.type == "Failed")
    assert "j-worker-1" in failed_cond.message and "oom" in failed_cond.message
    assert {a.name for a in p.of(DeletePod)} == {"j-worker-0", "j-worker-1"}
    # Terminal: later plans only clean up, never create.
    j = dataclasses.replace(job(maxRestarts=2), status=p.status)
    assert plan(j, [], NOW + timedelta(hours=1)).actions == []


def test_below_min_for_too_long_fails_the_job() -> None:
    running = plan(job(belowMinTimeoutSeconds=30), [pod(0), pod(1)], NOW)
    j = dataclasses.replace(job(belowMinTimeoutSeconds=30), status=running.status)
    dropped = plan(j, [pod(0), pod(1, "Pending", False)], NOW + timedelta(seconds=1))
    assert cond(dropped.status, "Ready") == ("False", "BelowMinReplicas")
    assert dropped.requeue_after == pytest.approx(30)
    j = dataclasses.replace(j, status=dropped.status)
    pods = [pod(0), pod(1, "Pending", False)]
    assert plan(j, pods, NOW + timedelta(seconds=20)).status.phase == Phase.PENDING
    late = plan(j, pods, NOW + timedelta(seconds=32))
    assert late.status.phase == Phase.FAILED
    assert cond(late.status, "Failed") == ("True", "BelowMinTimeout")
    # Recovered in time: no failure even when the old clock has run out.
    recovered = plan(j, [pod(0), pod(1)], NOW + timedelta(seconds=32))
    assert recovered.status.phase == Phase.RUNNING


def test_never_ready_job_does_not_time_out() -> None:
    p = plan(job(belowMinTimeoutSeconds=1), [], NOW)
    j = dataclasses.replace(job(belowMinTimeoutSeconds=1), status=p.status)
    later = plan(j, apply(p, []), NOW + timedelta(hours=2))
    assert later.status.phase == Phase.PENDING


# ----------------------------------------------------------------------------- success


def completion(*indices: int, generation: int = 3, writer: int | None = None,
               at: datetime = NOW) -> Completion:
    members = tuple(f"j-worker-{i}-1-abc" for i in indices)
    node = members[0] if writer is None else f"j-worker-{writer}-1-abc"
    return Completion(generation, members, node, at.timestamp())


def completed(index: int, record: Completion) -> PodView:
    return pod(index, "Succeeded", False, exit_code=0, completion=record,
               termination_message=record.to_json())


def test_completion_in_a_pod_finishes_the_job() -> None:
    record = completion(0, 1)
    pods = [completed(0, record), completed(1, record)]
    p = plan(job(), pods, NOW)
    assert p.status.phase == Phase.SUCCEEDED
    assert cond(p.status, "Succeeded") == ("True", "TrainingCompleted")
    assert any("generation 3" in c.message for c in p.status.conditions)
    assert len(p.of(DeletePod)) == 2
    assert p.status.restarts == 0


def test_pods_that_exit_0_without_a_completion_are_not_success() -> None:
    """The shrink bug: survivors of a resize exit 0; that is never the end of training."""
    pods = [pod(0, "Succeeded", False, exit_code=0), pod(1, "Succeeded", False, exit_code=0)]
    p = plan(job(), pods, NOW)
    assert p.status.phase != Phase.SUCCEEDED
    assert p.status.restarts == 0 and p.status.lastFailure is None
    assert sorted(a.name for a in p.of(DeletePod)) == ["j-worker-0", "j-worker-1"]
    assert sorted(a.index for a in p.of(CreatePod)) == [0, 1]
    assert {e.reason for e in p.of(Event)} >= {"ReplacingWorker"}


def test_completion_from_etcd_alone_finishes_the_job() -> None:
    pods = [pod(0, "Succeeded", False, exit_code=0), pod(1, "Succeeded", False, exit_code=0)]
    p = plan(job(), pods, NOW, completion=completion(0, 1))
    assert p.status.phase == Phase.SUCCEEDED
    assert not p.of(CreatePod)


def test_members_still_running_are_awaited_and_others_deleted() -> None:
    record = completion(0, 1)
    pods = [completed(0, record), pod(1), pod(2), pod(3, "Pending", False)]
    p = plan(job(replicas=4), pods, NOW + timedelta(seconds=1))
    assert p.status.phase != Phase.SUCCEEDED
    assert not p.of(CreatePod)
    assert sorted(a.name for a in p.of(DeletePod)) == ["j-worker-2", "j-worker-3"]
    assert p.requeue_after is not None and p.requeue_after <= 5
    # ... until the grace runs out, then it is Succeeded whatever still runs.
    late = plan(job(replicas=4), pods, NOW + COMPLETION_GRACE + timedelta(seconds=1))
    assert late.status.phase == Phase.SUCCEEDED
    assert len(late.of(DeletePod)) == 4


@pytest.mark.parametrize("departure", [
    {"termination_reason": "Evicted", "departed": True},
    {"departed": True, "termination_message": FailureReport(
        "Shutdown", "agent received SIGTERM", "j-worker-1-1-abc").to_json()},
])
def test_departed_worker_is_replaced_without_counting(departure: dict[str, Any]) -> None:
    pods = [pod(0), pod(1, "Failed", False, exit_code=0, **departure)]
    p = plan(job(maxRestarts=0), pods, NOW)
    assert p.status.phase != Phase.FAILED
    assert p.status.restarts == 0 and p.status.lastFailure is None
    assert [a.name for a in p.of(DeletePod)] == ["j-worker-1"]
    assert [a.index for a in p.of(CreatePod)] == [1]
    assert not [e for e in p.of(Event) if e.type == "Warning"]


def test_departed_worker_beyond_desired_is_only_deleted() -> None:
    pods = [pod(0), pod(1), pod(2, "Failed", False, termination_reason="Evicted",
                                  departed=True)]
    p = plan(job(replicas=2), pods, NOW)
    assert [a.name for a in p.of(DeletePod)] == ["j-worker-2"] and not p.of(CreatePod)


def test_observe_pod_reads_completion_and_departures() -> None:
    record = completion(0, 1)

    def raw(message: str, **status: Any) -> dict[str, Any]:
        return {"metadata": {"name": "j-worker-0", "labels": {labels.REPLICA_INDEX: "0"}},
                "status": {"phase": "Succeeded", **status, "containerStatuses": [
                    {"state": {"terminated": {"exitCode": 0, "message": message}}}]}}

    assert observe_pod(raw(record.to_json())).completion == record
    assert observe_pod(raw("")).completion is None
    forged = json.dumps({"completed": True, "generation": 2, "members": ["a"], "node_id": "b"})
    assert observe_pod(raw(forged)).completion is None  # the writer is no member
    shutdown = FailureReport("Shutdown", "SIGTERM", "j-worker-0-1-abc").to_json()
    assert observe_pod(raw(shutdown)).departed
    assert observe_pod(raw("", reason="Evicted")).departed
    disrupted = raw("", conditions=[{"type": "DisruptionTarget", "status": "True",
                                     "reason": "EvictionByEvictionAPI"}])
    assert observe_pod(disrupted).departed
    crash = FailureReport("ProcessCrashed", "boom", "j-worker-0-1-abc").to_json()
    assert not observe_pod(raw(crash)).departed


# ----------------------------------------------------------------------------- invalid


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"template": {"spec": {"containers": []}}}, "spec.template.spec.containers"),
        ({"template": {}}, "spec.template.spec"),
        ({"minReplicas": 5, "maxReplicas": 2}, "spec.minReplicas"),
        ({"lrScaling": {"policy": "cubic"}}, "spec.lrScaling.policy"),
        (
            {"template": {"spec": {"containers": [{"name": "w"}], "restartPolicy": "Always"}}},
            "spec.template.spec.restartPolicy",
        ),
    ],
)
def test_invalid_spec_fails_with_condition_and_event(over: dict[str, Any], field: str) -> None:
    pods = [pod(0)]
    p, j = step(job(**over), pods)
    assert p.status.phase == Phase.FAILED
    assert cond(p.status, "Invalid") == ("True", "InvalidSpec")
    event = next(e for e in p.of(Event) if e.reason == "InvalidSpec")
    assert event.type == "Warning" and field in event.message and "fix" in event.message
    assert p.of(DeletePod) == [DeletePod("j-worker-0", "JobFinished")]
    # No loop: the same generation again does nothing.
    assert plan(j, [], NOW).actions == []


def test_fixed_spec_recovers_from_invalid() -> None:
    p = plan(job(minReplicas=5, maxReplicas=2), [], NOW)
    fixed = dataclasses.replace(job(generation=2), status=p.status)
    p2 = plan(fixed, [], NOW)
    assert cond(p2.status, "Invalid") == ("False", "SpecValid")
    assert p2.status.phase == Phase.PENDING
    assert len(p2.of(CreatePod)) == 2


# ----------------------------------------------------------------------------- observe_pod


def test_observe_pod_reads_labels_status_and_termination_message() -> None:
    raw = {
        "metadata": {
            "name": "j-worker-2",
            "labels": {labels.JOB_NAME: "j", labels.REPLICA_INDEX: "2"},
            "annotations": {labels.FAILURE_RECORDED_AT: "2026-01-01T12:00:00Z"},
        },
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"state": {"terminated": {"exitCode": 0}}},
                {"state": {"terminated": {"exitCode": 3, "reason": "Error", "message": "x"}}},
            ],
        },
    }
    view = observe_pod(raw)
    assert (view.index, view.phase, view.exit_code) == (2, "Failed", 3)
    assert view.termination_message == "x" and view.termination_reason == "Error"
    assert view.failure_recorded_at == NOW
    assert observe_pod({"metadata": {"name": "p"}}).index is None


# ----------------------------------------------------------------------------- properties


pod_phases = st.sampled_from(["Pending", "Running", "Running", "Failed", "Unknown"])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[JobView, list[PodView], datetime]:
    minimum = draw(st.integers(1, 4))
    maximum = draw(st.integers(minimum, 8))
    replicas = draw(st.one_of(st.none(), st.integers(0, 12)))
    indices = draw(st.sets(st.integers(0, 10), max_size=8))
    pods = []
    for i in sorted(indices):
        phase = draw(pod_phases)
        recorded = NOW - timedelta(seconds=draw(st.integers(0, 100))) if phase == "Failed" else None
        if phase == "Failed" and draw(st.booleans()):
            recorded = None
        pods.append(
            pod(
                i,
                phase,
                phase == "Running" and draw(st.booleans()),
                failure_recorded_at=recorded,
                terminating=draw(st.integers(0, 9)) == 0,
            )
        )
    restarts = draw(st.integers(0, 5))
    j = job(
        replicas=replicas,
        minReplicas=minimum,
        maxReplicas=maximum,
        maxRestarts=draw(st.integers(0, 20)),
        status=ElasticJobStatus(restarts=restarts),
    )
    return j, pods, NOW + timedelta(seconds=draw(st.integers(0, 120)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_property_applying_a_plan_reaches_a_fixed_point(
    scenario: tuple[JobView, list[PodView], datetime],
) -> None:
    """Apply, plan again at the same instant: no actions, same status (after terminating pods,
    which only the API server removes, are gone)."""
    j, pods, now = scenario
    p, j = step(j, pods, now)
    pods = [x for x in apply(p, pods, now) if not x.terminating]
    p2, j2 = step(j, pods, now)
    pods = apply(p2, pods, now)  # a terminating pod that blocked an index is gone now
    p3 = plan(j2, pods, now)
    assert p3.actions == []
    assert p3.status == p2.status


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_property_worker_count_never_leaves_bounds(
    scenario: tuple[JobView, list[PodView], datetime],
) -> None:
    j, pods, now = scenario
    p = plan(j, pods, now)
    after = [x for x in apply(p, pods, now) if not x.terminating]
    if p.status.phase in (Phase.FAILED, Phase.SUCCEEDED):
        assert after == []
        return
    spec = j.spec
    wanted = spec.get("replicas", spec["minReplicas"])
    desired = max(spec["minReplicas"], min(spec["maxReplicas"], wanted))
    assert all(x.index is not None and x.index < desired for x in after)
    assert len({x.index for x in after}) == len(after)
    # Only a terminating pod or a failed worker in its backoff may leave an index empty.
    present = {x.index for x in after} | {x.index for x in pods if x.terminating}
    assert present >= set(range(desired))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10), min_size=1, max_size=6, unique=True), st.integers(1, 4))
def test_property_scale_down_deletes_exactly_the_highest(indices: list[int], target: int) -> None:
    pods = [pod(i) for i in indices]
    p = plan(job(replicas=target, minReplicas=1, maxReplicas=8), pods, NOW)
    deleted = [a.name for a in p.of(DeletePod)]
    expected = [f"j-worker-{i}" for i in sorted(indices, reverse=True) if i >= target]
    assert deleted == expected


def test_failure_report_round_trip_through_pod_status() -> None:
    report = FailureReport("ProcessHung", "no heartbeat for 300s", "n1", rank=0)
    raw = {
        "metadata": {"name": "j-worker-0", "labels": {labels.REPLICA_INDEX: "0"}},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"state": {"terminated": {"exitCode": 1, "message": report.to_json()}}}
            ],
        },
    }
    p = plan(job(), [observe_pod(raw)], NOW)
    assert p.status.lastFailure is not None
    assert json.loads(report.to_json())["reason"] == p.status.lastFailure.reason


@st.composite
def histories(draw: st.DrawFn) -> tuple[JobView, list[tuple[str, int, int]]]:
    minimum = draw(st.integers(1, 3))
    j = job(replicas=draw(st.integers(0, 6)), minReplicas=minimum,
            maxReplicas=draw(st.integers(minimum, 6)), maxRestarts=draw(st.integers(0, 4)),
            belowMinTimeoutSeconds=draw(st.integers(1, 30)))
    kinds = st.sampled_from(["ready", "fail", "succeed", "depart", "complete", "scale",
                             "tick"])
    steps = draw(st.lists(st.tuples(kinds, st.integers(0, 6), st.integers(0, 40)),
                          min_size=1, max_size=25))
    return j, steps


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_property_histories_keep_invariants(
    history: tuple[JobView, list[tuple[str, int, int]]],
) -> None:
    """Random kubelet/user histories: restarts never drop and match the failures seen (a
    departure or an exit 0 is never counted), no index is ever doubled, the job is Succeeded
    only after a completion, terminal jobs end with no workers, and plans always converge."""
    j, steps = history
    now = NOW
    pods: list[PodView] = []
    failures = 0
    generation = 1
    record: Completion | None = None
    for kind, arg, seconds in steps:
        now += timedelta(seconds=seconds)
        target = next((p for p in pods if p.index == arg % max(len(pods), 1)), None)
        if kind == "ready" and target and target.phase == "Pending":
            pods = [dataclasses.replace(p, phase="Running", ready=True) if p is target else p
                    for p in pods]
        elif kind == "fail" and target and target.phase in ("Pending", "Running"):
            failures += 1
            pods = [dataclasses.replace(p, phase="Failed", ready=False) if p is target else p
                    for p in pods]
        elif kind == "succeed" and target and target.phase == "Running":
            pods = [dataclasses.replace(p, phase="Succeeded", ready=False) if p is target else p
                    for p in pods]
        elif kind == "depart" and target and target.phase in ("Pending", "Running"):
            pods = [dataclasses.replace(p, phase="Failed", ready=False, departed=True,
                                        termination_reason="Evicted") if p is target else p
                    for p in pods]
        elif kind == "complete" and target and target.phase == "Running" and record is None:
            record = completion(*(p.index or 0 for p in pods if p.phase == "Running"),
                                writer=target.index, at=now)
            pods = [completed(p.index or 0, record) if p is target else p for p in pods]
        elif kind == "scale":
            generation += 1
            j = dataclasses.replace(j, generation=generation, spec={**j.spec, "replicas": arg})
        before = j.status.restarts
        for _ in range(3):  # a few reconciles per step, as events would trigger
            p, j = step(j, pods, now)
            pods = apply(p, pods, now)
            assert j.status.restarts >= before
            indices = [x.index for x in pods]
            assert len(indices) == len(set(indices))
            assert len(pods) <= j.spec["maxReplicas"]
        assert j.status.restarts <= failures
        if record is None:
            assert j.status.phase != Phase.SUCCEEDED
        if j.status.phase in (Phase.FAILED, Phase.SUCCEEDED):
            assert pods == []
        assert plan(j, pods, now).of(CreatePod) == []  # converged for this instant


def test_agent_reports_from_etcd_show_once_and_are_not_counted() -> None:
    t = NOW.timestamp()
    first = FailureReport("ProcessHung", "no heartbeat", "j-worker-1-77-abc123", rank=2,
                          timestamp=t - 30)
    second = FailureReport("ProcessCrashed", "segfault", "j-worker-0-12-def456", timestamp=t - 5)
    pods = [pod(0), pod(1)]
    p, j = step(job(), pods, reported_failures=[second, first])
    reported = [e for e in p.of(Event) if e.reason == "WorkerReportedFailure"]
    assert [e.message.split(" reported ")[0] for e in reported] == [
        "worker j-worker-1 (rank 2)", "worker j-worker-0"]
    assert p.status.lastFailure is not None
    assert (p.status.lastFailure.pod, p.status.lastFailure.reason) == ("j-worker-0",
                                                                        "ProcessCrashed")
    assert p.status.restarts == 0
    again = plan(j, pods, NOW, reported_failures=[first, second])
    assert again.actions == [] and again.status == j.status
    # A pod failure observed later is newer than both reports: they stay shown once.
    failed_pods = [pod(0), failed(1, first.to_json())]
    p3 = plan(j, failed_pods, NOW, reported_failures=[first, second])
    assert [e.reason for e in p3.of(Event)].count("WorkerReportedFailure") == 0
    assert p3.status.lastFailure is not None and p3.status.lastFailure.pod == "j-worker-1"


def test_report_from_an_unknown_node_keeps_its_id() -> None:
    report = FailureReport("PeerLost", "lease expired", "laptop-1", timestamp=NOW.timestamp())
    p = plan(job(), [pod(0), pod(1)], NOW + timedelta(seconds=1), reported_failures=[report])
    assert p.status.lastFailure is not None and p.status.lastFailure.pod == "laptop-1"
