"""The autoscaler's allocation written plainly, as the rules of ``policy``'s docstring read:
the judge the fast :func:`elastic_operator.autoscaler.policy.allocate` is held to.

No index, heap, ceiling or direct search: every fit scans the pool (``best_fit``), every take
ranks all jobs again, and growth ranks all jobs for every worker. Quadratic and more, so only
for small random clusters.
"""

from __future__ import annotations

import math

from elastic_operator.autoscaler.policy import (
    PROTECTED_PRIORITY,
    Allocation,
    Capacity,
    Demand,
    JobState,
    Kind,
    PolicySettings,
    best_fit,
)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def allocate(jobs: list[JobState], demands: list[Demand], capacity: Capacity, now: float,
             settings: PolicySettings = PolicySettings(),  # noqa: B008 (frozen)
             hold: frozenset[str] = frozenset()) -> Allocation:
    by_key = {j.key: j for j in jobs}
    workers = {j.key: {w.index: w for w in j.workers} for j in jobs}
    pool = {n: capacity.free[n] + capacity.releasing.get(n, 0) for n in capacity.free}
    raw = {j.key: j.replicas for j in jobs}
    out = Allocation(replicas=raw)
    reserved: dict[tuple[str, int], str] = {}

    # 2. Pool: workers above their job's replicas are leaving.
    for j in jobs:
        for w in j.workers:
            if w.node in pool and w.index >= j.replicas:
                pool[w.node] += j.gpus_per_worker

    def free(j: JobState, index: int) -> str | None:
        w = workers[j.key].get(index)
        node = w.node if w is not None and w.node is not None else reserved.pop(
            (j.key, index), None)
        if node is not None and node in pool:
            pool[node] += j.gpus_per_worker
            return node
        return None

    # 3. Give-back.
    for j in jobs:
        if not j.managed:
            continue
        stuck = [w for w in j.workers if w.node is None
                 and j.min_replicas <= w.index < j.replicas and w.unschedulable_since is not None
                 and now - w.unschedulable_since >= j.unschedulable_timeout_s]
        if stuck:
            new = max(j.min_replicas, j.replicas - len(stuck))
            for index in range(new, j.replicas):
                free(j, index)
            raw[j.key] = new
            out.kinds[j.key] = Kind.GIVE_BACK
            out.reasons[j.key] = (f"{_plural(len(stuck), 'worker pod')} Unschedulable for "
                                  f"more than {j.unschedulable_timeout_s:g}s: giving the "
                                  "replicas back")

    # 4. Demand, in order: (owner, index, gpus, eligible, priority, core, since).
    units = [(d.key, 0, d.gpus, d.eligible, PROTECTED_PRIORITY, True, d.since)
             for d in demands if d.gpus > 0]
    for j in jobs:
        if j.gpus_per_worker <= 0:
            continue
        for index in range(raw[j.key]):
            w = workers[j.key].get(index)
            if w is None or w.node is None:
                since = w.pending_since if w and w.pending_since is not None else now
                units.append((j.key, index, j.gpus_per_worker, j.eligible, j.priority,
                              index < j.min_replicas, since))
    units.sort(key=lambda u: (-u[4], not u[5], u[6],
                              by_key[u[0]].created if u[0] in by_key else 0.0, u[0], u[1]))

    def victim_order(v: JobState) -> tuple[float, int, float, str]:
        return (v.priority, -(raw[v.key] - v.min_replicas), -v.created, v.key)

    unmet = []
    for owner, index, gpus, eligible, priority, core, since in units:
        if owner in by_key and index >= raw[owner]:
            continue  # its job shrank for an earlier unit
        node = best_fit(pool, eligible, gpus)
        if node is None and now - since >= settings.preempt_after_s:
            # 5. Take victims' highest workers one at a time until the unit fits.
            taken: list[tuple[JobState, int, str | None]] = []
            fits = None
            while fits is None:
                allowed = [v for v in jobs if v.managed and raw[v.key] > v.min_replicas
                           and v.key != owner and (v.priority < priority
                                                   or (v.priority == priority and core))]
                if not allowed:
                    break
                v = min(allowed, key=victim_order)
                raw[v.key] -= 1
                freed = free(v, raw[v.key])
                taken.append((v, raw[v.key], freed))
                if freed in eligible and pool[freed] >= gpus:
                    fits = freed
            for v, i, freed in sorted(taken, key=lambda t: (t[0].key, t[1])):
                if raw[v.key] != i:
                    continue
                if fits is not None and freed == fits and pool[fits] - v.gpus_per_worker < gpus:
                    continue
                if freed is not None:
                    if pool[freed] < v.gpus_per_worker:
                        continue
                    pool[freed] -= v.gpus_per_worker
                    if workers[v.key].get(i) is None or workers[v.key][i].node is None:
                        reserved[(v.key, i)] = freed
                raw[v.key] = i + 1
            if fits is not None:
                node = best_fit(pool, eligible, gpus)
                before = {}
                for v, i, _ in taken:
                    before.setdefault(v.key, i + 1)
                for key, was in before.items():
                    if raw[key] < was:
                        out.kinds[key] = Kind.PREEMPT
                        what = "protected pod" if owner not in by_key else "job"
                        out.reasons.setdefault(
                            key, f"making room for {what} {owner} (priority "
                            f"{'protected' if math.isinf(priority) else int(priority)}, "
                            f"{_plural(gpus, 'GPU')} per pod pending)")
        if node is None:
            unmet.append((owner, gpus, eligible, priority))
            continue
        pool[node] -= gpus
        if owner in by_key:
            reserved[(owner, index)] = node
    out.unmet = sorted({u[0] for u in unmet})

    # 6. Growth, one worker at a time, every job ranked again each time.
    stuck = {u[0] for u in unmet}
    alive = [j for j in jobs if j.managed and j.key not in stuck and j.key not in hold
             and j.key not in out.kinds]
    while alive:
        j = min(alive, key=lambda j: (-j.priority, raw[j.key] - j.min_replicas, j.created,
                                      j.key))
        blocked = {n for _, gpus, eligible, priority in unmet if priority >= j.priority
                   for n in eligible if capacity.size.get(n, math.inf) >= gpus}
        node = None
        if raw[j.key] < j.max_replicas:
            node = best_fit(pool, j.eligible - blocked, j.gpus_per_worker)
        if node is None:
            alive.remove(j)  # growth only takes: it will not fit later either
            continue
        pool[node] -= j.gpus_per_worker
        raw[j.key] += 1
        out.placements.setdefault(j.key, []).append(node)
        out.kinds[j.key] = Kind.GROW
    out.pool = pool
    return out
