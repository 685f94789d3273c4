"""A seeded chaos soak: one job, many membership events one after another, the e2e checks at
the end, and how much training survived (goodput).

:func:`soak` draws ``events`` events from :data:`KINDS` with ``random.Random(seed)`` (each kind
only when it makes sense, e.g. no scale-down at one worker; at least ``min(5, events)``
different kinds) and applies one every ``interval`` seconds, each only once the job has
trained :data:`STEPS_BETWEEN` committed steps since the previous one (so every event hits a
job that recovered). The job is sized to train through all events (about
``events x interval`` seconds). At the end it checks what every e2e scenario checks
(:func:`e2e.scenarios.finished_well`).

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

STEPS_BETWEEN = 6
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
    pods = [p for p in await driver.list_pods(name)
            if (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]
    return sorted(p["metadata"]["name"] for p in pods)


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
    pod = await scenarios.running_pod(driver, st.name)
    obj = await driver.list_pods(st.name)
    st.evicted_nodes += [p["spec"]["nodeName"] for p in obj if p["metadata"]["name"] == pod]
    await driver.evict(pod)


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


async def _max_step(driver: Driver, name: str) -> int:
    return max((int(r["step"]) for r in await _steps(driver, name)), default=0)


async def median_step_time(driver: Driver, name: str) -> float:
    """Median interval between rank 0's consecutive committed steps of a finished job."""
    records = await scenarios.index_records(driver, name)
    times = {(int(r["generation"]), int(r["step"])): float(r["time"]) for r in records
             if r.get("event") == "step" and r["rank"] == 0}
    lineage = [times[(c.generation, c.step)] for c in committed_steps(records)]
    gaps = [b - a for a, b in itertools.pairwise(lineage) if b > a]
    return statistics.median(gaps)


async def soak(driver: LocalDriver, seed: int, events: int, interval: float) -> SoakResult:
    """Run the soak (see the module docstring) on a local cluster with ``MAX_REPLICAS`` free
    GPUs; raises AssertionError when a check fails."""
    assert driver.cluster.nodes is not None
    rng = random.Random(seed)
    random.seed(seed)  # the events' own choices (which pod) follow the seed too
    baseline = f"chaos-base-{seed}"
    await driver.apply([scenarios.make_job(driver, baseline, epochs=2, step_time=STEP_TIME)])
    await scenarios.finished_well(driver, baseline, {(2,)})
    median = await median_step_time(driver, baseline)

    name = f"chaos-{seed}"
    # Long enough to train through every event: at world size 2 an epoch is DATASET / (2 x
    # BATCH) steps; about half of the soak's wall time is training between the events.
    epoch_s = scenarios.DATASET / (2 * scenarios.BATCH) * median
    epochs = 2 + math.ceil(0.5 * events * interval / epoch_s)
    st = State(name)
    job = scenarios.make_job(driver, name, epochs=epochs, step_time=STEP_TIME, hang_timeout=4.0,
                             max_replicas=MAX_REPLICAS)
    job["spec"]["maxRestarts"] = 10 * events  # the soak kills on purpose; budget is not tested
    applied: list[tuple[str, float]] = []
    async with scenarios.no_duplicate_pods(driver, name):
        await driver.apply([job])
        await scenarios.training_at(driver, name, 2)
        for kind in draw(rng, events):
            if not allowed(kind, st):
                kind = rng.choice([k for k in sorted(KINDS) if allowed(k, st)])
            if applied:
                await asyncio.sleep(max(0.0, applied[-1][1] + interval - time.time()))
            assert await scenarios.phase(driver, name) != "Succeeded", \
                f"job {name} finished after {len(applied)} of {events} events; it is too short"
            before = await _max_step(driver, name)
            applied.append((kind, time.time()))
            await KINDS[kind](driver, st)

            async def progressed(floor: int = before) -> bool:
                return await _max_step(driver, name) >= floor + STEPS_BETWEEN
            await wait_until(progressed, f"{name} to train on after {kind}", 240, interval=0.3)
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
