"""The shared Kubernetes arithmetic (``elastic_operator.api.kube``), table by table, and the
one fact it exists for: the autoscaler and the reclaim controller count a pod's GPUs alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from elastic_operator.api.kube import (
    QuantityError,
    gpu_quantity,
    parse_epoch,
    parse_time,
    pod_gpu_request,
    precise_time,
    tolerates,
)
from elastic_operator.autoscaler.capacity import PodInfo
from elastic_operator.reclaim.pods import observe
from tests.autoscaler.objects import GPU


@pytest.mark.parametrize(("value", "expected"), [(2, 2), ("2", 2), ("3000m", 3), (4.0, 4),
                                                 ("0", 0)])
def test_gpu_quantity_accepts_whole_numbers(value: Any, expected: int) -> None:
    assert gpu_quantity(value, "x") == expected


@pytest.mark.parametrize("value", ["1.5", "500m", "lots", -1, True, 0.5])
def test_gpu_quantity_refuses_fractions_and_garbage_naming_the_field(value: Any) -> None:
    with pytest.raises(QuantityError, match="containers\\[0\\]"):
        gpu_quantity(value, "containers[0]")


def test_pod_request_sums_containers_defaults_to_limits_and_takes_init_max() -> None:
    spec = {
        "containers": [
            {"name": "a", "resources": {"limits": {GPU: "2"}}},
            {"name": "b", "resources": {"requests": {GPU: 1}, "limits": {GPU: 1}}},
            {"name": "c"},
        ],
        "initContainers": [{"name": "i", "resources": {"limits": {GPU: "2"}}}],
    }
    assert pod_gpu_request(spec) == 3
    spec["initContainers"][0]["resources"]["limits"][GPU] = "5"
    assert pod_gpu_request(spec) == 5
    assert pod_gpu_request(spec, "amd.com/gpu") == 0


def test_pod_request_uses_the_configured_resource_name() -> None:
    spec = {"containers": [{"name": "a", "resources": {"limits": {"amd.com/gpu": "4"}}}]}
    assert pod_gpu_request(spec, "amd.com/gpu") == 4


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        ({"operator": "Exists"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, True),
        ({"key": "k", "operator": "Exists"}, {"key": "k", "effect": "NoExecute"}, True),
        ({"key": "k", "value": "v"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, True),
        ({"key": "k", "value": "w"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, False),
        ({"key": "k", "operator": "Exists", "effect": "NoExecute"},
         {"key": "k", "effect": "NoSchedule"}, False),
        ({"key": "other", "operator": "Exists"}, {"key": "k", "effect": "NoSchedule"}, False),
        ({"value": "v"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, False),
    ],
)
def test_tolerations_follow_kubernetes_matching(toleration: dict[str, str],
                                                taint: dict[str, str], expected: bool) -> None:
    assert tolerates([toleration], taint) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T12:00:00Z", datetime(2026, 1, 1, 12, tzinfo=UTC)),
        ("2026-01-01T12:00:00.250000Z", datetime(2026, 1, 1, 12, 0, 0, 250000, tzinfo=UTC)),
        ("2026-01-01T14:00:00+02:00", datetime(2026, 1, 1, 12, tzinfo=UTC)),
        ("2026-01-01T12:00:00", datetime(2026, 1, 1, 12, tzinfo=UTC)),  # no offset: UTC
        ("", None),
        (None, None),
        ("yesterday", None),
        (1767268800, None),  # not a string: the API never sends one
    ],
)
def test_parse_time_reads_rfc3339_as_aware_utc(text: Any, expected: datetime | None) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() == timedelta(0)
        assert parse_epoch(text) == expected.timestamp()  # type: ignore[union-attr]
    else:
        assert parse_epoch(text) is None


def test_precise_time_keeps_microseconds_and_round_trips() -> None:
    when = datetime(2026, 1, 1, 13, 0, 0, 1234, tzinfo=timezone(timedelta(hours=1)))
    assert precise_time(when) == "2026-01-01T12:00:00.001234Z"
    assert parse_time(precise_time(when)) == when


@pytest.mark.parametrize(
    ("containers", "inits", "expected"),
    [
        ([{"limits": {GPU: "2000m"}}], [], 2),
        ([{"requests": {GPU: "1"}}, {"limits": {GPU: 1}}], [], 2),
        ([{"limits": {GPU: "1"}}], [{"limits": {GPU: "4"}}], 4),
        ([{"limits": {GPU: "3"}}], [{"limits": {GPU: "1"}}, {"limits": {GPU: "2"}}], 3),
        ([{"limits": {"cpu": "500m"}}], [], 0),
        ([{"limits": {GPU: "1.5"}}], [], 0),  # invalid: both count nothing
    ],
)
def test_autoscaler_and_reclaim_count_a_pods_gpus_alike(
    containers: list[dict[str, Any]], inits: list[dict[str, Any]], expected: int
) -> None:
    spec = {"containers": [{"name": f"c{i}", "resources": r} for i, r in enumerate(containers)],
            "initContainers": [{"name": f"i{i}", "resources": r} for i, r in enumerate(inits)]}
    body = {"metadata": {"name": "p", "namespace": "ns"}, "spec": spec, "status": {}}
    assert PodInfo.from_object(body).gpus == expected
    assert observe(body).gpus(GPU) == expected
