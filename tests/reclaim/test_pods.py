"""The reclaim controller's pod index: what a check selects from the watch-fed entries is what
the LIST it replaced returned, and entries made one event at a time equal a rebuild."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from elastic_operator import labels
from elastic_operator.api.kernelreclaim import KernelReclaimPolicySpec, LabelSelector
from elastic_operator.reclaim import pods
from elastic_operator.reclaim.plan import decide_all
from elastic_operator.reclaim.rule import KernelFacts
from kube_emulator.apiserver.selectors import LabelSelector as ServerSelector

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
KEYS = ["app", "tier", "kernel_id"]
VALUES = ["a", "b", "c"]

_labels = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)
_requirement = st.one_of(
    st.builds(lambda k, op: {"key": k, "operator": op}, st.sampled_from(KEYS),
              st.sampled_from(["Exists", "DoesNotExist"])),
    st.builds(lambda k, op, v: {"key": k, "operator": op, "values": v}, st.sampled_from(KEYS),
              st.sampled_from(["In", "NotIn"]),
              st.lists(st.sampled_from(VALUES), min_size=1, max_size=2, unique=True)),
)
_selector = st.builds(lambda m, e: LabelSelector.model_validate(
    {"matchLabels": m, "matchExpressions": e}), _labels, st.lists(_requirement, max_size=3))


@settings(max_examples=300, deadline=None)
@given(_selector, _labels)
def test_selecting_from_the_index_matches_what_the_api_server_lists(
        selector: LabelSelector, pod_labels: dict[str, str]) -> None:
    # The emulator's selector is the API server's judge of the query the LIST sent.
    assert selector.matches(pod_labels) == ServerSelector.parse(selector.query()).matches(
        pod_labels)


def body(name: str, kernel: str, gpus: int, phase: str, mark: bool) -> dict[str, Any]:
    annotations = {labels.RECLAIM_AT: "2026-01-01T12:30:00Z"} if mark else {}
    return {
        "metadata": {"name": name, "namespace": "ns", "annotations": annotations,
                     "creationTimestamp": "2026-01-01T10:00:00Z",
                     "labels": {"app": "enterprise-gateway", "component": "kernel",
                                "kernel_id": kernel}},
        "spec": {"containers": [{"name": "k",
                                 "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
        "status": {"phase": phase},
    }


_events = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 2),
                             st.sampled_from(["Running", "Pending", "Succeeded"]),
                             st.booleans(), st.booleans()), max_size=30)


@settings(max_examples=150, deadline=None)
@given(_events)
def test_entries_kept_per_event_decide_like_a_rebuild_from_the_final_bodies(
        events: list[tuple[str, int, str, bool, bool]]) -> None:
    """The index replaces one pod's entry per event and drops finished or deleted pods
    (kopf's ``when`` filter); a check over it decides as one over a fresh listing."""
    index: dict[str, pods.ObservedPod] = {}
    final: dict[str, dict[str, Any]] = {}
    spec = KernelReclaimPolicySpec.model_validate(
        {"jupyter": {"url": "http://j:8888"}, "idleAfter": "10m", "minRunning": "0s"})
    for name, gpus, phase, mark, delete in events:
        if delete:
            index.pop(name, None)
            final.pop(name, None)
            continue
        obj = body(name, f"k{name}", gpus, phase, mark)
        final[name] = obj
        if pods.is_finished(obj):
            index.pop(name, None)
        else:
            index[name] = pods.observe(obj)
    kernels = [KernelFacts(f"k{n}", "idle", NOW - timedelta(hours=1), 0) for n in "abcd"]
    listed = [pods.observe(b) for b in final.values()]
    assert decide_all(pods.select(index.values(), spec.selector), kernels, {}, spec, NOW) == \
        decide_all(pods.select(listed, spec.selector), kernels, {}, spec, NOW)
