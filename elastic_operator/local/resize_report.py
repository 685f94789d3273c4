"""How a resize looked from the training job's side: step gaps and time to the larger size.

Pure functions over step events (a step number, the world size it ran at, and the time the line
was seen), shared by ``elastic-operator local demo`` (its closing report on
``--add-gpus-at-step``) and ``bench/rescale.py`` (the per-system stalls). A *gap* is the time
between two consecutive completed steps of the job; the job's steps are the union of what every
member printed (rank 0 can change after a resize), each step number counted once, at the first
time any member reported it. A step redone after a rollback is therefore not progress: the gap
runs from the last step first completed before the stall to the next new step number.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class StepEvent:
    """One completed step as seen by an observer: ``at`` seconds on the observer's clock."""

    at: float
    step: int
    world_size: int


def parse_step_line(line: str, at: float) -> StepEvent | None:
    """The step event of one JSON log line (``{"event": "step", "step": N, "world_size": W}``
    as the examples print), or None for any other line."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event") != "step":
        return None
    try:
        return StepEvent(at, int(event["step"]), int(event["world_size"]))
    except (KeyError, TypeError, ValueError):
        return None


def job_steps(events: Iterable[StepEvent]) -> list[StepEvent]:
    """The job's completed steps, each step number once at its earliest time, by step number."""
    first: dict[int, StepEvent] = {}
    for event in events:
        seen = first.get(event.step)
        if seen is None or event < seen:  # the earliest; ties by world size, for determinism
            first[event.step] = event
    return [first[step] for step in sorted(first)]


def gaps(steps: list[StepEvent]) -> list[tuple[StepEvent, StepEvent]]:
    """Consecutive pairs of ``job_steps`` output: (a step, the next new step)."""
    return list(itertools.pairwise(steps))


def largest_gap(steps: list[StepEvent], start: float = float("-inf"),
                end: float = float("inf")) -> float | None:
    """The largest gap that overlaps ``[start, end]``: a stall that began before ``start`` but
    lasted into the window counts whole. None when no gap overlaps (fewer than two steps)."""
    inside = [b.at - a.at for a, b in gaps(steps) if b.at >= start and a.at <= end]
    return max(inside) if inside else None


def first_step_at(steps: list[StepEvent], world_size: int, after: float) -> StepEvent | None:
    """The earliest step completed after ``after`` at exactly ``world_size``."""
    later = [s for s in steps if s.at > after and s.world_size == world_size]
    return min(later, key=lambda s: s.at) if later else None


def median_step_time(steps: list[StepEvent], world_size: int, span: int = 1) -> float | None:
    """The median step time at ``world_size``: within each run of consecutive steps all at
    that size, the mean of each whole block of ``span`` gaps; the median of those means. A
    ``span`` above 1 is for steps shorter than the observer's reading jitter (lines read in a
    burst give gaps near 0 and then a long one; a block's mean is the true rate). None when no
    block fits."""
    if span < 1:
        raise ValueError(f"span={span}: must be >= 1")
    blocks: list[float] = []
    run: list[float] = []
    for a, b in gaps(steps):
        if a.world_size == world_size and b.world_size == world_size:
            run.append(b.at - a.at)
            if len(run) == span:
                blocks.append(sum(run) / span)
                run = []
        else:
            run = []
    return statistics.median(blocks) if blocks else None


@dataclass(frozen=True)
class GrowReport:
    """The demo's view of one grow: GPUs appeared at ``gpus_added``; the job reached
    ``larger`` workers; how long that took and what it cost the survivors."""

    before: int
    larger: int | None
    to_larger_s: float | None
    largest_gap_s: float | None
    pod_startup_s: float | None

    def lines(self) -> list[str]:
        """The report as the demo prints it (one fact per line, ``name: value``)."""
        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}s"

        target = "-" if self.larger is None else str(self.larger)
        return [f"GPUs added -> first step at world size {target}: "
                f"{seconds(self.to_larger_s)} (from world size {self.before})",
                f"survivors' largest gap between steps: {seconds(self.largest_gap_s)}",
                f"worker pod start-up (pod seen until its agent registers in etcd): "
                f"{seconds(self.pod_startup_s)}"]


def grow_report(events: Iterable[StepEvent], gpus_added: float,
                pod_startups: Iterable[float]) -> GrowReport:
    """What a grow at ``gpus_added`` did: the time to the first step at the largest world size
    reached afterwards, the largest gap between steps over the whole run, and the median of the
    new pods' start-up times (``pod_startups``; the time a pod of its own needs, which bounds
    from below how fast any grow can be)."""
    steps = job_steps(events)
    earlier = [s for s in steps if s.at <= gpus_added]
    before = earlier[-1].world_size if earlier else 0
    bigger = [s.world_size for s in steps if s.at > gpus_added and s.world_size > before]
    larger = max(bigger) if bigger else None
    first = first_step_at(steps, larger, gpus_added) if larger is not None else None
    startups = sorted(pod_startups)
    return GrowReport(
        before=before, larger=larger,
        to_larger_s=None if first is None else first.at - gpus_added,
        largest_gap_s=largest_gap(steps),
        pod_startup_s=statistics.median(startups) if startups else None)
