"""The autoscaler's decision, as pure functions: (jobs, demands, capacity, memory, now) -> targets.

No I/O and no clock: the caller passes ``now`` and the memory returned by the previous call, so
every rule below is a table-driven or property-based test.

Rules, in the order they are applied (:func:`allocate`):

1. **Who is touched.** Only active jobs with ``spec.autoscale.enabled`` and a GPU request per
   worker get targets; every other job's pods still count as usage and as demand.
2. **Pool.** A node offers its free GPUs, plus those of terminating pods and of workers above
   their job's current ``spec.replicas`` (the operator is removing them).
3. **Give-back.** An enabled job whose worker pods above ``minReplicas`` have been
   Unschedulable (as the scheduler reported) longer than ``unschedulableTimeoutSeconds``
   drops that many replicas (never below min), and does not grow again for
   ``max(window, timeout)``, so a constraint the autoscaler does not model cannot cause a
   grow/give-back loop.
4. **Demand first.** Every wanted-but-unbound worker (pending, or not created yet) of every
   job, and every pending *protected* pod, is fitted into the pool before anything grows, in
   order: priority (protected pods above all jobs), then the job's first ``minReplicas``
   workers before its extra ones, then the oldest. A worker fits on a node it may use with room
   for all its GPUs (whole workers per node: best fit, the node left with the fewest GPUs).
5. **Shrink for others.** A demand that does not fit, and has waited ``preempt_after_s`` (a
   short grace so the scheduler can bind it first), takes workers from *victims*: enabled jobs
   of lower priority, or of equal priority when the demand is within its job's
   ``minReplicas`` (minimums go before extras). Victims shrink from their highest replica index
   (the one the operator removes), lowest priority first, then the one furthest above its min,
   then the newest; never below min. Workers taken needlessly (their GPUs were on another
   node) are given back; if the demand cannot fit even then, nobody shrinks for it.
6. **Grow into what is left**, one worker at a time: to the highest priority, then the job
   with the fewest replicas above its min, then the oldest (round-robin fairness), up to
   ``maxReplicas``. A job with an unplaced worker of its own, a job that is shrinking, and
   nodes that an unmet demand of the same or higher priority could use are left out, so growth
   never takes the room a waiting pod needs.

:func:`decide` then applies the stabilization window to growth (shrinks happen at once):
a job grows only when the allocation wanted it larger at every decision of the last
``stabilizationWindowSeconds``, and only to the smallest size wanted in that window. A GPU that
is freed and taken again within the window resets the streak, so it causes no resize at all.
Decisions are not taken at every change, so each one also gets the *floor*: the least every
node offered since the previous decision. Growth is counted only when it fits the floor too,
so GPUs that were taken and freed again between two decisions also reset the streak.

Where the rules live: :mod:`~elastic_operator.autoscaler.model` holds the inputs and the
allocation's outcome, :mod:`~elastic_operator.autoscaler.allocation` rules 1-4 and 6,
:mod:`~elastic_operator.autoscaler.preemption` rule 5, and this module the stabilization and
the entry points (:func:`allocate`, :func:`decide`), so callers import the policy from here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from elastic_operator.autoscaler.allocation import Prepared
from elastic_operator.autoscaler.model import (
    DEFAULT_SETTINGS,
    PROTECTED_PRIORITY,
    Allocation,
    Capacity,
    Demand,
    JobState,
    Kind,
    PolicySettings,
    Worker,
    plural,
)
from elastic_operator.autoscaler.pool import best_fit

__all__ = [
    "PROTECTED_PRIORITY", "Allocation", "Capacity", "Decision", "Demand", "JobMemory",
    "JobState", "Kind", "PolicySettings", "Streak", "Target", "Worker", "allocate", "best_fit",
    "decide",
]


@dataclass(frozen=True)
class Streak:
    """Decisions since ``since`` that all wanted the job larger: (time, wanted replicas)."""

    since: float
    samples: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True)
class JobMemory:
    """What :func:`decide` remembers of one job between calls."""

    streak: Streak | None = None
    hold_growth_until: float = -math.inf


@dataclass(frozen=True)
class Target:
    """A resize of one job: from ``previous`` to ``replicas``, with a human-readable reason."""

    replicas: int
    previous: int
    kind: Kind
    reason: str


@dataclass(frozen=True)
class Decision:
    """Resizes to apply now, and the memory to pass to the next :func:`decide`."""

    targets: dict[str, Target]
    memory: dict[str, JobMemory]
    allocation: Allocation
    # When the earliest pending growth window ends (None: none pending): deciding again then
    # grows the job on time, not at the next periodic decision.
    wake_at: float | None = None


def allocate(jobs: Iterable[JobState], demands: Iterable[Demand], capacity: Capacity, now: float,
             settings: PolicySettings = DEFAULT_SETTINGS,
             hold: frozenset[str] = frozenset()) -> Allocation:
    """Raw target replicas of every job by the rules of the module docstring.

    Guarantees: a managed job's target is within [min, max] and a job that is not managed keeps
    its replicas; new workers and reserved demand never exceed any node's pool; ``hold`` jobs
    do not grow.
    """
    return Prepared(jobs, demands, now, settings, hold).allocate(capacity)


def _describe_growth(nodes: list[str], gpus_per_worker: int, window_s: float) -> str:
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n] = counts.get(n, 0) + gpus_per_worker
    where = ", ".join(f"{plural(c, 'GPU')} free on {n}" for n, c in sorted(counts.items()))
    return f"{where} for {window_s:g}s"


def decide(jobs: Iterable[JobState], demands: Iterable[Demand], capacity: Capacity,
           memory: Mapping[str, JobMemory], now: float,
           settings: PolicySettings = DEFAULT_SETTINGS, floor: Capacity | None = None) -> Decision:
    """Resizes to make now, with the growth stabilization of the module docstring.

    ``floor`` is the least capacity seen since the previous call (None: only ``capacity``).
    Guarantees (on top of :func:`allocate`'s): only managed jobs get targets; a target differs
    from the job's replicas; growth waits until every decision in the job's window wanted it
    larger, from both ``capacity`` and ``floor``, and takes the smallest size wanted in that
    window, so targets never exceed the current allocation; shrinks are immediate and come
    from ``capacity`` alone. The returned memory holds only jobs passed in; ``wake_at`` is the
    end of the earliest window still open.
    """
    jobs = list(jobs)
    hold = frozenset(k for k, m in memory.items() if m.hold_growth_until > now)
    # Both allocations share what does not depend on the GPUs offered (see allocation.py).
    prepared = Prepared(jobs, demands, now, settings, hold)
    alloc = prepared.allocate(capacity)
    lowest = alloc
    # The floor only caps growth: when nothing would grow, it cannot change a target.
    if floor is not None and floor != capacity and any(
            alloc.replicas[j.key] > j.replicas for j in jobs if j.managed):
        lowest = prepared.allocate(floor)
    targets: dict[str, Target] = {}
    new_memory: dict[str, JobMemory] = {}
    wake_at: float | None = None
    for job in jobs:
        if not job.managed:
            continue
        mem = memory.get(job.key, JobMemory())
        want, have = alloc.replicas[job.key], job.replicas
        kind = alloc.kinds.get(job.key)
        if want < have:
            hold_until = mem.hold_growth_until
            if kind is Kind.GIVE_BACK:
                hold_until = now + max(job.window_s, job.unschedulable_timeout_s)
            new_memory[job.key] = JobMemory(None, hold_until)
            targets[job.key] = Target(want, have, kind or Kind.PREEMPT,
                                      f"shrink {have}->{want}: {alloc.reasons.get(job.key, '')}")
            continue
        capped = min(want, lowest.replicas[job.key])
        if capped <= have:
            if want > have:
                # Only the floor said no: the GPUs were not free all along since the previous
                # decision (also when they have just appeared). Decide again at once, from a
                # floor that starts now, so the window starts without waiting for a period.
                wake_at = now if wake_at is None else min(wake_at, now)
            new_memory[job.key] = replace(mem, streak=None)
            continue
        want = capped
        streak = mem.streak or Streak(since=now)
        recent = (s for s in streak.samples if s[0] >= now - job.window_s)
        samples = (*recent, (now, want))
        new_memory[job.key] = replace(mem, streak=Streak(streak.since, samples))
        if now - streak.since < job.window_s:
            due = streak.since + job.window_s
            wake_at = due if wake_at is None else min(wake_at, due)
            continue
        grow_to = min(v for _, v in samples)
        if grow_to > have:
            nodes = alloc.placements.get(job.key, [])[: grow_to - have]
            targets[job.key] = Target(
                grow_to, have, Kind.GROW,
                f"grow {have}->{grow_to}: "
                f"{_describe_growth(nodes, job.gpus_per_worker, job.window_s)}")
    return Decision(targets, new_memory, alloc, wake_at)
