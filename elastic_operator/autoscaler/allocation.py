"""One allocation: rules 1-6 of :mod:`~elastic_operator.autoscaler.policy` over one capacity.

A decision allocates twice, against the capacity now and against the floor (the least each
node offered since the previous decision), so the work that does not depend on the GPUs
offered is done once, by :class:`Prepared`: the jobs' workers by index, what give-back and
the leaving workers release, the pending units in placement order, and what preemption may
take on each node. Each :meth:`Prepared.allocate` then costs the placement itself: about one
fit per pending unit and per worker grown (see :mod:`~elastic_operator.autoscaler.pool`), and
what preemption takes (see :mod:`~elastic_operator.autoscaler.preemption`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping

from elastic_operator.autoscaler.ledger import Ledger
from elastic_operator.autoscaler.model import (
    DEFAULT_SETTINGS,
    PROTECTED_PRIORITY,
    Allocation,
    Capacity,
    Demand,
    JobState,
    Kind,
    PolicySettings,
    Unit,
    Worker,
    plural,
)
from elastic_operator.autoscaler.pool import Pool
from elastic_operator.autoscaler.preemption import Candidate, Preemption, Rank, worker_rank


class Prepared:
    """Everything of one decision's allocations that the pool does not change (rules 1-4:
    who is touched, what leaves, give-back, the order of demand), computed once in
    O(workers + units log units)."""

    def __init__(self, jobs: Iterable[JobState], demands: Iterable[Demand], now: float,
                 settings: PolicySettings = DEFAULT_SETTINGS,
                 hold: frozenset[str] = frozenset()) -> None:
        self.jobs = {j.key: j for j in jobs}
        self.now = now
        self.settings = settings
        self.hold = hold
        self.workers: dict[str, Mapping[int, Worker]] = {}
        self.replicas: dict[str, int] = {}
        self.kinds: dict[str, Kind] = {}
        self.reasons: dict[str, str] = {}
        # GPUs that bound workers leaving the plan release: those at or above their job's
        # target (the operator removes them, or give-back dropped them).
        self.released: list[tuple[str, int]] = []
        # Per node, the GPUs of the bound workers preemption may take (see Preemption).
        self.held: dict[str, int] = {}
        self._takeable: list[tuple[JobState, Worker]] = []
        self._bound_candidates: dict[str, list[Candidate]] | None = None
        for job in self.jobs.values():
            self.workers[job.key] = job.by_index
            raw = self._give_back(job) if job.managed else job.replicas
            self.replicas[job.key] = raw
            lowest = job.min_replicas if job.managed else raw  # the first takeable index
            for w in job.bound:
                if w.index >= raw:
                    self.released.append((w.node, job.gpus_per_worker))
                elif w.index >= lowest:
                    self.held[w.node] = self.held.get(w.node, 0) + job.gpus_per_worker
                    self._takeable.append((job, w))
        self.victims: list[tuple[Rank, str]] = [
            (worker_rank(j, self.replicas[j.key] - 1), j.key) for j in self.jobs.values()
            if j.managed and self.replicas[j.key] > j.min_replicas]
        heapq.heapify(self.victims)
        # Any managed job's worker frees at least this many GPUs (see Preemption).
        self.least_worker = min((j.gpus_per_worker for j in self.jobs.values() if j.managed),
                                default=0)
        self.units = self._units(demands)

    def bound_candidates(self) -> dict[str, list[Candidate]]:
        """The bound workers preemption may take, as candidates per node; built on first use
        (many decisions preempt nothing) and shared by both allocations."""
        if self._bound_candidates is None:
            self._bound_candidates = {}
            for job, w in self._takeable:
                self._bound_candidates.setdefault(str(w.node), []).append(
                    (worker_rank(job, w.index), w.index))
        return self._bound_candidates

    def _give_back(self, job: JobState) -> int:
        """Rule 3: replicas Unschedulable past the job's timeout are given back; its new
        replicas."""
        stuck = sum(1 for since in job.unschedulable_extras
                    if self.now - since >= job.unschedulable_timeout_s)
        if not stuck:
            return job.replicas
        self.kinds[job.key] = Kind.GIVE_BACK
        self.reasons[job.key] = (
            f"{plural(stuck, 'worker pod')} Unschedulable for more than "
            f"{job.unschedulable_timeout_s:g}s: giving the replicas back")
        return max(job.min_replicas, job.replicas - stuck)

    def _units(self, demands: Iterable[Demand]) -> list[Unit]:
        """Rule 4's order: priority, minimums before extras, the oldest first."""
        units = [Unit(d.key, 0, d.gpus, d.eligible, PROTECTED_PRIORITY, True, d.since)
                 for d in demands if d.gpus > 0]
        for job in self.jobs.values():
            if job.gpus_per_worker <= 0:
                continue
            raw = self.replicas[job.key]
            for index, w in job.unplaced:
                if index >= raw:
                    break  # in index order
                since = w.pending_since if w and w.pending_since is not None else self.now
                units.append(Unit(job.key, index, job.gpus_per_worker, job.eligible,
                                  job.priority, index < job.min_replicas, since))
        units.sort(key=lambda u: (-u.priority, not u.core, u.since,
                                  self.jobs[u.owner].created if u.owner in self.jobs else 0.0,
                                  u.owner, u.index))
        return units

    def allocate(self, capacity: Capacity) -> Allocation:
        """The allocation against ``capacity`` (see :func:`policy.allocate`'s guarantees)."""
        left = {n: capacity.free[n] + capacity.releasing.get(n, 0) for n in capacity.free}
        for node, gpus in self.released:
            if node in left:
                left[node] += gpus
        out = Allocation(replicas=dict(self.replicas), kinds=dict(self.kinds),
                         reasons=dict(self.reasons))
        ledger = Ledger(self.jobs, self.workers, Pool(left), out)
        preemption = Preemption(ledger, self.held, self.bound_candidates, self.victims,
                                self.least_worker)
        unmet = self._place_demand(ledger, preemption)
        self._grow(ledger, unmet, capacity.size)
        out.pool = left
        return out

    def _place_demand(self, ledger: Ledger, preemption: Preemption) -> list[Unit]:
        """Rules 4 and 5: every unit gets a node, or one made by preemption, or is unmet."""
        unmet: list[Unit] = []
        for unit in self.units:
            owner = self.jobs.get(unit.owner)
            if owner is not None and unit.index >= ledger.raw[unit.owner]:
                continue  # its job shrank (it was a victim) while demand was being placed
            node = ledger.pool.fit(unit.eligible, unit.gpus)
            if node is None and self.now - unit.since >= self.settings.preempt_after_s:
                node = preemption.make_room(unit)
            if node is None:
                unmet.append(unit)
                continue
            ledger.pool.take(node, unit.gpus)
            if owner is not None:
                ledger.reserve(unit.owner, unit.index, node)
            preemption.placed(unit, node)
        ledger.out.unmet = sorted({u.owner for u in unmet})
        return unmet

    def _grow(self, ledger: Ledger, unmet: list[Unit], sizes: Mapping[str, int]) -> None:
        """Rule 6: one worker at a time to the best-ranked job that still fits somewhere."""
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
            if (not job.managed or job.key in stuck_jobs or job.key in self.hold
                    or ledger.out.kinds.get(job.key) is not None):
                continue
            blocked = blocked_at.get(job.priority)
            if blocked is None:
                blocked = set()
                for eligible, gpus in {(u.eligible, u.gpus) for u in unmet
                                       if u.priority >= job.priority}:
                    blocked.update(n for n in eligible if sizes.get(n, math.inf) >= gpus)
                blocked_at[job.priority] = blocked
            # Jobs share a few eligible sets: subtract once per set and priority.
            allowed = allowed_for.get((job.eligible, job.priority))
            if allowed is None:
                allowed = job.eligible - blocked if blocked else job.eligible
                allowed_for[(job.eligible, job.priority)] = allowed
            heap.append((self._grow_rank(ledger, job), allowed))
        heapq.heapify(heap)
        while heap:
            rank, allowed = heap[0]
            job = self.jobs[rank[3]]
            node = None
            if ledger.raw[job.key] < job.max_replicas:
                node = ledger.pool.fit(allowed, job.gpus_per_worker)
            if node is None:
                heapq.heappop(heap)
                continue
            ledger.pool.take(node, job.gpus_per_worker)
            ledger.raw[job.key] += 1
            ledger.out.placements.setdefault(job.key, []).append(node)
            ledger.out.kinds[job.key] = Kind.GROW
            heapq.heapreplace(heap, (self._grow_rank(ledger, job), allowed))

    @staticmethod
    def _grow_rank(ledger: Ledger, job: JobState) -> tuple[float, int, float, str]:
        """Who grows next: highest priority, then fewest replicas above min, then oldest."""
        return (-job.priority, ledger.raw[job.key] - job.min_replicas, job.created, job.key)
