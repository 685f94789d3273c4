"""The autoscaler's pure policy: table-driven rules and properties over random clusters."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from elastic_operator.autoscaler.allocation import Prepared
from elastic_operator.autoscaler.policy import (
    Allocation,
    Capacity,
    Demand,
    JobMemory,
    JobState,
    Kind,
    PolicySettings,
    Worker,
    allocate,
    best_fit,
    decide,
)
from elastic_operator.autoscaler.pool import Pool
from tests.autoscaler import reference_policy

NOW = 1000.0
OLD = NOW - 3600.0  # long enough ago for every grace and timeout
ALL = frozenset({"n1", "n2", "n3", "n4"})


def job(key: str, *, replicas: int, on: list[str | None] | None = None, min_r: int = 1,
        max_r: int = 8, gpus: int = 1, priority: int = 0, created: float = 0.0,
        enabled: bool = True, window: float = 0.0, timeout: float = 120.0,
        pending_since: float = OLD, eligible: frozenset[str] = ALL) -> JobState:
    """A job whose worker ``i`` is bound to ``on[i]`` (None: pending since ``pending_since``)."""
    placed = on if on is not None else []
    workers = tuple(Worker(i, n, None if n else pending_since, None if n else pending_since)
                    for i, n in enumerate(placed))
    return JobState(key, min_r, max_r, replicas, gpus, priority, created, enabled, eligible,
                    workers, window, timeout)


def cap(**free: int) -> Capacity:
    return Capacity(free=free, size={n: 8 for n in free})


def test_grows_into_free_gpus_on_the_node_and_says_where() -> None:
    # 8-GPU node, 2 GPUs held by another pod, the job's one worker holds 1: 5 free.
    d = decide([job("ns/a", replicas=1, on=["n1"])], [], cap(n1=5), {}, NOW)
    target = d.targets["ns/a"]
    assert (target.replicas, target.kind) == (6, Kind.GROW)
    assert "5 GPUs free on n1" in target.reason


def test_disabled_or_cpu_only_jobs_are_never_touched() -> None:
    jobs = [job("ns/off", replicas=1, on=["n1"], enabled=False),
            job("ns/cpu", replicas=1, on=["n1"], gpus=0)]
    assert decide(jobs, [], cap(n1=8), {}, NOW).targets == {}


def test_growth_stops_at_max_and_needs_whole_workers_per_node() -> None:
    d = decide([job("ns/a", replicas=1, on=["n1"], max_r=3)], [], cap(n1=7), {}, NOW)
    assert d.targets["ns/a"].replicas == 3
    # 2-GPU workers: 1 + 1 + 1 free GPUs on three nodes fit no worker although 3 are free.
    d = decide([job("ns/a", replicas=1, on=["n1"], gpus=2)], [], cap(n1=1, n2=1, n3=1), {}, NOW)
    assert d.targets == {}
    d = decide([job("ns/a", replicas=1, on=["n1"], gpus=2)], [], cap(n1=3, n2=3), {}, NOW)
    assert d.targets["ns/a"].replicas == 3


def test_only_eligible_nodes_count() -> None:
    a = job("ns/a", replicas=1, on=["n1"], eligible=frozenset({"n1"}))
    d = decide([a], [], cap(n1=1, n2=8), {}, NOW)
    assert d.targets["ns/a"].replicas == 2


def test_free_gpus_go_by_priority_first() -> None:
    low = job("ns/low", replicas=1, on=["n1"], priority=0)
    high = job("ns/high", replicas=1, on=["n1"], priority=5, max_r=3)
    d = decide([low, high], [], cap(n1=4), {}, NOW)
    assert d.targets["ns/high"].replicas == 3
    assert d.targets["ns/low"].replicas == 3


def test_equal_priority_shares_round_robin_by_fewest_above_min_then_age() -> None:
    a = job("ns/a", replicas=1, on=["n1"], created=1.0)
    b = job("ns/b", replicas=3, on=["n1", "n1", "n1"], min_r=3, created=2.0)
    d = decide([a, b], [], cap(n1=5), {}, NOW)
    # a gets the 1st (older), b the 2nd, a the 3rd, b the 4th, a the 5th.
    assert d.targets["ns/a"].replicas == 4 and d.targets["ns/b"].replicas == 5


def test_higher_priority_pending_workers_shrink_lower_jobs_but_never_below_min() -> None:
    low = job("ns/low", replicas=8, on=["n1"] * 8, min_r=1)
    high = job("ns/high", replicas=2, on=[None, None], min_r=2, priority=10, enabled=False)
    d = decide([low, high], [], cap(n1=0), {}, NOW)
    target = d.targets["ns/low"]
    assert (target.replicas, target.kind) == (6, Kind.PREEMPT)
    assert "ns/high" in target.reason and "priority 10" in target.reason
    assert "ns/high" not in d.targets  # not autoscaled: only its pods count as demand

    floor = job("ns/low", replicas=8, on=["n1"] * 8, min_r=7)
    d = decide([floor, replace(high, min_replicas=4, replicas=4,
                               workers=tuple(Worker(i, None, OLD) for i in range(4)))],
               [], cap(n1=0), {}, NOW)
    assert d.targets["ns/low"].replicas == 7


def test_young_demand_gets_a_grace_to_be_bound_before_anyone_shrinks() -> None:
    low = job("ns/low", replicas=8, on=["n1"] * 8)
    high = job("ns/high", replicas=1, on=[None], priority=1, pending_since=NOW - 1)
    assert decide([low, high], [], cap(n1=0), {}, NOW,
                  PolicySettings(preempt_after_s=5)).targets == {}
    assert decide([low, high], [], cap(n1=0), {}, NOW,
                  PolicySettings(preempt_after_s=0)).targets["ns/low"].replicas == 7


def test_not_yet_created_workers_reserve_their_gpus() -> None:
    # new has replicas 3 but no pods yet: those 3 GPUs are spoken for, a grows into 1 only.
    new = job("ns/new", replicas=3, on=[], min_r=3, enabled=False)
    a = job("ns/a", replicas=1, on=["n1"])
    assert decide([a, new], [], cap(n1=4), {}, NOW).targets["ns/a"].replicas == 2


def test_protected_pod_outranks_every_job() -> None:
    low = job("ns/low", replicas=8, on=["n1"] * 8, priority=100)
    pod = Demand("ns/notebook", 2, frozenset({"n1"}), OLD)
    d = decide([low], [pod], cap(n1=0), {}, NOW)
    assert d.targets["ns/low"].replicas == 6 and "protected pod ns/notebook" in \
        d.targets["ns/low"].reason


def test_equal_priority_minimums_go_before_extras_but_extras_do_not_preempt() -> None:
    a = job("ns/a", replicas=8, on=["n1"] * 8, created=1.0)
    b = job("ns/b", replicas=4, on=[None] * 4, min_r=2, created=2.0, enabled=False)
    d = decide([a, b], [], cap(n1=0), {}, NOW)
    assert d.targets["ns/a"].replicas == 6  # only b's two minimum workers


def test_a_demand_that_cannot_fit_even_with_preemption_shrinks_nobody() -> None:
    low = job("ns/low", replicas=4, on=["n1"] * 4)
    big = Demand("ns/big", 6, frozenset({"n1"}), OLD)  # low can free at most 3
    assert decide([low], [big], cap(n1=0), {}, NOW).targets == {}


def test_preemption_keeps_victims_whose_gpus_were_on_the_wrong_node() -> None:
    v1 = job("ns/v1", replicas=7, on=["n1"] * 7, created=1.0)  # 6 above min, on n1
    v2 = job("ns/v2", replicas=5, on=["n2"] * 5, created=2.0)  # 4 above min, on n2
    demand = Demand("ns/p", 1, frozenset({"n2"}), OLD)
    d = decide([v1, v2], [demand], cap(n1=0, n2=0), {}, NOW)
    assert "ns/v1" not in d.targets
    assert d.targets["ns/v2"].replicas == 4


def test_growth_leaves_room_for_unmet_demand_of_higher_priority() -> None:
    # A 4-GPU pod waits (too young to preempt); the free 3 GPUs on its node stay free.
    low = job("ns/low", replicas=1, on=["n1"])
    pod = Demand("ns/p", 4, frozenset({"n1"}), NOW)
    assert decide([low], [pod], cap(n1=3, n2=2), {}, NOW).targets["ns/low"].replicas == 3


def test_unschedulable_replicas_are_given_back_and_growth_waits() -> None:
    a = job("ns/a", replicas=8, on=["n1"] * 6 + [None, None], timeout=120,
            pending_since=NOW - 121)
    d = decide([a], [], cap(n1=2), {}, NOW)
    target = d.targets["ns/a"]
    assert (target.replicas, target.kind) == (6, Kind.GIVE_BACK)
    assert "Unschedulable for more than 120s" in target.reason
    shrunk = job("ns/a", replicas=6, on=["n1"] * 6)
    assert decide([shrunk], [], cap(n1=2), d.memory, NOW + 10).targets == {}
    assert decide([shrunk], [], cap(n1=2), d.memory, NOW + 121).targets["ns/a"].replicas == 8
    young = replace(a, workers=(*a.workers[:6], Worker(6, None, OLD, NOW - 60),
                                Worker(7, None, OLD, NOW - 60)))
    assert "ns/a" not in decide([young], [], cap(n1=0), {}, NOW).targets


def test_growth_waits_for_the_window_and_takes_the_smallest_size_seen() -> None:
    a = job("ns/a", replicas=1, on=["n1"], window=60)
    mem: dict[str, JobMemory] = {}
    for t, free in [(0, 4), (20, 2), (40, 4)]:
        d = decide([a], [], cap(n1=free), mem, NOW + t)
        assert d.targets == {}
        assert d.wake_at == NOW + 60  # decide again when the window ends, not a period later
        mem = d.memory
    d = decide([a], [], cap(n1=4), mem, NOW + 60)
    assert d.targets["ns/a"].replicas == 3  # 2 free at t=20 is the least in the window
    assert d.wake_at is None
    # Nothing to grow into: no window open, nothing to wake for.
    assert decide([a], [], cap(n1=0), {}, NOW).wake_at is None


def test_a_freed_gpu_that_returns_within_the_window_causes_no_resize() -> None:
    a = job("ns/a", replicas=4, on=["n1"] * 4, window=30)
    mem: dict[str, JobMemory] = {}
    for t in range(0, 300, 5):
        free = 2 if (t // 20) % 2 == 0 else 0  # 20 s free, 20 s taken
        d = decide([a], [], cap(n1=free), mem, NOW + t)
        assert d.targets == {}, t
        mem = d.memory


def test_gpus_taken_and_freed_between_decisions_reset_the_window_through_the_floor() -> None:
    # Every decision happens to see the 2 GPUs free, but each time they were taken meanwhile.
    a = job("ns/a", replicas=6, on=["n1"] * 6, window=6)
    mem: dict[str, JobMemory] = {}
    for t in range(0, 30):
        d = decide([a], [], cap(n1=2), mem, NOW + t, floor=cap(n1=0))
        assert d.targets == {}, t
        assert d.wake_at == NOW + t  # decide again now, from a fresh floor
        mem = d.memory
    # Once the floor agrees for a whole window, the job grows, to the least the floor allowed.
    for t in range(30, 37):
        d = decide([a], [], cap(n1=2), mem, NOW + t, floor=cap(n1=1 if t == 31 else 2))
        mem = d.memory
    assert d.targets["ns/a"].replicas == 7


def test_the_floor_never_causes_a_shrink_or_growth_beyond_the_current_capacity() -> None:
    a = job("ns/a", replicas=4, on=["n1"] * 4, window=0)
    assert decide([a], [], cap(n1=0), {}, NOW, floor=cap(n1=0)).targets == {}
    d = decide([a], [], cap(n1=1), {}, NOW, floor=cap(n1=3))
    assert d.targets["ns/a"].replicas == 5
    high = job("ns/high", replicas=2, on=["n1", None], priority=10, min_r=2)
    low = job("ns/low", replicas=4, on=["n1"] * 4)
    d = decide([high, low], [], cap(n1=0), {}, NOW, floor=cap(n1=0))
    assert d.targets["ns/low"].replicas == 3 and d.targets["ns/low"].kind is Kind.PREEMPT


def test_memory_forgets_jobs_that_are_gone() -> None:
    mem = {"ns/gone": JobMemory()}
    assert "ns/gone" not in decide([], [], cap(n1=1), mem, NOW).memory


def test_best_fit_prefers_the_tightest_node_then_name() -> None:
    assert best_fit({"a": 4, "b": 2, "c": 2}, ["a", "b", "c"], 2) == "b"
    assert best_fit({"a": 1}, ["a", "z"], 2) is None


# ---- properties ------------------------------------------------------------------------------

Case = tuple[list[JobState], list[Demand], Capacity, dict[str, int]]


@st.composite
def clusters(draw: st.DrawFn, max_nodes: int = 4, max_jobs: int = 4) -> Case:
    """Random nodes, jobs with workers bound where they fit, foreign usage and demands."""
    names = [f"n{i}" for i in range(draw(st.integers(1, max_nodes)))]
    size = {n: draw(st.integers(0, 8)) for n in names}
    free = dict(size)
    for n in names:  # foreign pods
        free[n] -= draw(st.integers(0, size[n]))
    jobs = []
    for k in range(draw(st.integers(1, max_jobs))):
        g = draw(st.integers(1, 3))
        lo = draw(st.integers(1, 3))
        hi = draw(st.integers(lo, 8))
        reps = draw(st.integers(lo, hi))
        eligible = frozenset(draw(st.sets(st.sampled_from(names), min_size=1)))
        workers = []
        for i in range(reps):
            node = best_fit(free, eligible, g)
            if node is not None and draw(st.booleans()):
                free[node] -= g
            else:
                node = None
            since = None if node else NOW - draw(st.integers(0, 300))
            workers.append(Worker(i, node, since, since if draw(st.booleans()) else None))
        jobs.append(JobState(f"ns/j{k}", lo, hi, reps, g, draw(st.integers(0, 2)),
                             float(k), draw(st.booleans()), eligible, tuple(workers),
                             0.0, 120.0))
    demands = [Demand(f"ns/p{i}", draw(st.integers(1, 4)),
                      frozenset(draw(st.sets(st.sampled_from(names), min_size=1))),
                      NOW - draw(st.integers(0, 60)))
               for i in range(draw(st.integers(0, 2)))]
    return jobs, demands, Capacity(free=free, size=size), size


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_targets_stay_in_bounds_and_never_touch_unmanaged_jobs(case: Case) -> None:
    jobs, demands, capacity, _ = case
    d = decide(jobs, demands, capacity, {}, NOW)
    by_key = {j.key: j for j in jobs}
    for key, target in d.targets.items():
        j = by_key[key]
        assert j.managed
        assert j.min_replicas <= target.replicas <= j.max_replicas
        assert target.replicas != j.replicas
    for j in jobs:
        if not j.managed:
            assert d.allocation.replicas[j.key] == j.replicas


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_conservation_no_node_gives_more_than_it_has(case: Case) -> None:
    jobs, demands, capacity, size = case
    alloc = allocate(jobs, demands, capacity, NOW)
    assert all(left >= 0 for left in alloc.pool.values())
    # Independent check: what the kept workers and the new ones hold fits every node.
    used = {n: size[n] - capacity.free[n] - sum(
        j.gpus_per_worker for j in jobs for w in j.workers if w.node == n) for n in size}
    for j in jobs:
        for w in j.workers:
            if w.node and w.index < alloc.replicas[j.key]:
                used[w.node] += j.gpus_per_worker
        for n in alloc.placements.get(j.key, []):
            used[n] += j.gpus_per_worker
    assert all(used[n] <= size[n] for n in size), (used, size)


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_a_lower_priority_job_grows_only_when_higher_ones_cannot(case: Case) -> None:
    jobs, _, capacity, _ = case
    alloc = allocate(jobs, [], capacity, NOW)
    if alloc.unmet:
        return
    grew = [j for j in jobs if alloc.kinds.get(j.key) is Kind.GROW]
    for low in grew:
        for high in jobs:
            if high.managed and high.priority > low.priority and high.key not in alloc.kinds:
                assert alloc.replicas[high.key] == high.max_replicas or best_fit(
                    alloc.pool, high.eligible, high.gpus_per_worker) is None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=5, max_size=40),
       st.integers(10, 60))
def test_fluctuating_capacity_only_grows_into_gpus_free_for_a_whole_window(
        foreign: list[tuple[int, int]], window: int) -> None:
    # An 8-GPU node where other pods hold `held` GPUs at each decision (window/3 apart), and
    # held for a moment `between` GPUs more since the previous decision. Nothing needs the
    # job's GPUs back, so it must never shrink; and whenever it grows to v, v workers fitted at
    # every moment of the window before.
    a = job("ns/a", replicas=2, on=["n1", "n1"], window=float(window))
    mem: dict[str, JobMemory] = {}
    seen: list[tuple[float, int]] = []  # (time, workers the job could have had)
    for step, (held, between) in enumerate(foreign):
        now = NOW + step * window / 3
        free = max(0, 8 - held - a.replicas)
        lowest = max(0, free - between)
        seen.append((now, a.replicas + lowest))
        d = decide([a], [], cap(n1=free), mem, now, floor=cap(n1=lowest))
        mem = d.memory
        target = d.targets.get("ns/a")
        if target is None:
            continue
        assert target.kind is Kind.GROW
        assert all(room >= target.replicas for t, room in seen if t >= now - window)
        assert seen[0][0] <= now - window
        a = replace(a, replicas=target.replicas,
                    workers=tuple(Worker(i, "n1") for i in range(target.replicas)))


def _outcome(alloc: Allocation) -> tuple[object, ...]:
    return (alloc.replicas, alloc.kinds, alloc.reasons, alloc.placements, alloc.pool,
            alloc.unmet)


@settings(max_examples=300, deadline=None)
@given(st.one_of(clusters(), clusters(max_nodes=8, max_jobs=8)), st.booleans(),
       st.integers(0, 3))
def test_allocate_decides_as_the_plain_reference(case: Case, everyone_enabled: bool,
                                                 lower: int) -> None:
    """The fast allocation (fit index, ceiling, direct victim search, shared preparation)
    makes the decisions of the rules written plainly (tests/autoscaler/reference_policy.py),
    against the capacity and, from the same preparation, against a lower floor."""
    jobs, demands, capacity, _ = case
    if everyone_enabled:
        jobs = [replace(j, enabled=True) for j in jobs]
    now, knobs = NOW + 400, PolicySettings(preempt_after_s=5)
    floor = Capacity(free={n: max(0, f - lower) for n, f in capacity.free.items()},
                     size=capacity.size)
    prepared = Prepared(jobs, demands, now, knobs)
    for offered in (capacity, floor):
        assert _outcome(prepared.allocate(offered)) == \
            _outcome(reference_policy.allocate(jobs, demands, offered, now, knobs))
    assert _outcome(allocate(jobs, demands, capacity, NOW)) == \
        _outcome(reference_policy.allocate(jobs, demands, capacity, NOW))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([f"n{i}" for i in range(6)]), st.integers(0, 8),
                       min_size=1),
       st.lists(st.tuples(st.sampled_from(["fit", "take", "give"]),
                          st.sets(st.sampled_from([f"n{i}" for i in range(6)]), min_size=1),
                          st.integers(1, 4)), max_size=40))
def test_pool_fits_as_best_fit_through_takes_and_gives(
        left: dict[str, int], steps: list[tuple[str, set[str], int]]) -> None:
    pool, plain = Pool(dict(left)), dict(left)
    for op, nodes, gpus in steps:
        eligible = frozenset(nodes)
        node = pool.fit(eligible, gpus)
        assert node == best_fit(plain, eligible, gpus)
        if node is None or op == "fit":
            continue
        change = -gpus if op == "take" else gpus
        (pool.take if op == "take" else pool.give)(node, gpus)
        plain[node] += change
        assert pool.left == plain
