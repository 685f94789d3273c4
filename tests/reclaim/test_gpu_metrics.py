"""The GPU verdict from DCGM samples: freshness and coverage of the window, the threshold in
percent for a percent or a ratio metric, and the Prometheus query and answer."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elastic_operator.api.kernelreclaim import GpuIdleSpec
from elastic_operator.reclaim.gpu_metrics import Series, build_query, judge, parse_matrix
from elastic_operator.reclaim.rule import GpuState

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

GPU = GpuIdleSpec(prometheusUrl="http://prom:9090", window="60s", sampleInterval="5s",
                  metricLagGrace="10s", threshold=5)


def series(pod: str, start: float, end: float, value: float, step: float = 5) -> Series:
    t0 = NOW.timestamp()
    points, t = [], t0 - start
    while t <= t0 - end + 1e-9:
        points.append((t, value))
        t += step
    return Series(pod, points)


def test_gpu_judge() -> None:
    data = [
        series("idle", 58, 2, 1.0),
        series("busy", 58, 2, 1.0), Series("busy", [(NOW.timestamp() - 30, 70.0)]),
        series("stale", 58, 30, 0.0),
        series("short", 20, 2, 0.0),
        series("two-gpus", 58, 2, 0.0), series("two-gpus", 58, 40, 0.0),
    ]
    pods = ["idle", "busy", "stale", "short", "two-gpus", "absent"]
    verdicts = judge(data, pods, GPU, NOW)
    assert {p: v.state for p, v in verdicts.items()} == {
        "idle": GpuState.IDLE, "busy": GpuState.BUSY, "stale": GpuState.UNKNOWN,
        "short": GpuState.UNKNOWN, "two-gpus": GpuState.UNKNOWN, "absent": GpuState.UNKNOWN,
    }
    assert "70%" in verdicts["busy"].detail


def flat(pod: str, value: float) -> Series:
    return series(pod, 58, 2, value)


@pytest.mark.parametrize(
    ("fields", "value", "state"),
    [
        # threshold 0: strictly zero is idle, any utilisation at all is busy.
        ({"threshold": 0}, 0.0, GpuState.IDLE),
        ({"threshold": 0}, 1.0, GpuState.BUSY),
        # A low percentage: at or below it is idle.
        ({"threshold": 10}, 10.0, GpuState.IDLE),
        ({"threshold": 10}, 11.0, GpuState.BUSY),
        # The profiling metric is a 0-1 ratio; the threshold stays in percent.
        ({"threshold": 10, "metric": "DCGM_FI_PROF_GR_ENGINE_ACTIVE"}, 0.1, GpuState.IDLE),
        ({"threshold": 10, "metric": "DCGM_FI_PROF_GR_ENGINE_ACTIVE"}, 0.11, GpuState.BUSY),
        ({"threshold": 0, "metric": "DCGM_FI_PROF_GR_ENGINE_ACTIVE"}, 0.001, GpuState.BUSY),
        ({"threshold": 12, "metric": "custom", "unit": "ratio"}, 0.12, GpuState.IDLE),
        ({"threshold": 12, "metric": "custom", "unit": "percent"}, 0.12, GpuState.IDLE),
        ({"threshold": 0, "metric": "custom", "unit": "percent"}, 0.12, GpuState.BUSY),
    ],
)
def test_gpu_threshold_and_unit(fields: dict, value: float, state: GpuState) -> None:
    spec = GPU.model_copy(update=fields)
    (verdict,) = judge([flat("p", value)], ["p"], spec, NOW).values()
    assert verdict.state == state, verdict


def test_gpu_detail_is_in_percent_for_a_ratio_metric() -> None:
    spec = GPU.model_copy(update={"metric": "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "threshold": 10})
    verdicts = judge([flat("busy", 0.37), flat("idle", 0.02)], ["busy", "idle"], spec, NOW)
    assert verdicts["busy"].detail == "peak 37% > 10%"
    assert verdicts["idle"].detail == "peak 2% <= 10% over 60s"


@settings(max_examples=200, deadline=None)
@given(percents=st.lists(st.integers(0, 100), min_size=1, max_size=12),
       threshold=st.integers(0, 100))
def test_a_ratio_metric_judges_like_its_percent_twin(percents: list[int], threshold: int) -> None:
    """The same readings as a 0-1 ratio and as a percent give the same verdict."""
    t0 = NOW.timestamp()
    step = 56 / len(percents)
    points = [(t0 - 58 + i * step, float(v)) for i, v in enumerate(percents)] + [
        (t0 - 2, float(percents[-1]))]
    as_percent = judge([Series("p", points)], ["p"], GPU.model_copy(update={
        "threshold": threshold}), NOW)["p"]
    as_ratio = judge([Series("p", [(t, v / 100) for t, v in points])], ["p"], GPU.model_copy(
        update={"threshold": threshold, "metric": "DCGM_FI_PROF_GR_ENGINE_ACTIVE"}), NOW)["p"]
    assert as_percent.state == as_ratio.state
    assert as_percent.state == (GpuState.BUSY if max(percents) > threshold else GpuState.IDLE)


def test_gpu_query_and_matrix_parsing() -> None:
    query = build_query(GPU, "ns", ["kernel-a.1", "kernel-b"])
    assert query == ('DCGM_FI_DEV_GPU_UTIL{namespace="ns",pod=~"kernel\\\\-a\\\\.1|'
                     'kernel\\\\-b"}[60s]')
    body = {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"pod": "a", "gpu": "0"}, "values": [[1.5, "3"], [2.5, "4"]]},
        {"metric": {"gpu": "1"}, "values": [[1.5, "3"]]},
    ]}}
    assert parse_matrix(body, "pod") == [Series("a", [(1.5, 3.0), (2.5, 4.0)])]
    with pytest.raises(ValueError, match="bad query"):
        parse_matrix({"status": "error", "error": "bad query"}, "pod")
