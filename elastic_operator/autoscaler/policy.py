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
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

PROTECTED_PRIORITY = math.inf  # protected pods outrank every job
_DIRECT_AFTER = 4  # takes for one unit before preemption searches its victim directly


@dataclass(frozen=True)
class Worker:
    """One live (not terminating) worker pod of a job."""

    index: int
    node: str | None = None  # bound node; None while pending
    pending_since: float | None = None  # when it started waiting for a node (its creation)
    # When the scheduler said it fits no node (PodScheduled=False, reason Unschedulable).
    unschedulable_since: float | None = None


@dataclass(frozen=True)
class JobState:
    """What the policy needs of one ElasticJob (``replicas`` already clamped to [min, max])."""

    key: str
    min_replicas: int
    max_replicas: int
    replicas: int
    gpus_per_worker: int
    priority: int = 0
    created: float = 0.0
    enabled: bool = True
    eligible: frozenset[str] = frozenset()
    workers: tuple[Worker, ...] = ()
    window_s: float = 60.0
    unschedulable_timeout_s: float = 120.0

    @property
    def managed(self) -> bool:
        """The autoscaler may move this job's replicas."""
        return self.enabled and self.gpus_per_worker > 0


@dataclass(frozen=True)
class Demand:
    """A pending pod of a protected class that is not an ElasticJob worker."""

    key: str
    gpus: int
    eligible: frozenset[str]
    since: float


@dataclass(frozen=True)
class Capacity:
    """Free and soon-free (``releasing``) GPUs per schedulable node, and each node's size."""

    free: Mapping[str, int]
    releasing: Mapping[str, int] = field(default_factory=dict)
    size: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicySettings:
    """Cluster-wide knobs; per-job ones live in ``spec.autoscale``."""

    preempt_after_s: float = 5.0


class Kind(StrEnum):
    GROW = "grow"
    PREEMPT = "preempt"
    GIVE_BACK = "give-back"


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


@dataclass
class Allocation:
    """Raw (unstabilized) outcome of :func:`allocate`."""

    replicas: dict[str, int]
    kinds: dict[str, Kind] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    # New workers per job, in the order placed: node names.
    placements: dict[str, list[str]] = field(default_factory=dict)
    # GPUs of the pool each node had left after all decisions.
    pool: dict[str, int] = field(default_factory=dict)
    unmet: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Decision:
    """Resizes to apply now, and the memory to pass to the next :func:`decide`."""

    targets: dict[str, Target]
    memory: dict[str, JobMemory]
    allocation: Allocation


@dataclass
class _Unit:
    """One worker (or protected pod) that wants a node."""

    owner: str  # job key, or the protected pod's key
    index: int
    gpus: int
    eligible: frozenset[str]
    priority: float
    core: bool  # within its job's minReplicas (or protected)
    since: float


def best_fit(pool: Mapping[str, int], eligible: Iterable[str], gpus: int) -> str | None:
    """The eligible node with room for ``gpus`` that keeps the fewest left (ties: by name)."""
    fits = [(pool[n] - gpus, n) for n in eligible if n in pool and pool[n] >= gpus]
    return min(fits)[1] if fits else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class _Allocator:
    """The mutable state of one :func:`allocate` call."""

    def __init__(self, jobs: list[JobState], capacity: Capacity, hold: frozenset[str],
                 now: float, settings: PolicySettings) -> None:
        self.jobs = {j.key: j for j in jobs}
        self.now = now
        self.settings = settings
        self.hold = hold
        self.pool = {n: capacity.free[n] + capacity.releasing.get(n, 0) for n in capacity.free}
        # Nodes by the GPUs they have left (none: absent), so a fit tests a few buckets with
        # set intersections instead of every node a unit may use (see _fit).
        self.left: dict[int, set[str]] = {}
        self.gives = 0  # pool increases so far (see _fit)
        self.misses: dict[tuple[frozenset[str], int], int] = {}
        self.hopeless: set[tuple[frozenset[str], int]] = set()  # see _could_fit
        for n, left in self.pool.items():
            if left > 0:
                self.left.setdefault(left, set()).add(n)
        self.size = dict(capacity.size)
        self.raw = {j.key: j.replicas for j in jobs}
        self.out = Allocation(replicas=self.raw)
        self.reserved: dict[tuple[str, int], str] = {}  # (job, index) -> node
        self.workers = {j.key: {w.index: w for w in j.workers} for j in jobs}
        self.victims: set[str] = set()
        self.bound: dict[str, int] = {}  # see place_demand
        self.victim_heap: list[tuple[tuple[float, int, float, str], str]] = []
        # (job, index) of the workers above their job's min bound or reserved on each node;
        # entries go stale when a reservation moves (checked on use, see _first_helpful).
        self.on_node: dict[str, list[tuple[str, int]]] = {}
        # Any managed job's worker frees at least this many GPUs (see _preempt_for).
        self.least_worker = min((j.gpus_per_worker for j in jobs if j.managed), default=0)

    # -- steps -------------------------------------------------------------------------------
    def release_leaving(self) -> None:
        for job in self.jobs.values():
            for w in job.workers:
                if w.node in self.pool and w.index >= job.replicas:
                    self._give(w.node, job.gpus_per_worker)

    def give_back(self) -> None:
        for job in self.jobs.values():
            if not job.managed:
                continue
            stuck = [w for w in job.workers
                     if w.node is None and job.min_replicas <= w.index < job.replicas
                     and w.unschedulable_since is not None
                     and self.now - w.unschedulable_since >= job.unschedulable_timeout_s]
            if not stuck:
                continue
            new = max(job.min_replicas, job.replicas - len(stuck))
            for index in range(new, job.replicas):
                self._free_worker(job, index)
            self.raw[job.key] = new
            self.out.kinds[job.key] = Kind.GIVE_BACK
            self.out.reasons[job.key] = (
                f"{_plural(len(stuck), 'worker pod')} Unschedulable for more than "
                f"{job.unschedulable_timeout_s:g}s: giving the replicas back")

    def units(self, demands: Iterable[Demand]) -> list[_Unit]:
        units = [_Unit(d.key, 0, d.gpus, d.eligible, PROTECTED_PRIORITY, True, d.since)
                 for d in demands if d.gpus > 0]
        for job in self.jobs.values():
            if job.gpus_per_worker <= 0:
                continue
            for index in range(self.raw[job.key]):
                w = self.workers[job.key].get(index)
                if w is not None and w.node is not None:
                    continue
                since = w.pending_since if w and w.pending_since is not None else self.now
                units.append(_Unit(job.key, index, job.gpus_per_worker, job.eligible,
                                   job.priority, index < job.min_replicas, since))
        units.sort(key=lambda u: (-u.priority, not u.core, u.since,
                                  self.jobs[u.owner].created if u.owner in self.jobs else 0.0,
                                  u.owner, u.index))
        return units

    def place_demand(self, units: list[_Unit]) -> list[_Unit]:
        # Per node, the most its pool can become by preemption: what it has plus what the
        # workers above their job's min hold there. Preempting and placing such a worker
        # moves GPUs between the two and leaves the sum; placing any other unit lowers it.
        self.bound = dict(self.pool)
        for job in self.jobs.values():
            for w in job.workers:
                if w.node in self.pool and self._shrinkable(job, w.index) \
                        and w.index < self.raw[job.key]:
                    self.bound[w.node] += job.gpus_per_worker
                    self.on_node.setdefault(w.node, []).append((job.key, w.index))
        for job in self.jobs.values():
            self._offer_victim(job)
        unmet: list[_Unit] = []
        for unit in units:
            if unit.owner in self.jobs and unit.index >= self.raw[unit.owner]:
                continue  # its job shrank (it was a victim) while demand was being placed
            node = self._fit(unit.eligible, unit.gpus)
            if node is None and self.now - unit.since >= self.settings.preempt_after_s:
                node = self._preempt_for(unit)
            if node is None:
                unmet.append(unit)
                continue
            self._take(node, unit.gpus)
            if unit.owner in self.jobs:
                self._reserve(unit.owner, unit.index, node)
            if unit.owner not in self.jobs or not self._shrinkable(self.jobs[unit.owner],
                                                                   unit.index):
                self.bound[node] -= unit.gpus
        self.out.unmet = sorted({u.owner for u in unmet})
        return unmet

    def grow(self, unmet: list[_Unit]) -> None:
        stuck_jobs = {u.owner for u in unmet}
        # Growth only takes from the pool, so a job that finds no node now never will in this
        # call: candidates are taken best rank first from a heap and dropped once they do
        # not fit, instead of ranking every job again for every worker added.
        heap: list[tuple[tuple[float, int, float, str], frozenset[str]]] = []
        # A candidate owns no unmet unit (those jobs are stuck), so the nodes kept for unmet
        # demand depend on its priority alone: computed once per priority.
        blocked_at: dict[int, set[str]] = {}
        allowed_for: dict[tuple[frozenset[str], int], frozenset[str]] = {}
        for job in self.jobs.values():
            if (not job.managed or job.key in stuck_jobs or job.key in self.victims
                    or job.key in self.hold or self.out.kinds.get(job.key) is not None):
                continue
            blocked = blocked_at.get(job.priority)
            if blocked is None:
                blocked = set()
                for eligible, gpus in {(u.eligible, u.gpus) for u in unmet
                                       if u.priority >= job.priority}:
                    blocked.update(n for n in eligible if self.size.get(n, math.inf) >= gpus)
                blocked_at[job.priority] = blocked
            # Jobs share a few eligible sets: subtract once per set and priority.
            allowed = allowed_for.get((job.eligible, job.priority))
            if allowed is None:
                allowed = job.eligible - blocked if blocked else job.eligible
                allowed_for[(job.eligible, job.priority)] = allowed
            heap.append((self._grow_rank(job), allowed))
        heapq.heapify(heap)
        while heap:
            rank, allowed = heap[0]
            job = self.jobs[rank[3]]
            node = None
            if self.raw[job.key] < job.max_replicas:
                node = self._fit(allowed, job.gpus_per_worker)
            if node is None:
                heapq.heappop(heap)
                continue
            self._take(node, job.gpus_per_worker)
            self.raw[job.key] += 1
            self.out.placements.setdefault(job.key, []).append(node)
            self.out.kinds[job.key] = Kind.GROW
            heapq.heapreplace(heap, (self._grow_rank(job), allowed))

    def _grow_rank(self, job: JobState) -> tuple[float, int, float, str]:
        """Who grows next: highest priority, then fewest replicas above min, then oldest."""
        return (-job.priority, self.raw[job.key] - job.min_replicas, job.created, job.key)

    # -- the pool ----------------------------------------------------------------------------
    def _fit(self, eligible: frozenset[str], gpus: int) -> str | None:
        """:func:`best_fit` by buckets: the first bucket of at least ``gpus`` left that holds
        an eligible node has the tightest ones; ties go by name, as there. Every unit and
        managed worker asks for ``gpus >= 1``, so nodes with none left never fit."""
        # Only a give can make room, so a miss holds until the next one: most pending units
        # of a full cluster share their eligible set and miss alike.
        if self.misses.get((eligible, gpus)) == self.gives:
            return None
        for left in sorted(k for k in self.left if k >= gpus):
            hits = self.left[left] & eligible
            if hits:
                return min(hits)
        self.misses[(eligible, gpus)] = self.gives
        return None

    def _move(self, node: str, before: int) -> None:
        if before > 0:
            bucket = self.left[before]
            bucket.discard(node)
            if not bucket:
                del self.left[before]
        if self.pool[node] > 0:
            self.left.setdefault(self.pool[node], set()).add(node)

    def _take(self, node: str, gpus: int) -> None:
        self.pool[node] -= gpus
        self._move(node, self.pool[node] + gpus)

    def _give(self, node: str, gpus: int) -> None:
        self.gives += 1
        self.pool[node] += gpus
        self._move(node, self.pool[node] - gpus)

    # -- preemption --------------------------------------------------------------------------
    def _victim_rank(self, v: JobState) -> tuple[float, int, float, str]:
        """Who shrinks first: lowest priority, then the furthest above its min, the newest."""
        return (v.priority, -(self.raw[v.key] - v.min_replicas), -v.created, v.key)

    def _offer_victim(self, v: JobState) -> None:
        """(Re)enter a job in the victim heap after its replicas changed; entries of its
        earlier sizes go stale (see :meth:`_pop_victim`)."""
        if v.managed and self.raw[v.key] > v.min_replicas:
            heapq.heappush(self.victim_heap, (self._victim_rank(v), v.key))

    def _pop_victim(self, unit: _Unit) -> JobState | None:
        """The next job to shrink for ``unit``: the best-ranked managed job above its min,
        other than the unit's own, of lower priority (or equal when the unit is within its
        job's min). The heap outlives the unit: only the jobs whose size changed are
        entered again, so a unit costs what it takes, not a pass over every job."""
        aside = []
        found = None
        while self.victim_heap:
            rank, key = self.victim_heap[0]
            v = self.jobs[key]
            if self.raw[key] <= v.min_replicas or rank != self._victim_rank(v):
                heapq.heappop(self.victim_heap)  # stale: the job's size changed since
                continue
            if not (v.priority < unit.priority or (v.priority == unit.priority and unit.core)):
                break  # ranked by priority first: every later job is disallowed too
            heapq.heappop(self.victim_heap)
            if key == unit.owner:
                aside.append((rank, key))
                continue
            found = v
            break
        for entry in aside:
            heapq.heappush(self.victim_heap, entry)
        return found

    def _first_helpful(self, unit: _Unit) -> tuple[JobState, int] | None:
        """The first worker the victim order of :meth:`_pop_victim` would take that frees
        GPUs on a node ``unit`` may use: (its job, its index), or None when there is none.

        Taking worker ``i`` of job ``v`` comes at rank (priority, -(i + 1 - min), -created,
        key), as each take lowers the job by one; the least such rank over the workers on
        the unit's nodes is the first of them the loop reaches.
        """
        best: tuple[tuple[float, int, float, str], JobState, int] | None = None
        for n in unit.eligible:
            if n not in self.pool:
                continue
            for key, index in self.on_node.get(n, ()):
                v = self.jobs[key]
                if not (v.min_replicas <= index < self.raw[key]) or key == unit.owner \
                        or not (v.priority < unit.priority
                                or (v.priority == unit.priority and unit.core)):
                    continue
                w = self.workers[key].get(index)
                where = w.node if w is not None and w.node is not None else \
                    self.reserved.get((key, index))
                if where != n:
                    continue  # a reservation that moved
                rank = (v.priority, -(index + 1 - v.min_replicas), -v.created, key)
                if best is None or rank < best[0]:
                    best = (rank, v, index)
        return None if best is None else (best[1], best[2])

    def _reserve(self, key: str, index: int, node: str) -> None:
        self.reserved[(key, index)] = node
        if self._shrinkable(self.jobs[key], index):
            self.on_node.setdefault(node, []).append((key, index))

    def _could_fit(self, unit: _Unit) -> bool:
        """Whether some node the unit may use would have room if every worker above its
        job's min were taken (:attr:`bound` is that ceiling per node). The ceiling never
        rises, so a unit that cannot fit tells the same of every later one like it."""
        if (unit.eligible, unit.gpus) in self.hopeless:
            return False
        if any(self.bound.get(n, 0) >= unit.gpus for n in unit.eligible):
            return True
        self.hopeless.add((unit.eligible, unit.gpus))
        return False

    def _shrinkable(self, job: JobState, index: int) -> bool:
        """A worker that preemption may take: of a managed job and above its min."""
        return job.managed and index >= job.min_replicas

    def _free_worker(self, job: JobState, index: int) -> str | None:
        """Take worker ``index`` out of the plan; the node whose GPUs it gave back, if any."""
        w = self.workers[job.key].get(index)
        node = w.node if w is not None and w.node is not None else self.reserved.pop(
            (job.key, index), None)
        if node is not None and node in self.pool:
            self._give(node, job.gpus_per_worker)
            return node
        return None

    def _preempt_for(self, unit: _Unit) -> str | None:
        if not self._could_fit(unit):
            return None  # taking every victim would not make room: nobody shrinks for it
        before = dict(self.raw)
        taken: list[tuple[JobState, int, str | None]] = []
        node = None
        while node is None:
            if unit.gpus <= self.least_worker and len(taken) >= _DIRECT_AFTER:
                # Any worker freed on a node the unit may use makes it fit, and the takes
                # before the first such worker are all given back below: after a few, find
                # that worker directly and take its job's workers down to it, as the loop
                # would. (Direct search costs the workers on the unit's nodes: a pass over
                # the cluster when they are many, so the loop tries first.)
                first = self._first_helpful(unit)
                if first is None:
                    break  # the loop would take every victim; all are given back below
                victim, stop = first
                for index in range(self.raw[victim.key] - 1, stop - 1, -1):
                    taken.append((victim, index, self._free_worker(victim, index)))
                self.raw[victim.key] = stop
                self._offer_victim(victim)
                node = taken[-1][2]
                break
            victim = self._pop_victim(unit)
            if victim is None:
                break
            index = self.raw[victim.key] - 1
            freed = self._free_worker(victim, index)
            taken.append((victim, index, freed))
            self.raw[victim.key] = index
            self._offer_victim(victim)
            # Nothing fitted before this take and only ``freed`` gained GPUs: it is the one
            # node that may fit now (what best_fit over all of them would find).
            if freed in unit.eligible and self.pool[freed] >= unit.gpus:
                node = freed
        # Give back what did not help: per victim, lowest index first (the operator removes
        # the highest indexes, so a victim can only keep a prefix of what it lost).
        for victim, index, freed in sorted(taken, key=lambda t: (t[0].key, t[1])):
            if self.raw[victim.key] != index:
                continue  # a lower index of this victim could not be restored
            if node is not None and freed == node and self.pool[node] - victim.gpus_per_worker \
                    < unit.gpus:
                continue
            if freed is not None:
                if self.pool[freed] < victim.gpus_per_worker:
                    continue
                self._take(freed, victim.gpus_per_worker)
                if self.workers[victim.key].get(index) is None or \
                        self.workers[victim.key][index].node is None:
                    self._reserve(victim.key, index, freed)
            self.raw[victim.key] = index + 1
            self._offer_victim(victim)
        if node is None:
            return None
        node = self._fit(unit.eligible, unit.gpus)
        for victim in {v.key: v for v, _, _ in taken}.values():
            if self.raw[victim.key] < before[victim.key]:
                self.victims.add(victim.key)
                self.out.kinds[victim.key] = Kind.PREEMPT
                what = "protected pod" if unit.owner not in self.jobs else "job"
                self.out.reasons.setdefault(
                    victim.key,
                    f"making room for {what} {unit.owner} (priority "
                    f"{'protected' if math.isinf(unit.priority) else int(unit.priority)}, "
                    f"{_plural(unit.gpus, 'GPU')} per pod pending)")
        return node


def allocate(jobs: Iterable[JobState], demands: Iterable[Demand], capacity: Capacity, now: float,
             settings: PolicySettings = PolicySettings(),
             hold: frozenset[str] = frozenset()) -> Allocation:
    """Raw target replicas of every job by the rules of the module docstring.

    Guarantees: a managed job's target is within [min, max] and a job that is not managed keeps
    its replicas; new workers and reserved demand never exceed any node's pool; ``hold`` jobs
    do not grow.
    """
    state = _Allocator(list(jobs), capacity, hold, now, settings)
    state.release_leaving()
    state.give_back()
    unmet = state.place_demand(state.units(demands))
    state.grow(unmet)
    state.out.pool = state.pool
    return state.out


def _describe_growth(nodes: list[str], gpus_per_worker: int, window_s: float) -> str:
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n] = counts.get(n, 0) + gpus_per_worker
    where = ", ".join(f"{_plural(c, 'GPU')} free on {n}" for n, c in sorted(counts.items()))
    return f"{where} for {window_s:g}s"


def decide(jobs: Iterable[JobState], demands: Iterable[Demand], capacity: Capacity,
           memory: Mapping[str, JobMemory], now: float,
           settings: PolicySettings = PolicySettings(), floor: Capacity | None = None) -> Decision:
    """Resizes to make now, with the growth stabilization of the module docstring.

    ``floor`` is the least capacity seen since the previous call (None: only ``capacity``).
    Guarantees (on top of :func:`allocate`'s): only managed jobs get targets; a target differs
    from the job's replicas; growth waits until every decision in the job's window wanted it
    larger, from both ``capacity`` and ``floor``, and takes the smallest size wanted in that
    window, so targets never exceed the current allocation; shrinks are immediate and come
    from ``capacity`` alone. The returned memory holds only jobs passed in.
    """
    jobs, demands = list(jobs), list(demands)
    hold = frozenset(k for k, m in memory.items() if m.hold_growth_until > now)
    alloc = allocate(jobs, demands, capacity, now, settings, hold)
    lowest = alloc
    if floor is not None and floor != capacity:
        lowest = allocate(jobs, demands, floor, now, settings, hold)
    targets: dict[str, Target] = {}
    new_memory: dict[str, JobMemory] = {}
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
        want = min(want, lowest.replicas[job.key])
        if want <= have:
            new_memory[job.key] = replace(mem, streak=None)
            continue
        streak = mem.streak or Streak(since=now)
        recent = (s for s in streak.samples if s[0] >= now - job.window_s)
        samples = (*recent, (now, want))
        new_memory[job.key] = replace(mem, streak=Streak(streak.since, samples))
        if now - streak.since < job.window_s:
            continue
        grow_to = min(v for _, v in samples)
        if grow_to > have:
            nodes = alloc.placements.get(job.key, [])[: grow_to - have]
            targets[job.key] = Target(
                grow_to, have, Kind.GROW,
                f"grow {have}->{grow_to}: "
                f"{_describe_growth(nodes, job.gpus_per_worker, job.window_s)}")
    return Decision(targets, new_memory, alloc)
