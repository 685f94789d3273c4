"""The step-gap arithmetic behind the demo's grow report and bench/rescale.py's stalls."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elastic_operator.local.resize_report import (
    GrowReport,
    StepEvent,
    first_step_at,
    grow_report,
    job_steps,
    largest_gap,
    median_step_time,
    parse_step_line,
)


def steps(*rows: tuple[float, int, int]) -> list[StepEvent]:
    return [StepEvent(at, step, world) for at, step, world in rows]


@pytest.mark.parametrize(("line", "expected"), [
    ('{"event":"step","step":12,"epoch":0,"world_size":2,"loss":0.4}', StepEvent(5.0, 12, 2)),
    ('  {"event": "step", "step": "3", "world_size": 4}\n', StepEvent(5.0, 3, 4)),
    ('{"event":"start","world_size":2}', None),
    ('{"event":"step","step":12}', None),  # no world size
    ('{"event":"step","step":"x","world_size":2}', None),
    ("{not json", None),
    ("[1, 2]", None),
    ("2026-01-01 INFO [launcher] node a: joined generation 1", None),
    ("", None),
])
def test_parse_step_line(line: str, expected: StepEvent | None) -> None:
    assert parse_step_line(line, 5.0) == expected


def test_job_steps_is_the_union_with_each_step_at_its_first_sighting() -> None:
    # Rank 0 died after step 3; the new rank 0 redid step 3 (a rollback) and went on.
    a = steps((1.0, 1, 2), (1.1, 2, 2), (1.2, 3, 2))
    b = steps((4.0, 3, 1), (4.1, 4, 1))
    assert job_steps(b + a) == steps((1.0, 1, 2), (1.1, 2, 2), (1.2, 3, 2), (4.1, 4, 1))


def test_largest_gap_counts_a_redone_step_as_no_progress() -> None:
    job = job_steps(steps((1.0, 1, 2), (1.2, 2, 2), (4.0, 2, 1), (4.1, 3, 1), (4.2, 4, 1)))
    assert largest_gap(job) == pytest.approx(2.9)  # step 2 at 1.2 -> step 3 at 4.1


@pytest.mark.parametrize(("start", "end", "expected"), [
    (float("-inf"), float("inf"), 3.0),
    (0.0, 1.5, 1.0),  # only the first two gaps overlap
    (2.0, 2.5, 3.0),  # inside the long gap: it counts whole
    (5.0, 9.0, 3.0),  # the long gap ends at 5.0, on the window's edge
    (5.1, 9.0, 0.5),
    (9.0, 10.0, None),  # after the last step
])
def test_largest_gap_in_a_window(start: float, end: float, expected: float | None) -> None:
    job = steps((0.5, 1, 2), (1.0, 2, 2), (2.0, 3, 2), (5.0, 4, 3), (5.5, 5, 3))
    result = largest_gap(job, start, end)
    assert result == (None if expected is None else pytest.approx(expected))


def test_first_step_at_a_size_after_a_time() -> None:
    job = steps((1.0, 1, 3), (2.0, 2, 2), (3.0, 3, 3), (4.0, 4, 3))
    assert first_step_at(job, 3, 1.5) == StepEvent(3.0, 3, 3)
    assert first_step_at(job, 3, 0.0) == StepEvent(1.0, 1, 3)
    assert first_step_at(job, 4, 0.0) is None
    assert first_step_at(job, 3, 4.0) is None  # strictly after


def test_median_step_time_uses_only_gaps_within_one_size() -> None:
    job = steps((0.0, 1, 2), (0.1, 2, 2), (0.2, 3, 2), (5.0, 4, 3), (5.3, 5, 3), (5.4, 6, 2),
                (5.5, 7, 2))
    assert median_step_time(job, 2) == pytest.approx(0.1)
    assert median_step_time(job, 3) == pytest.approx(0.3)
    assert median_step_time(job, 4) is None


def test_median_step_time_in_blocks_undoes_bursty_reading() -> None:
    # Lines that arrive in pairs: gaps 0, 0.2, 0, 0.2, ... The true step time is 0.1.
    job = steps(*[(0.2 * (i // 2), i, 2) for i in range(1, 43)])
    assert median_step_time(job, 2) == pytest.approx(0.2)
    assert median_step_time(job, 2, span=8) == pytest.approx(0.1)
    assert median_step_time(job, 2, span=42) is None  # 41 gaps: no whole block
    with pytest.raises(ValueError, match="span=0"):
        median_step_time(job, 2, span=0)


def test_grow_report_on_the_restart_path() -> None:
    # World 2 until GPUs appear at 10.0; it keeps stepping to 15.0, stalls, then world 3 at
    # 20.0 and world 4 at 30.0 (two resizes).
    job = steps(*[(10.0 + 0.5 * i, 20 + i, 2) for i in range(11)],  # to 15.0
                (20.0, 31, 3), (20.5, 32, 3), (30.0, 33, 4), (30.5, 34, 4))
    report = grow_report(job, gpus_added=10.2, pod_startups=[4.0, 6.0, 5.0])
    assert report == GrowReport(before=2, larger=4, to_larger_s=pytest.approx(19.8),
                                largest_gap_s=pytest.approx(9.5), pod_startup_s=5.0)
    lines = report.lines()
    assert lines[0] == "GPUs added -> first step at world size 4: 19.8s (from world size 2)"
    assert lines[1] == "survivors' largest gap between steps: 9.5s"
    assert lines[2].endswith(": 5.0s")


def test_grow_report_when_the_job_never_grew() -> None:
    report = grow_report(steps((1.0, 1, 2), (2.0, 2, 2), (3.0, 3, 1)), gpus_added=1.5,
                         pod_startups=[])
    assert (report.before, report.larger, report.to_larger_s, report.pod_startup_s) == \
        (2, None, None, None)
    assert report.largest_gap_s == pytest.approx(1.0)
    assert report.lines()[0].startswith("GPUs added -> first step at world size -: -")


events = st.lists(st.builds(StepEvent, st.floats(0, 100), st.integers(0, 30), st.integers(1, 4)),
                  max_size=40)


@given(events)
def test_job_steps_properties(raw: list[StepEvent]) -> None:
    job = job_steps(raw)
    numbers = [s.step for s in job]
    assert numbers == sorted(set(numbers)) == sorted({e.step for e in raw})
    for s in job:
        assert s.at == min(e.at for e in raw if e.step == s.step)
    assert job_steps(list(reversed(raw))) == job


@given(events, st.floats(0, 100), st.floats(0, 100))
def test_a_window_never_finds_more_than_the_whole_run(raw: list[StepEvent], a: float,
                                                      b: float) -> None:
    job = job_steps(raw)
    whole = largest_gap(job)
    part = largest_gap(job, min(a, b), max(a, b))
    assert part is None or (whole is not None and part <= whole)
    assert (whole is None) == (len(job) < 2)
