"""Cluster simulator: the autoscaler's policy against static allocation on one seeded trace.

The elastic run calls the very :func:`elastic_operator.autoscaler.policy.decide` the operator
runs, with the same inputs the operator builds (jobs, worker pods with their nodes, free GPUs
per node, protected pending pods). The static baseline is what a plain cluster does: every
job runs at its requested size, gang-scheduled (all workers at once or none), strict FIFO
(the head of the queue waits until it fits; nothing jumps it).

**Trace generator** (``generate``; every draw comes from ``random.Random(seed)``):

- ``--jobs`` jobs arrive as a Poisson process, ``--arrival-minutes`` apart on average;
- requested workers ``r`` from {1: 20%, 2: 20%, 4: 30%, 8: 20%, 16: 10%}; 1 GPU per worker,
  2 for one job in five (those need two free GPUs on one node); the elastic range is
  ``min = max(1, r // 4)``, ``max = min(2 r, 32)``;
- run time at the requested size: log-normal, median ``--median-hours``, sigma 0.8;
- scaling efficiency: Amdahl's law with a serial fraction drawn from U(0.01, 0.08), so the
  speed-up of ``n`` workers is ``n / (1 + s (n - 1))`` (diminishing returns, like data
  parallelism with communication); a job's work is its run time times its speed-up at ``r``;
- every resize of a running job stops its progress for ``--restart-seconds`` (checkpoint,
  new rendezvous, reload), and a job makes progress only with at least ``min`` workers bound.

**Notebook variant** (``--notebooks`` kernels, arriving over the same period): each holds one
GPU; it is active for U(10, 40) minutes, then sits idle until its session ends after
U(2, 6) hours. Statically the GPU stays held until the session ends; in the elastic run the
reclaim controller shuts the kernel down after ``--idle-minutes`` idle (its GPU goes back to
the autoscaler), and a starting kernel is a protected pod the elastic jobs shrink for.

**Metrics**: utilization = GPU-seconds spent computing (bound workers of a job making progress,
active notebooks) / (all GPUs x makespan); goodput also weighs each job's GPUs by its scaling
efficiency; JCT = finish - arrival (mean and p95); makespan = last finish. Time advances in
steps of ``--step`` seconds; the policy decides once per step, with a 120 s stabilization
window. The last line compares the default trace without notebooks:
``utilization_ratio=<elastic/static> jct_ratio=<elastic/static>``.

    .venv/bin/python bench/cluster_sim.py [--seed 1] [--jobs 80] [--notebooks 40]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from elastic_operator.autoscaler.policy import (  # noqa: E402
    Capacity,
    Demand,
    JobMemory,
    JobState,
    PolicySettings,
    Worker,
    best_fit,
    decide,
)

WINDOW_S = 120.0


@dataclass(frozen=True)
class TraceJob:
    id: int
    arrival: float
    requested: int
    min_replicas: int
    max_replicas: int
    gpus_per_worker: int
    serial: float  # Amdahl serial fraction
    work: float  # seconds of single-worker-equivalent progress

    def speedup(self, n: int) -> float:
        return n / (1.0 + self.serial * (n - 1)) if n > 0 else 0.0


@dataclass(frozen=True)
class TraceNotebook:
    id: int
    arrival: float
    active_s: float
    session_s: float


@dataclass(frozen=True)
class Trace:
    jobs: tuple[TraceJob, ...]
    notebooks: tuple[TraceNotebook, ...] = ()


def generate(seed: int, jobs: int, arrival_minutes: float, median_hours: float,
             notebooks: int = 0) -> Trace:
    """The synthetic trace of the module docstring (same seed, same trace)."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for i in range(jobs):
        t += rng.expovariate(1.0 / (arrival_minutes * 60))
        r = rng.choices([1, 2, 4, 8, 16], weights=[20, 20, 30, 20, 10])[0]
        g = 2 if rng.random() < 0.2 else 1
        serial = rng.uniform(0.01, 0.08)
        hours = math.exp(rng.gauss(math.log(median_hours), 0.8))
        job = TraceJob(i, t, r, max(1, r // 4), min(2 * r, 32), g, serial, 0.0)
        out.append(TraceJob(**{**job.__dict__, "work": hours * 3600 * job.speedup(r)}))
    span = t
    kernels = []
    for i in range(notebooks):
        kernels.append(TraceNotebook(i, rng.uniform(0, span), rng.uniform(10, 40) * 60,
                                     rng.uniform(2, 6) * 3600))
    return Trace(tuple(out), tuple(sorted(kernels, key=lambda k: k.arrival)))


@dataclass
class RunningJob:
    spec: TraceJob
    replicas: int
    workers: dict[int, str | None] = field(default_factory=dict)  # index -> node (None: pending)
    pending_since: dict[int, float] = field(default_factory=dict)
    done: float = 0.0
    paused_until: float = 0.0
    last_n: int = 0
    finished: float | None = None

    def bound(self) -> int:
        return sum(1 for i, n in self.workers.items() if n is not None and i < self.replicas)


@dataclass
class Kernel:
    spec: TraceNotebook
    node: str | None = None
    started: float | None = None
    ends: float = math.inf


@dataclass
class Result:
    name: str
    utilization: float
    goodput: float
    mean_jct_h: float
    p95_jct_h: float
    makespan_h: float
    resizes: int = 0
    kernel_wait_min: float = 0.0


class Sim:
    """One run over a trace; ``elastic`` picks the policy, else static FIFO gang scheduling."""

    def __init__(self, trace: Trace, nodes: int, gpus_per_node: int, step: float,
                 restart_s: float, idle_minutes: float, elastic: bool) -> None:
        self.trace = trace
        self.size = {f"node-{i}": gpus_per_node for i in range(nodes)}
        self.step, self.restart_s, self.elastic = step, restart_s, elastic
        self.idle_s = idle_minutes * 60
        self.jobs: dict[int, RunningJob] = {}
        self.queue: list[int] = []  # static: FIFO of waiting jobs
        self.kernels: list[Kernel] = []
        self.memory: dict[str, JobMemory] = {}
        self.busy = self.good = 0.0
        self.resizes = 0

    # -- cluster state -------------------------------------------------------------------
    def free(self) -> dict[str, int]:
        free = dict(self.size)
        for job in self.jobs.values():
            for node in job.workers.values():
                if node is not None:
                    free[node] -= job.spec.gpus_per_worker
        for k in self.kernels:
            if k.node is not None:
                free[k.node] -= 1
        return free

    def bind(self, now: float) -> None:
        """The scheduler: pending kernels first, then job workers by age; best fit."""
        free = self.free()
        for k in self.kernels:
            if k.node is None and k.started is None:
                node = best_fit(free, self.size, 1)
                if node is not None:
                    free[node] -= 1
                    k.node, k.started = node, now
                    done = k.spec.session_s
                    if self.elastic:
                        done = min(done, k.spec.active_s + self.idle_s)
                    k.ends = now + done
        if not self.elastic:
            self._start_fifo(free)
            return
        for job in sorted(self.jobs.values(), key=lambda j: j.spec.arrival):
            g = job.spec.gpus_per_worker
            for index in sorted(job.workers):
                if job.workers[index] is None:
                    node = best_fit(free, self.size, g)
                    if node is not None:
                        free[node] -= g
                        job.workers[index] = node

    def _start_fifo(self, free: dict[str, int]) -> None:
        while self.queue:
            job = self.jobs[self.queue[0]]
            trial, placed = dict(free), []
            for _ in range(job.spec.requested):
                node = best_fit(trial, self.size, job.spec.gpus_per_worker)
                if node is None:
                    return  # strict FIFO: the head waits, nothing jumps it
                trial[node] -= job.spec.gpus_per_worker
                placed.append(node)
            free.update(trial)
            job.workers = dict(enumerate(placed))
            self.queue.pop(0)

    # -- the autoscaler ------------------------------------------------------------------
    def autoscale(self, now: float) -> None:
        states = []
        for job in self.jobs.values():
            workers = tuple(Worker(i, n, None if n else job.pending_since.get(i, now), None)
                            for i, n in sorted(job.workers.items()))
            states.append(JobState(
                key=str(job.spec.id), min_replicas=job.spec.min_replicas,
                max_replicas=job.spec.max_replicas, replicas=job.replicas,
                gpus_per_worker=job.spec.gpus_per_worker, created=job.spec.arrival,
                eligible=frozenset(self.size), workers=workers, window_s=WINDOW_S))
        demands = [Demand(f"nb-{k.spec.id}", 1, frozenset(self.size), k.spec.arrival)
                   for k in self.kernels if k.node is None and k.started is None]
        decision = decide(states, demands, Capacity(free=self.free(), size=self.size),
                          self.memory, now, PolicySettings(preempt_after_s=0.0))
        self.memory = decision.memory
        for key, target in decision.targets.items():
            job = self.jobs[int(key)]
            job.replicas = target.replicas
            for index in list(job.workers):
                if index >= target.replicas:
                    del job.workers[index]
            for index in range(target.replicas):
                if index not in job.workers:
                    job.workers[index] = None
                    job.pending_since[index] = now

    # -- time ----------------------------------------------------------------------------
    def advance(self, now: float) -> None:
        """Progress during [now, now + step)."""
        for job in list(self.jobs.values()):
            n = job.bound() if self.elastic else len(job.workers)
            if n != job.last_n and job.last_n > 0 and n >= job.spec.min_replicas:
                job.paused_until = now + self.restart_s
                self.resizes += 1
            if n > 0 and job.last_n == 0:
                job.paused_until = now  # first start: launch time is the same in both runs
            job.last_n = n
            if n < job.spec.min_replicas:
                continue
            run = max(0.0, now + self.step - max(now, job.paused_until))
            rate = job.spec.speedup(n)
            gpus = n * job.spec.gpus_per_worker
            need = (job.spec.work - job.done) / rate
            used = min(run, need)
            job.done += used * rate
            self.busy += used * gpus
            self.good += used * gpus * rate / n
            if used >= need - 1e-9:
                job.finished = now + (self.step - run) + used
                self.done_jobs.append(job)
                del self.jobs[job.spec.id]
        for k in list(self.kernels):
            if k.started is None:
                continue
            active_end = k.started + k.spec.active_s
            active = max(0.0, min(now + self.step, active_end) - now)
            self.busy += active
            self.good += active
            if k.ends <= now + self.step:
                self.kernels.remove(k)
                self.kernel_waits.append(k.started - k.spec.arrival)

    def run(self) -> Result:
        self.done_jobs: list[RunningJob] = []
        self.kernel_waits: list[float] = []
        arrivals = list(self.trace.jobs)
        kernels = list(self.trace.notebooks)
        now = 0.0
        while arrivals or kernels or self.jobs or self.kernels:
            while arrivals and arrivals[0].arrival <= now:
                spec = arrivals.pop(0)
                job = RunningJob(spec, spec.min_replicas if self.elastic else spec.requested)
                self.jobs[spec.id] = job
                if self.elastic:
                    job.workers = dict.fromkeys(range(job.replicas))
                    job.pending_since = dict.fromkeys(range(job.replicas), now)
                else:
                    self.queue.append(spec.id)
            while kernels and kernels[0].arrival <= now:
                self.kernels.append(Kernel(kernels.pop(0)))
            self.bind(now)
            if self.elastic:
                self.autoscale(now)
                self.bind(now)
            self.advance(now)
            now += self.step
        jct = sorted((j.finished or 0.0) - j.spec.arrival for j in self.done_jobs)
        makespan = max(j.finished or 0.0 for j in self.done_jobs)
        total = sum(self.size.values()) * makespan
        p95 = jct[min(len(jct) - 1, math.ceil(0.95 * len(jct)) - 1)]
        return Result("elastic" if self.elastic else "static", self.busy / total,
                      self.good / total, statistics.mean(jct) / 3600, p95 / 3600,
                      makespan / 3600, self.resizes,
                      statistics.mean(self.kernel_waits) / 60 if self.kernel_waits else 0.0)


def simulate(trace: Trace, args: argparse.Namespace, elastic: bool) -> Result:
    return Sim(trace, args.nodes, args.gpus_per_node, args.step, args.restart_seconds,
               args.idle_minutes, elastic).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=80)
    parser.add_argument("--arrival-minutes", type=float, default=20.0)
    parser.add_argument("--median-hours", type=float, default=2.0)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--step", type=float, default=60.0, help="seconds per simulated step")
    parser.add_argument("--restart-seconds", type=float, default=60.0,
                        help="progress lost by a running job at every resize")
    parser.add_argument("--notebooks", type=int, default=40,
                        help="kernels in the notebook variant (0: skip it)")
    parser.add_argument("--idle-minutes", type=float, default=30.0,
                        help="idle time after which the reclaim controller frees a kernel")
    args = parser.parse_args(argv)

    scenarios = [("default", generate(args.seed, args.jobs, args.arrival_minutes,
                                      args.median_hours))]
    if args.notebooks:
        scenarios.append(("notebooks", generate(args.seed, args.jobs, args.arrival_minutes,
                                                args.median_hours, args.notebooks)))
    print(f"# {args.nodes} nodes x {args.gpus_per_node} GPUs, {args.jobs} jobs, seed "
          f"{args.seed}, step {args.step:g}s, restart cost {args.restart_seconds:g}s")
    header = (f"{'trace':<10}{'policy':<9}{'util':>7}{'goodput':>9}{'mean JCT h':>12}"
              f"{'p95 JCT h':>11}{'makespan h':>12}{'resizes':>9}{'kernel wait min':>17}")
    print(header)
    ratios = {}
    for name, trace in scenarios:
        static, elastic = simulate(trace, args, False), simulate(trace, args, True)
        for r in (static, elastic):
            print(f"{name:<10}{r.name:<9}{r.utilization:>7.3f}{r.goodput:>9.3f}"
                  f"{r.mean_jct_h:>12.2f}{r.p95_jct_h:>11.2f}{r.makespan_h:>12.2f}"
                  f"{r.resizes:>9}{r.kernel_wait_min:>17.1f}")
        ratios[name] = (elastic.utilization / static.utilization,
                        elastic.mean_jct_h / static.mean_jct_h)
        print(f"{name:<10}{'ratio':<9}{ratios[name][0]:>7.2f}{'':>9}{ratios[name][1]:>12.2f}")
    util, jct = ratios["default"]
    print(f"utilization_ratio={util:.3f} jct_ratio={jct:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
