"""Pure decisions for one ElasticJob: (job, observed worker pods, now) -> actions and status.

Nothing here talks to the API. :func:`plan` reads a :class:`JobView` and the job's worker
pods (:class:`PodView`, built from API objects by :func:`observe_pod`) and returns a
:class:`Plan`: the pod/service actions to apply, the events to record, the status to write and
when to look again. The handlers apply a plan; they decide nothing.

Guarantees the tests check:

- **Idempotence.** Applying a plan's actions and planning again at the same instant yields no
  actions and the same status; so repeated reconciles (pod events, timers, a restarted
  operator) converge and never duplicate work.
- **Restart safety.** All state a decision needs lives in the API objects: the job's status
  (restarts, conditions with transition times) and the failed pod itself (its
  ``elastic.dev/failure-recorded-at`` annotation, set when its failure was counted). A fresh
  operator therefore neither re-counts a failure nor forgets a backoff.
- **Desired size** is ``clamp(spec.replicas or minReplicas, minReplicas, maxReplicas)``; a
  clamped user value gets an event once per generation; the spec is never rewritten.
- **Scale down** deletes the highest replica indices first (gracefully: a delete, never a
  force), so rank 0's pod, which usually holds the rendezvous master, survives longest.
- **A failed worker** is counted once (status.restarts, status.lastFailure, a Warning event
  with its FailureReport), kept for the backoff ``min(cap, base * 2**(restarts-1))`` (its logs
  stay readable meanwhile), then deleted and its index recreated. Past spec.maxRestarts the job
  is Failed (condition reason MaxRestartsExceeded).
- **Agents' reports** from etcd newer than status.lastFailure become lastFailure and one
  Warning event each; they are not counted in status.restarts (no pod was replaced).
- **Below minReplicas** ready workers for longer than spec.belowMinTimeoutSeconds after the job
  had been Ready -> Failed (reason BelowMinTimeout). The clock is the Ready condition's
  lastTransitionTime, so it survives an operator restart.
- **Success only from a completion.** A job is Succeeded only on the launcher's ``Completion``
  (from a pod's termination message, or etcd's record matching the current round), never
  because pods exited 0: a worker stopped for a resize also exits 0. Once a completion is
  known no worker is created; workers outside the completed round (spares, Pending pods) are
  deleted; when no member of that round is still running, or ``COMPLETION_GRACE`` after the
  record, the job is Succeeded and its workers are deleted.
- **Departures are not failures.** A worker that ended because it was told to go (scale-down,
  eviction, drain, node shutdown: see :mod:`elastic_operator.job.observed`), or that exited 0
  without a completion, is replaced at once (when its index is still wanted) without entering
  status.restarts or the maxRestarts budget.
- **Terminal** jobs (Failed, Succeeded) only lose their remaining workers. The exception is an
  Invalid job whose spec changed (new generation): it is validated again and recovers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from elastic_operator.api.common import Condition, set_condition
from elastic_operator.api.elasticjob import (
    ElasticJobSpec,
    ElasticJobStatus,
    Phase,
    SpecError,
    desired_replicas,
    validate_spec,
)
from elastic_operator.api.kube import now_rfc3339
from elastic_operator.job.actions import (
    Action,
    CreatePod,
    CreateService,
    DeletePod,
    Event,
    MarkFailureRecorded,
    Plan,
)
from elastic_operator.job.observed import (
    JobView,
    PodView,
    node_replica_index,
    observe_pod,
    parse_time,
    precise_time,
    reported_failure,
    worker_failure,
)
from launcher.contract import Completion, FailureReport, ResizePath

__all__ = [
    "Action", "CreatePod", "CreateService", "DeletePod", "Event", "JobView",
    "MarkFailureRecorded", "Plan", "PlannerSettings", "PodView",
    "observe_pod", "plan", "precise_time", "utcnow", "worker_failure",
]

TERMINAL = (Phase.FAILED, Phase.SUCCEEDED)

# Condition types and the reasons the planner writes.
READY, SCALING, FAILED, INVALID, SUCCEEDED = "Ready", "Scaling", "Failed", "Invalid", "Succeeded"
STARTING, MIN_READY, BELOW_MIN = "Starting", "MinReplicasReady", "BelowMinReplicas"

# How long members of the completed round may take to exit after the completion record (the
# final checkpoint, process-group teardown) before the job is Succeeded regardless.
COMPLETION_GRACE = timedelta(seconds=120)


@dataclass(frozen=True)
class PlannerSettings:
    """Operator-wide knobs of the planner (``elastic-operator run`` flags)."""

    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 60.0

    def backoff(self, restarts: int) -> float:
        """Delay before recreating a worker after the ``restarts``-th failure (1-based)."""
        exponent = max(restarts - 1, 0)
        if exponent >= 64:  # 2**64 * base is past any cap; avoids float overflow
            return self.backoff_cap_seconds
        return min(self.backoff_cap_seconds, self.backoff_base_seconds * 2**exponent)


def _spec_problem(raw: dict[str, Any]) -> tuple[ElasticJobSpec | None, SpecError | None]:
    try:
        spec = ElasticJobSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return None, SpecError(
            f"spec.{where}" if where else "spec", err["msg"], "correct the value (see the CRD)"
        )
    try:
        validate_spec(spec)
    except SpecError as exc:
        return None, exc
    return spec, None


# --------------------------------------------------------------------------- planning


def plan(
    job: JobView,
    pods: list[PodView],
    now: datetime,
    settings: PlannerSettings | None = None,
    service_present: bool = True,
    observed_round: tuple[int, int] | None = None,
    reported_failures: Sequence[FailureReport] = (),
    completion: Completion | None = None,
    resizes: Sequence[ResizePath] = (),
) -> Plan:
    """Decide what to do for ``job`` given its worker ``pods`` at ``now`` (see module doc).

    ``service_present`` says whether the job's headless Service is known to exist;
    ``observed_round`` is the last formed rendezvous round ``(generation, worldSize)`` when
    the handler could read it from etcd (else the world size is estimated from ready pods);
    ``reported_failures`` are the agents' FailureReports from etcd: one newer than
    status.lastFailure becomes lastFailure and a Warning event (failures an agent handled
    inside its pod; not counted in status.restarts, which counts replaced pods);
    ``completion`` is etcd's completion record, already checked against the current round;
    ``resizes`` are the agents' records of how they left a round (in place or by restart):
    a new generation with records for the ones it replaced becomes one Resized* event.
    """
    settings = settings or PlannerSettings()
    out = Plan(status=job.status.model_copy(deep=True))
    status = out.status
    status.selector = job.selector
    new_generation = job.generation != status.observedGeneration
    status.observedGeneration = job.generation
    live = [p for p in pods if not p.terminating]

    invalid = _condition(status, INVALID)
    recovering = invalid is not None and invalid.status == "True" and new_generation
    if status.phase in TERMINAL and not recovering:
        _finish(out, live)
        return out

    spec, problem = _spec_problem(job.spec)
    if problem is not None:
        _fail_invalid(out, live, problem, now, announce=new_generation or invalid is None)
        return out
    assert spec is not None
    if recovering:
        _set(status, INVALID, "False", "SpecValid", "the spec is valid", now)
        _set(status, FAILED, "False", "SpecValid", "the spec is valid again", now)
        status.phase = Phase.PENDING
        out.actions.append(Event("Normal", "SpecValid", "the corrected spec is valid; resuming"))

    desired = desired_replicas(spec)
    if new_generation and spec.replicas is not None and spec.replicas != desired:
        out.actions.append(
            Event(
                "Normal",
                "ReplicasClamped",
                f"spec.replicas {spec.replicas} is outside [{spec.minReplicas}, "
                f"{spec.maxReplicas}]; running {desired} workers (the spec is left as it is)",
            )
        )

    _note_reports(out, job.name, reported_failures)
    if _record_failures(out, spec, live, now):
        return out
    done = completion or next((p.completion for p in live if p.completion is not None), None)
    if done is not None and _succeed_if_done(out, job.name, live, done, now):
        return out
    ready_now = sum(1 for p in live if p.ready and p.phase == "Running")
    if done is None and ready_now < spec.minReplicas and _below_min_timeout(out, spec, now):
        _finish(out, live)
        return out
    _reconcile_pods(out, pods, live, desired, now, settings, service_present,
                    finishing=done is not None)
    _update_phase(out, spec, desired, pods, now, observed_round)
    event = resize_event((job.status.generation, job.status.worldSize), observed_round, resizes)
    if event is not None:
        out.actions.append(event)
    return out


def resize_event(before: tuple[int, int], after: tuple[int, int] | None,
                 resizes: Sequence[ResizePath]) -> Event | None:
    """The event for a change of rendezvous generation ``before`` -> ``after`` (each
    ``(generation, worldSize)``): which path the members of the rounds it replaced took, from
    their records. None when nothing changed or when no record explains the change (the
    first formation has none; nor has a change whose old members all died: the failure events
    say what happened). A status that never showed the old round (``before`` generation 0: the
    job resized before the operator read a round) still gets the event its records explain."""
    if after is None or after[0] <= before[0]:
        return None
    taken = [r for r in resizes if before[0] <= r.generation < after[0]]
    if not taken:
        return None
    in_place = sum(1 for r in taken if r.path == "in-place")
    restarted = [r for r in taken if r.path == "restart"]
    parts = [f"in place on {in_place} node(s)"] if in_place else []
    if restarted:
        parts.append(f"by restart on {len(restarted)} node(s): {restarted[0].reason}")
    return Event("Normal", "ResizedByRestart" if restarted else "ResizedInPlace",
                 f"rendezvous generation {before[0]} -> {after[0]}, world size {before[1]} -> "
                 f"{after[1]}: " + "; ".join(parts))


def _departing(pod: PodView) -> bool:
    """Ended without failing and without completing: told to go, or exited 0 unfinished."""
    return (pod.phase == "Failed" and pod.departed) or (
        pod.phase == "Succeeded" and pod.completion is None)


def _note_reports(out: Plan, job: str, reports: Sequence[FailureReport]) -> None:
    """Show agents' reports newer than status.lastFailure (each once: lastFailure dates them)."""
    status = out.status
    last = parse_time(status.lastFailure.time) if status.lastFailure else None
    for report in sorted(reports, key=lambda r: r.timestamp):
        if report.timestamp <= 0 or not report.reason:
            continue
        failure = reported_failure(job, report)
        when = parse_time(failure.time)
        if when is None or (last is not None and when <= last):
            continue
        status.lastFailure, last = failure, when
        where = f" (rank {failure.rank})" if failure.rank is not None else ""
        out.actions.append(
            Event(
                "Warning",
                "WorkerReportedFailure",
                f"worker {failure.pod}{where} reported {failure.reason}: {failure.message}"[
                    :1024
                ],
            )
        )


def _record_failures(out: Plan, spec: ElasticJobSpec, live: list[PodView], now: datetime) -> bool:
    """Count newly failed workers; return True when that made the job Failed."""
    status = out.status
    for pod in sorted(live, key=lambda p: p.name):
        if (pod.phase != "Failed" or pod.failure_recorded_at is not None or pod.index is None
                or pod.departed):
            continue
        failure = worker_failure(pod, now)
        status.restarts += 1
        status.lastFailure = failure
        out.actions.append(MarkFailureRecorded(pod.name, precise_time(now)))
        where = f" (rank {failure.rank})" if failure.rank is not None else ""
        out.actions.append(
            Event(
                "Warning",
                "WorkerFailed",
                f"worker {pod.name}{where} failed: {failure.reason}: {failure.message}"[:1024],
            )
        )
        if status.restarts > spec.maxRestarts:
            message = (
                f"worker {pod.name} failed ({failure.reason}: {failure.message[:200]}) and "
                f"that is failure {status.restarts}, more than spec.maxRestarts "
                f"{spec.maxRestarts}"
            )
            _fail(out, live, "MaxRestartsExceeded", message, now)
            return True
    return False


def _succeed_if_done(
    out: Plan, job: str, live: list[PodView], done: Completion, now: datetime
) -> bool:
    """With training completed: Succeeded once no member of the completed round still runs
    (or after COMPLETION_GRACE); True when it happened. Until then, non-members are deleted."""
    members = {node_replica_index(job, node) for node in done.members}
    running = [p for p in live if p.phase in ("Pending", "Running")]
    waiting = [p for p in running if p.index in members and p.phase == "Running"]
    recorded = datetime.fromtimestamp(done.timestamp, UTC) if done.timestamp > 0 else now
    left = (recorded + COMPLETION_GRACE - now).total_seconds()
    if waiting and left > 0:
        for pod in running:
            if pod not in waiting:
                out.actions.append(DeletePod(pod.name, "JobCompleting"))
        out.due(min(left, 5.0))
        return False
    status = out.status
    status.phase = Phase.SUCCEEDED
    message = (f"training completed in rendezvous generation {done.generation} "
               f"({len(done.members)} workers)")
    _set(status, SUCCEEDED, "True", "TrainingCompleted", message, now)
    _set(status, READY, "False", "Finished", "the job finished", now)
    _set(status, SCALING, "False", "Finished", "the job finished", now)
    out.actions.append(Event("Normal", "Succeeded", f"{message}; deleting the workers"))
    _finish(out, live)
    return True


def _reconcile_pods(
    out: Plan,
    pods: list[PodView],
    live: list[PodView],
    desired: int,
    now: datetime,
    settings: PlannerSettings,
    service_present: bool,
    finishing: bool,
) -> None:
    """Scale down, replace departed workers, restart failed ones after their backoff, scale
    up; in that order. ``finishing``: training completed, so nothing is created."""
    status = out.status
    taken = {p.index for p in pods if p.index is not None}
    if not service_present:
        out.actions.append(CreateService())

    for pod in live:
        if pod.index is None:
            out.actions.append(DeletePod(pod.name, "Orphan"))
    surplus = sorted(
        (p for p in live if p.index is not None and p.index >= desired),
        key=lambda p: p.index or 0,
        reverse=True,
    )
    for pod in surplus:
        out.actions.append(DeletePod(pod.name, "ScaleDown"))
        taken.discard(pod.index)  # gone once applied (a graceful delete keeps the name a while)
    if surplus:
        names = ", ".join(p.name for p in surplus)
        out.actions.append(Event("Normal", "ScalingDown", f"deleting {names} (desired {desired})"))

    for pod in sorted(live, key=lambda p: p.index or 0):
        if pod.index is None or pod.index >= desired or not _departing(pod):
            continue
        out.actions.append(DeletePod(pod.name, "Departed"))
        if not finishing:
            out.actions.append(CreatePod(pod.index, "Replace"))
            why = (f"told to leave: {pod.termination_reason or 'shutdown'}" if pod.departed
                   else "exited 0 before training completed")
            out.actions.append(Event("Normal", "ReplacingWorker",
                                     f"{pod.name} {why}; not a failure, recreating it"))

    delay = settings.backoff(status.restarts)
    for pod in sorted(live, key=lambda p: p.index or 0):
        if pod.phase != "Failed" or pod.index is None or pod.index >= desired or pod.departed:
            continue
        recorded = pod.failure_recorded_at or now
        wait = (recorded + timedelta(seconds=delay) - now).total_seconds()
        if wait > 0:
            out.due(wait)
            continue
        out.actions.append(DeletePod(pod.name, "Restart"))
        if not finishing:
            out.actions.append(CreatePod(pod.index, "Restart"))
            out.actions.append(
                Event("Normal", "RestartingWorker", f"recreating {pod.name} after {delay:g}s")
            )

    if finishing:
        return
    missing = [i for i in range(desired) if i not in taken]
    for index in missing:
        out.actions.append(CreatePod(index, "ScaleUp"))
    if missing:
        listed = ", ".join(str(i) for i in missing)
        out.actions.append(
            Event("Normal", "ScalingUp", f"creating workers {listed} (desired {desired})")
        )
    if missing or surplus:
        status.lastScaleTime = now_rfc3339(now)


def _below_min_timeout(out: Plan, spec: ElasticJobSpec, now: datetime) -> bool:
    """Fail a job that has been below minReplicas ready too long after being Ready."""
    ready = _condition(out.status, READY)
    if ready is None or ready.status != "False" or ready.reason != BELOW_MIN:
        return False
    since = parse_time(ready.lastTransitionTime) or now
    left = (since + timedelta(seconds=spec.belowMinTimeoutSeconds) - now).total_seconds()
    if left > 0:
        out.due(left)
        return False
    message = (
        f"fewer than spec.minReplicas {spec.minReplicas} workers ready for more than "
        f"spec.belowMinTimeoutSeconds {spec.belowMinTimeoutSeconds}s"
    )
    _fail(out, [], "BelowMinTimeout", message, now)
    return True


def _update_phase(
    out: Plan,
    spec: ElasticJobSpec,
    desired: int,
    pods: list[PodView],
    now: datetime,
    observed_round: tuple[int, int] | None,
) -> None:
    """Counts, phase and the Ready/Scaling conditions as they are once the plan is applied."""
    status = out.status
    after = _pods_after(out, pods)
    ready = sum(1 for p in after if p.ready and p.phase == "Running")
    status.replicas = len(after)
    status.readyReplicas = ready
    if observed_round is not None:
        status.generation, status.worldSize = observed_round
    else:
        status.worldSize = ready * spec.nprocPerNode

    previous = _condition(status, READY)
    if ready >= spec.minReplicas:
        _set(status, READY, "True", MIN_READY, f"{ready} of {desired} workers ready", now)
    elif previous is not None and (previous.status == "True" or previous.reason == BELOW_MIN):
        message = f"{ready} workers ready, fewer than spec.minReplicas {spec.minReplicas}"
        _set(status, READY, "False", BELOW_MIN, message, now)
        _below_min_timeout(out, spec, now)  # schedules the timeout check
    else:
        _set(status, READY, "False", STARTING, f"{ready} of {spec.minReplicas} needed ready", now)

    resizing = ready != desired or len(after) != desired
    if resizing:
        _set(status, SCALING, "True", "Resizing", f"{ready} ready, desired {desired}", now)
    else:
        _set(status, SCALING, "False", "AtDesiredSize", f"{desired} workers ready", now)

    if ready < spec.minReplicas:
        phase = Phase.PENDING
    elif resizing:
        phase = Phase.SCALING
    else:
        phase = Phase.RUNNING
    if phase != status.phase:
        out.actions.append(Event("Normal", phase.value, f"phase {status.phase} -> {phase}"))
        status.phase = phase


def _pods_after(out: Plan, pods: list[PodView]) -> list[PodView]:
    """The non-terminating pods once the plan's deletes and creates are applied."""
    deleted = {a.name for a in out.of(DeletePod)}
    after = [p for p in pods if not p.terminating and p.name not in deleted]
    for create in out.of(CreatePod):
        after.append(PodView(name=f"#{create.index}", index=create.index, phase="Pending"))
    return after


def _fail_invalid(
    out: Plan, live: list[PodView], problem: SpecError, now: datetime, announce: bool
) -> None:
    status = out.status
    message = str(problem)
    invalid = _condition(status, INVALID)
    if announce or invalid is None or invalid.message != message:
        text = f"{problem.field}: {problem.problem}; fix: {problem.fix}"
        out.actions.append(Event("Warning", "InvalidSpec", text))
    _set(status, INVALID, "True", "InvalidSpec", message, now)
    _fail(out, live, "InvalidSpec", message, now, event=False)


def _fail(
    out: Plan, live: list[PodView], reason: str, message: str, now: datetime, event: bool = True
) -> None:
    status = out.status
    status.phase = Phase.FAILED
    _set(status, FAILED, "True", reason, message, now)
    _set(status, READY, "False", reason, "the job failed", now)
    _set(status, SCALING, "False", reason, "the job failed", now)
    if event:
        out.actions.append(Event("Warning", reason, message[:1024]))
    _finish(out, live)


def _finish(out: Plan, live: list[PodView]) -> None:
    """A terminal job keeps no workers; its counts say so."""
    for pod in sorted(live, key=lambda p: p.index or 0, reverse=True):
        out.actions.append(DeletePod(pod.name, "JobFinished"))
    out.status.replicas = 0
    out.status.readyReplicas = 0


def _condition(status: ElasticJobStatus, kind: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == kind), None)


def _set(
    status: ElasticJobStatus, kind: str, value: str, reason: str, message: str, now: datetime
) -> None:
    new = Condition(type=kind, status=value, reason=reason, message=message)  # type: ignore[arg-type]
    status.conditions = set_condition(status.conditions, new, now)


def utcnow() -> datetime:
    """The planner's clock (UTC, aware); handlers pass it in so tests can choose theirs."""
    return datetime.now(UTC)
