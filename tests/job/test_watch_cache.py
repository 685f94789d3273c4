"""The reconciler's view of a job's pods: the watch-fed index overlaid with its own writes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from elastic_operator.job.observed import PodView
from elastic_operator.job.watch_cache import CachedPod, Expectations, JobCache

KEY = ("ns", "j")


def pod(name: str, version: int, phase: str = "Pending", terminating: bool = False) -> CachedPod:
    view = PodView(name=name, index=int(name[-1]), phase=phase, terminating=terminating)
    return CachedPod(name, "uid", view, version)


def test_a_create_is_seen_until_the_index_shows_it() -> None:
    exp = Expectations()
    exp.wrote(KEY, pod("p0", 5), now=0.0)
    assert [p.name for p in exp.merge(KEY, [], now=1.0)] == ["p0"]
    assert exp.pending(KEY) == 1
    # The index caught up (same or newer version): its entry counts, the expectation goes.
    merged = exp.merge(KEY, [pod("p0", 7, "Running")], now=2.0)
    assert [(p.name, p.view.phase) for p in merged] == [("p0", "Running")]
    assert exp.pending(KEY) == 0


def test_an_older_index_entry_does_not_hide_our_patch() -> None:
    exp = Expectations()
    exp.wrote(KEY, pod("p1", 9, "Failed"), now=0.0)  # e.g. the failure-recorded-at mark
    merged = exp.merge(KEY, [pod("p1", 8, "Failed")], now=1.0)
    assert merged[0].version == 9 and exp.pending(KEY) == 1


def test_a_delete_marks_the_pod_terminating_until_the_watch_says_so() -> None:
    exp = Expectations()
    exp.deleted(KEY, pod("p2", 3, "Running"), now=0.0, indexed=True)
    merged = exp.merge(KEY, [pod("p2", 3, "Running")], now=1.0)
    assert merged[0].view.terminating and exp.pending(KEY) == 1
    assert exp.merge(KEY, [], now=2.0) == [] and exp.pending(KEY) == 0


def test_a_pod_deleted_before_the_watch_showed_it_stays_deleted() -> None:
    exp = Expectations()
    exp.wrote(KEY, pod("p4", 1), now=0.0)
    exp.deleted(KEY, pod("p4", 1), now=0.5, indexed=False)
    # Terminating until the watch has shown it and its deletion: its index stays taken...
    assert [p.view.terminating for p in exp.merge(KEY, [], now=1.0)] == [True]
    merged = exp.merge(KEY, [pod("p4", 1)], now=2.0)  # ...and it is not live on its ADDED
    assert merged[0].view.terminating
    assert exp.merge(KEY, [], now=3.0) == [] and exp.pending(KEY) == 0


def test_expectations_expire_and_a_lagging_watch_is_counted() -> None:
    exp = Expectations(ttl=10.0)
    exp.wrote(KEY, pod("p3", 4), now=0.0)
    assert exp.merge(KEY, [], now=11.0) == []
    assert exp.expired_unseen == 1 and exp.pending(KEY) == 0


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["create", "patch", "delete", "watch"]),
                          st.sampled_from(["p0", "p1", "p2"])), max_size=30))
def test_property_writes_are_never_lost_before_the_watch_shows_them(
        ops: list[tuple[str, str]]) -> None:
    """Whatever the order of our writes and the watch's (later, in order) deliveries, the
    merged view shows each pod as our newest write until the watch has delivered it."""
    exp = Expectations(ttl=1e9)
    truth: dict[str, CachedPod | None] = {}  # the API server's state after our writes
    delivered: dict[str, CachedPod] = {}  # what the watch-fed index holds
    pending: list[tuple[str, CachedPod | None]] = []  # writes the watch has not delivered yet
    version = 0
    for kind, name in ops:
        now = float(version)
        if kind == "watch" and pending:
            seen_name, state = pending.pop(0)
            if state is None:
                delivered.pop(seen_name, None)
            else:
                delivered[seen_name] = state
        elif kind in ("create", "patch") and (kind == "create") == (truth.get(name) is None):
            version += 1
            state = pod(name, version, "Running" if kind == "patch" else "Pending")
            truth[name] = state
            pending.append((name, state))
            exp.wrote(KEY, state, now)
        elif kind == "delete" and truth.get(name) is not None:
            last = truth[name]
            assert last is not None
            truth[name] = None
            pending.append((name, None))
            exp.deleted(KEY, last, now, indexed=name in delivered
                        and delivered[name].version == last.version)
        merged = {p.name: p for p in exp.merge(KEY, delivered.values(), now)}
        for pod_name, state in truth.items():
            if state is None:
                assert pod_name not in merged or merged[pod_name].view.terminating
            else:
                assert merged[pod_name].version == state.version


def test_job_cache_keeps_the_newest_body() -> None:
    cache = JobCache()
    cache.observe(KEY, {"metadata": {"resourceVersion": "5"}, "spec": {"replicas": 2}})
    cache.observe(KEY, {"metadata": {"resourceVersion": "4"}, "spec": {"replicas": 1}})
    assert cache.get(KEY)["spec"]["replicas"] == 2  # type: ignore[index]
    cache.observe(KEY, {"metadata": {"resourceVersion": "6"}, "spec": {"replicas": 3}})
    assert cache.get(KEY)["spec"]["replicas"] == 3  # type: ignore[index]
    assert len(cache.bodies()) == 1
    cache.forget(KEY)
    assert cache.get(KEY) is None
