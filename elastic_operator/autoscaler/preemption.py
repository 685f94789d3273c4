"""Shrinking other jobs for a demand that fits nowhere (rule 5 of
:mod:`~elastic_operator.autoscaler.policy`).

The rule is a loop: take the next victim's highest worker, in *victim order* (lowest priority,
then the job furthest above its min, then the newest, then by key), until a node the demand
may use has room; give back what did not help; if nothing made room, give back everything.
Each take lowers its job by one, so the takes come in the order of a per-worker rank,
:func:`worker_rank`. :class:`Preemption` runs that loop with these shortcuts, each exact:

- **A ceiling.** Per node, the pool plus the GPUs of every worker preemption may take there.
  Taking and placing such a worker moves GPUs between the two and keeps the sum; placing any
  other unit lowers it, so it never rises: a demand no node's ceiling can hold shrinks nobody,
  and neither does a later one like it (same eligible set and GPUs).
- **A direct search** for a demand no larger than the smallest worker of any managed job: any
  worker freed on one of its nodes makes it fit, and every take before that one is given back.
  So the first worker in rank order on one of its nodes is the only one that matters; its job
  loses its workers down to it, and nobody else shrinks. The candidates of each eligible set
  are kept in a heap by rank (built on first use from the workers bound there and the
  reservations logged so far), so a search costs what it drops, not a pass over the workers.
- **One victim heap** for the whole placement (for the loop, which larger demands still run):
  a job is entered again when its size changes, so a take costs a push and a pop.

Between two demands no take is in flight and a job's replicas only fall while demand is
placed, so a candidate found taken is dropped from the heaps for good. A worker keeps its node:
bound, or reserved once and, when taken and given back, reserved again where it was.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping

from elastic_operator.autoscaler.ledger import Ledger
from elastic_operator.autoscaler.model import JobState, Kind, Unit, plural

Rank = tuple[float, int, float, str]
Candidate = tuple[Rank, int]  # (rank of the take, worker index); the rank names the job


def worker_rank(job: JobState, index: int) -> Rank:
    """When the victim loop takes worker ``index`` of ``job`` (smaller: sooner): at the rank
    the job has with ``index + 1`` replicas."""
    return (job.priority, -(index + 1 - job.min_replicas), -job.created, job.key)


def may_take(victim: JobState, unit: Unit) -> bool:
    """Priority allows ``victim`` to shrink for ``unit``: lower priority, or equal when the
    unit is within its job's min (minimums go before extras)."""
    return victim.priority < unit.priority or (victim.priority == unit.priority and unit.core)


class _Candidates:
    """The takeable workers on the nodes of one eligible set, by rank (see module docstring)."""

    def __init__(self, heap: list[Candidate], logged: int) -> None:
        self.heap = heap
        self.logged = logged  # reservations of the ledger already entered


class Preemption:
    """Rule 5 for one allocation, over its :class:`~elastic_operator.autoscaler.ledger.Ledger`.

    ``held`` is, per node, the GPUs of the workers preemption may take that are bound there;
    ``bound_candidates`` gives the same workers as :data:`Candidate` entries per node (called
    on the first direct search only); ``victims`` is a heap of (victim rank, job key) of every
    job preemption may shrink; all as the allocation starts placing demand. ``least_worker``
    is the fewest GPUs a managed job's worker holds.
    """

    def __init__(self, ledger: Ledger, held: Mapping[str, int],
                 bound_candidates: Callable[[], Mapping[str, list[Candidate]]],
                 victims: list[tuple[Rank, str]], least_worker: int) -> None:
        self.ledger = ledger
        self.ceiling = {n: left + held.get(n, 0) for n, left in ledger.pool.left.items()}
        self.bound_candidates = bound_candidates
        self.victim_heap = list(victims)  # a copy of a heap is a heap
        self.least_worker = least_worker
        self.hopeless: set[tuple[frozenset[str], int]] = set()
        self.witness: dict[tuple[frozenset[str], int], str] = {}
        self.candidates: dict[frozenset[str], _Candidates] = {}

    def placed(self, unit: Unit, node: str) -> None:
        """Keep the ceiling after ``unit`` took GPUs on ``node`` (see module docstring)."""
        job = self.ledger.jobs.get(unit.owner)
        if job is None or not job.shrinkable(unit.index):
            self.ceiling[node] -= unit.gpus

    def make_room(self, unit: Unit) -> str | None:
        """Shrink victims until ``unit`` fits; the node it fits on now, or None (nobody
        shrank). Called only when the unit fits nowhere as things stand."""
        if not self._could_fit(unit):
            return None
        ledger = self.ledger
        taken: list[tuple[JobState, int, str | None]] = []
        node = None
        if unit.gpus <= self.least_worker:
            first = self._first_helpful(unit)
            if first is None:
                return None  # the loop would take every victim and give all of them back
            victim, stop = first
            for index in range(ledger.raw[victim.key] - 1, stop - 1, -1):
                taken.append((victim, index, ledger.free_worker(victim, index)))
            ledger.raw[victim.key] = stop
            self._offer_victim(victim)
            node = taken[-1][2]
        else:
            node = self._take_until_fit(unit, taken)
        self._give_back(unit, node, taken)
        if node is None:
            return None
        node = ledger.pool.fit(unit.eligible, unit.gpus)
        what = "protected pod" if unit.owner not in ledger.jobs else "job"
        first_taken: dict[str, int] = {}
        for victim, index, _ in taken:
            first_taken.setdefault(victim.key, index)  # each job is taken from the top down
        for key, top in first_taken.items():
            if ledger.raw[key] <= top:
                ledger.out.kinds[key] = Kind.PREEMPT
                ledger.out.reasons.setdefault(
                    key,
                    f"making room for {what} {unit.owner} (priority "
                    f"{'protected' if math.isinf(unit.priority) else int(unit.priority)}, "
                    f"{plural(unit.gpus, 'GPU')} per pod pending)")
        return node

    # -- the loop ----------------------------------------------------------------------------
    def _take_until_fit(self, unit: Unit,
                        taken: list[tuple[JobState, int, str | None]]) -> str | None:
        ledger = self.ledger
        while True:
            victim = self._pop_victim(unit)
            if victim is None:
                return None
            index = ledger.raw[victim.key] - 1
            freed = ledger.free_worker(victim, index)
            taken.append((victim, index, freed))
            ledger.raw[victim.key] = index
            self._offer_victim(victim)
            # Nothing fitted before this take and only ``freed`` gained GPUs: it is the one
            # node that may fit now (what best_fit over all of them would find).
            if freed in unit.eligible and ledger.pool.left[freed] >= unit.gpus:
                return freed

    def _give_back(self, unit: Unit, node: str | None,
                   taken: list[tuple[JobState, int, str | None]]) -> None:
        """Give back the takes that did not help: per victim, lowest index first (the
        operator removes the highest indexes, so a victim can only keep a prefix of what it
        lost)."""
        ledger = self.ledger
        for victim, index, freed in sorted(taken, key=lambda t: (t[0].key, t[1])):
            if ledger.raw[victim.key] != index:
                continue  # a lower index of this victim could not be restored
            if node is not None and freed == node \
                    and ledger.pool.left[node] - victim.gpus_per_worker < unit.gpus:
                continue
            if freed is not None:
                if ledger.pool.left[freed] < victim.gpus_per_worker:
                    continue
                ledger.pool.take(freed, victim.gpus_per_worker)
                w = ledger.workers[victim.key].get(index)
                if w is None or w.node is None:
                    ledger.reserve(victim.key, index, freed)
            ledger.raw[victim.key] = index + 1
            self._offer_victim(victim)

    def _victim_rank(self, v: JobState) -> Rank:
        """Who shrinks first: lowest priority, then the furthest above its min, the newest."""
        return worker_rank(v, self.ledger.raw[v.key] - 1)

    def _offer_victim(self, v: JobState) -> None:
        """(Re)enter a job in the victim heap after its replicas changed; entries of its
        earlier sizes go stale (see :meth:`_pop_victim`)."""
        if v.managed and self.ledger.raw[v.key] > v.min_replicas:
            heapq.heappush(self.victim_heap, (self._victim_rank(v), v.key))

    def _pop_victim(self, unit: Unit) -> JobState | None:
        """The next job to shrink for ``unit``: the best-ranked managed job above its min,
        other than the unit's own, that :func:`may_take` allows."""
        aside = []
        found = None
        while self.victim_heap:
            rank, key = self.victim_heap[0]
            v = self.ledger.jobs[key]
            if self.ledger.raw[key] <= v.min_replicas or rank != self._victim_rank(v):
                heapq.heappop(self.victim_heap)  # stale: the job's size changed since
                continue
            if not may_take(v, unit):
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

    # -- the shortcuts -----------------------------------------------------------------------
    def _could_fit(self, unit: Unit) -> bool:
        """Whether some node the unit may use has a ceiling of at least its GPUs."""
        need = (unit.eligible, unit.gpus)
        if need in self.hopeless:
            return False
        seen = self.witness.get(need)
        if seen is not None and self.ceiling[seen] >= unit.gpus:
            return True
        for n in unit.eligible:
            if self.ceiling.get(n, 0) >= unit.gpus:
                self.witness[need] = n
                return True
        self.hopeless.add(need)
        return False

    def _first_helpful(self, unit: Unit) -> tuple[JobState, int] | None:
        """The first worker the victim loop would take for ``unit`` that frees GPUs on a node
        it may use: (its job, its index), or None when there is none."""
        ledger = self.ledger
        heap = self._candidates_for(unit.eligible).heap
        aside: list[Candidate] = []
        found = None
        while heap:
            rank, index = heap[0]
            key = rank[3]
            if index >= ledger.raw[key]:
                heapq.heappop(heap)  # taken
                continue
            v = ledger.jobs[key]
            if not may_take(v, unit):
                break  # by priority first: no later candidate is allowed either
            if key == unit.owner:
                aside.append(heapq.heappop(heap))
                continue
            found = (v, index)
            break
        for entry in aside:
            heapq.heappush(heap, entry)
        return found

    def _candidates_for(self, eligible: frozenset[str]) -> _Candidates:
        ledger = self.ledger
        found = self.candidates.get(eligible)
        if found is None:
            bound = self.bound_candidates()
            heap = [c for n in eligible if n in ledger.pool.left for c in bound.get(n, ())]
            heapq.heapify(heap)
            found = self.candidates[eligible] = _Candidates(heap, 0)
        log = ledger.reservations
        for key, index, node in log[found.logged:]:
            job = ledger.jobs[key]
            if node in eligible and job.shrinkable(index):
                heapq.heappush(found.heap, (worker_rank(job, index), index))
        found.logged = len(log)
        return found
