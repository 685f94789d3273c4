"""A seeded chaos soak: one job, many membership events one after another, the e2e checks at
the end, and how much training survived (goodput).

:func:`soak` draws ``events`` events from :data:`KINDS` with ``random.Random(seed)`` (each kind
only when it makes sense, e.g. no scale-down at one worker; at least ``min(5, events)``
different kinds) and applies one each time the job's committed progress has grown by ``gap``
steps' worth of samples at world size 2 (so every event hits a job that recovered and trained
a while, whatever its size). The job holds ``events + 1`` such gaps: after the last event it
trains one gap more, like after every other one, so the tail does not flatter the goodput.
At the end it checks what every e2e scenario checks (:func:`e2e.scenarios.finished_well`).

Goodput = committed steps of the final lineage x the median step time of an undisturbed run of
the same job (measured first, on the same cluster) / wall time from the first committed step
to the last. Time lost per event = the longest gap between two consecutive steps (of any
generation) after the event and before the next one, less the undisturbed median step time.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from e2e import scenarios
from e2e.driver import Driver, wait_until
from e2e.local_driver import LocalDriver
from launcher.training.audit import committed_steps

MAX_REPLICAS = 3
STEP_TIME = 0.1  # seconds per step (--step-time), the baseline's and the soak job's


@dataclass
class State:
    """What the soak knows of the job between events."""

    name: str
    replicas: int = 2
    evicted_nodes: list[str] = field(default_factory=list)  # given their GPU back after


Event = Callable[[Driver, State], Awaitable[None]]


async def _running(driver: Driver, name: str) -> list[str]:
    return [p["metadata"]["name"] for p in await scenarios.running_pods(driver, name)]


async def scale_down(driver: Driver, st: State) -> None:
    st.replicas -= 1
    await driver.scale(st.name, st.replicas)


async def scale_up(driver: Driver, st: State) -> None:
    st.replicas += 1
    await driver.scale(st.name, st.replicas)


async def scale_flap(driver: Driver, st: State) -> None:
    await driver.scale(st.name, st.replicas - 1)
    await asyncio.sleep(0.5)
    await driver.scale(st.name, st.replicas)


async def evict(driver: Driver, st: State) -> None:
    pod = (await scenarios.running_pods(driver, st.name))[-1]  # what scale-down would take
    st.evicted_nodes.append(pod["spec"]["nodeName"])
    await driver.evict(pod["metadata"]["name"])


async def kill_worker(driver: Driver, st: State) -> None:
    await driver.kill_training_processes(random.choice(await _running(driver, st.name)))


async def kill_agent(driver: Driver, st: State) -> None:
    await driver.kill_agent(random.choice(await _running(driver, st.name)))


async def hang(driver: Driver, st: State) -> None:
    await driver.hang_training(random.choice(await _running(driver, st.name)))


async def etcd_restart(driver: Driver, st: State) -> None:
    await driver.restart_etcd()


async def operator_kill(driver: Driver, st: State) -> None:
    await driver.restart_operator()


KINDS: dict[str, Event] = {
    "scale_down": scale_down, "scale_up": scale_up, "scale_flap": scale_flap, "evict": evict,
    "kill_worker": kill_worker, "kill_agent": kill_agent, "hang": hang,
    "etcd_restart": etcd_restart, "operator_kill": operator_kill,
}


def allowed(kind: str, st: State) -> bool:
    """Whether ``kind`` makes sense now (the job must keep a worker to train with; there is
    a free GPU to grow into, since an evicted GPU comes back before the next event)."""
    if kind in ("scale_down", "scale_flap", "evict"):
        return st.replicas > 1
    if kind == "scale_up":
        return st.replicas < MAX_REPLICAS
    return True


def draw(rng: random.Random, events: int) -> list[str]:
    """The kinds to try, in order: ``min(5, events)`` distinct kinds first (shuffled), then
    random ones; :func:`soak` skips and redraws a kind that is not allowed at its turn."""
    kinds = sorted(KINDS)
    first = rng.sample(kinds, min(5, events))
    return first + [rng.choice(kinds) for _ in range(events - len(first))]


@dataclass
class SoakResult:
    events: list[tuple[str, float]]  # (kind, wall time applied)
    goodput: float
    median_step_s: float
    lost_s: dict[str, list[float]]
    succeeded: bool = True
    exactly_once: bool = True

    def summary(self) -> str:
        kinds = len({k for k, _ in self.events})
        lines = [f"{len(self.events)} events of {kinds} kinds; undisturbed median step "
                 f"{self.median_step_s:.3f}s"]
        for kind, lost in sorted(self.lost_s.items()):
            lines.append(f"  {kind:14s} n={len(lost)} lost mean {statistics.mean(lost):6.2f}s "
                         f"max {max(lost):6.2f}s")
        lines.append(f"events={len(self.events)} succeeded={int(self.succeeded)} "
                     f"exactly_once={int(self.exactly_once)} goodput={self.goodput:.2f}")
        return "\n".join(lines)


async def _steps(driver: Driver, name: str) -> list[dict[str, Any]]:
    return [r for r in await scenarios.index_records(driver, name) if r.get("event") == "step"]


async def _consumed(driver: Driver, name: str) -> int:
    """Samples in the committed lineage so far (all epochs); 0 before the first step."""
    try:
        records = await scenarios.index_records(driver, name)
    except (OSError, RuntimeError):  # the log does not exist yet (local / kubectl exec)
        return 0
    return sum(len(c.indices) for c in committed_steps(records))


async def median_step_time(driver: Driver, name: str) -> float:
    """Median interval between rank 0's consecutive committed steps of a finished job."""
    records = await scenarios.index_records(driver, name)
    times = {(int(r["generation"]), int(r["step"])): float(r["time"]) for r in records
             if r.get("event") == "step" and r["rank"] == 0}
    lineage = [times[(c.generation, c.step)] for c in committed_steps(records)]
    gaps = [b - a for a, b in itertools.pairwise(lineage) if b > a]
    return statistics.median(gaps)


async def soak(driver: LocalDriver, seed: int, events: int, gap: int) -> SoakResult:
    """Run the soak (see the module docstring) on a local cluster with ``MAX_REPLICAS`` free
    GPUs; ``gap`` is in steps at world size 2. Raises AssertionError when a check fails."""
    assert driver.cluster.nodes is not None
    rng = random.Random(seed)
    random.seed(seed)  # the events' own choices (which pod) follow the seed too
    baseline = f"chaos-base-{seed}"
    await driver.apply([scenarios.make_job(driver, baseline, epochs=2, step_time=STEP_TIME)])
    await scenarios.finished_well(driver, baseline, {(2,)})
    median = await median_step_time(driver, baseline)

    name = f"chaos-{seed}"
    gap_samples = gap * 2 * scenarios.BATCH
    epochs = math.ceil((events + 1) * gap_samples / scenarios.DATASET)
    st = State(name)
    job = scenarios.make_job(driver, name, epochs=epochs, step_time=STEP_TIME, hang_timeout=4.0,
                             max_replicas=MAX_REPLICAS)
    job["spec"]["maxRestarts"] = 10 * events  # the soak kills on purpose; budget is not tested
    applied: list[tuple[str, float]] = []
    async with scenarios.no_duplicate_pods(driver, name):
        await driver.apply([job])
        for number, kind in enumerate(draw(rng, events), start=1):
            if not allowed(kind, st):
                kind = rng.choice([k for k in sorted(KINDS) if allowed(k, st)])

            async def due(target: int = number * gap_samples) -> bool:
                return await _consumed(driver, name) >= target
            await wait_until(due, f"{name} to train before event {number} ({kind})", 300,
                             interval=0.3)
            assert await scenarios.phase(driver, name) != "Succeeded", \
                f"job {name} finished after {len(applied)} of {events} events; it is too short"
            applied.append((kind, time.time()))
            await KINDS[kind](driver, st)
            if st.evicted_nodes:
                # The GPU comes back once the job trained on without it (a repaired device).
                async def recovered(target: int = number * gap_samples + gap_samples // 4
                                    ) -> bool:
                    return await _consumed(driver, name) >= target
                await wait_until(recovered, f"{name} to train on after {kind}", 300,
                                 interval=0.3)
                for node in st.evicted_nodes:
                    await driver.cluster.nodes.add_gpus(1, node)
                st.evicted_nodes.clear()
        await scenarios.finished_well(driver, name, (), epochs=epochs,
                                      any_world_up_to=MAX_REPLICAS)

    records = await scenarios.index_records(driver, name)
    steps = [r for r in records if r.get("event") == "step"]
    lineage = committed_steps(records)
    committed_times = [float(r["time"]) for r in steps if r["rank"] == 0
                       and (int(r["generation"]), int(r["step"])) in
                       {(c.generation, c.step) for c in lineage}]
    wall = max(committed_times) - min(committed_times)
    goodput = len(lineage) * median / wall if wall > 0 else 0.0
    all_times = sorted({float(r["time"]) for r in steps})
    lost: dict[str, list[float]] = {}
    bounds = [t for _, t in applied] + [all_times[-1]]
    for (kind, start), end in zip(applied, bounds[1:], strict=True):
        window = [start] + [t for t in all_times if start < t <= end]
        gap = max((b - a for a, b in itertools.pairwise(window)), default=0.0)
        lost.setdefault(kind, []).append(max(gap - median, 0.0))
    return SoakResult(applied, goodput, median, lost)
