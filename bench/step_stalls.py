"""Step stalls of an elastic training job on a join, a graceful leave and a SIGKILL, per system.

The part of ``bench/rescale.py`` that compares our launcher with torchft on the real example
(``examples/train_elastic.py`` with its defaults; torchft runs ``bench/torchft_train.py``, the
same task under torchft). Every member is a process group of its own (a pod); its stdout is read
line by line as it arrives and each JSON step line is stamped with this process's monotonic
clock, so the job's steps are the union over members (rank 0 can change after a kill) and a gap
is measured where it happened, not where one log says it did. See ``StallScenario`` for the
sequence and ``elastic_operator.local.resize_report`` for what a gap is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from elastic_operator.local.resize_report import (  # noqa: E402
    StepEvent,
    first_step_at,
    job_steps,
    largest_gap,
    median_step_time,
    parse_step_line,
)

# Steps of the example are well under a millisecond; a floor makes a gap of one step stand out
# from the reading jitter of a loaded 2-core machine. Equal for every system.
STEP_TIME = 0.05
SETTLE = 3.0  # seconds of steady steps before and after each event
EPOCHS = 10_000  # "forever": the benchmark ends the members


class Member:
    """One member (a pod): a process group; stdout read by a thread, step lines timestamped."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.events: list[StepEvent] = []
        self._lines = (logs / f"{name}.out").open("w")
        with open(logs / f"{name}.err", "wb") as err:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                         stderr=err, start_new_session=True)
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            at = time.monotonic()
            line = raw.decode(errors="replace")
            self._lines.write(f"{at:.4f} {line}")
            self._lines.flush()
            event = parse_step_line(line, at)
            if event is not None:
                self.events.append(event)
        self._lines.close()

    def last_step_at(self) -> float:
        """When this member last printed a step (-inf: never), e.g. to tell our rank 0."""
        return self.events[-1].at if self.events else float("-inf")

    def terminate(self) -> None:
        """SIGTERM to the member's main process, as the kubelet sends on a pod deletion."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)

    def kill_tree(self) -> None:
        """SIGKILL the member's whole process tree at once (a pod killed), including children
        that left its process group."""
        pids = descendants(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill_tree()
        self._reader.join(timeout=5)


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class System:
    """How to start one system's members: ``argv(job, member index, workdir)`` and its env;
    ``service`` starts what the system needs beside its members (torchft's Lighthouse) and
    returns the process and the env it adds."""

    name: str
    argv: Callable[[str, int, Path], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    service: Callable[[Path], tuple[subprocess.Popen[bytes], dict[str, str]]] | None = None


class Job:
    """The members of one job; the job's steps are the union of what they printed."""

    def __init__(self, system: System, workdir: Path, job_id: str) -> None:
        self.system = system
        self.job_id = job_id
        self.dir = workdir / job_id
        self.dir.mkdir(parents=True)
        self.members: dict[str, Member] = {}
        self.env = dict(os.environ, PYTHONPATH=str(REPO), GRPC_VERBOSITY="ERROR",
                        LOGLEVEL="WARNING", **system.env)
        self.service: subprocess.Popen[bytes] | None = None
        if system.service is not None:
            self.service, extra = system.service(self.dir)
            self.env.update(extra)

    def start(self, name: str) -> Member:
        index = len(self.members)
        member = Member(name, self.system.argv(self.job_id, index, self.dir), self.env,
                        self.dir)
        self.members[name] = member
        return member

    def steps(self) -> list[StepEvent]:
        return job_steps(e for m in self.members.values() for e in list(m.events))

    def wait_world(self, world: int, after: float, limit: float) -> StepEvent | None:
        """The first step at ``world`` completed after ``after``; None past ``limit`` s."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            found = first_step_at(self.steps(), world, after)
            if found is not None:
                return found
            time.sleep(0.05)
        return None

    def wait_exit(self, limit: float) -> bool:
        deadline = time.monotonic() + limit
        for member in self.members.values():
            try:
                member.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def close(self) -> None:
        for member in self.members.values():
            member.close()
        if self.service is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.service.pid, signal.SIGKILL)
            self.service.wait()


@dataclass
class Stalls:
    """One system's figures (seconds; None: did not recover within the limit)."""

    join: float | None = None
    leave: float | None = None
    kill: float | None = None
    joiner_first_step: float | None = None
    step_time: float | None = None  # median at world 2, no --step-time floor
    notes: list[str] = field(default_factory=list)


def _event(job: Job, world: int, limit: float, act: Callable[[], float]) -> float | None:
    """Run ``act`` (returns the event's time), wait for a step at ``world``, settle, and return
    the largest gap around the event; None when ``world`` was not reached within ``limit``."""
    at = act()
    if job.wait_world(world, at, limit) is None:
        return None
    time.sleep(SETTLE)
    return largest_gap(job.steps(), at, time.monotonic())


def run_stalls(system: System, workdir: Path, limit: float) -> Stalls:
    """Two members, then (a) a third joins, (b) it leaves gracefully (SIGTERM), (c) one of
    the original two is SIGKILLed with its whole process tree; the largest gap around each."""
    out = Stalls()
    job = Job(system, workdir, f"{system.name}-stalls")
    try:
        job.start("a")
        job.start("b")
        if job.wait_world(2, float("-inf"), limit) is None:
            out.notes.append("no step at world size 2: see the logs")
            return out
        time.sleep(SETTLE)

        def join() -> float:
            joiner = job.start("c")
            return joiner.started

        out.join = _event(job, 3, limit, join)
        if out.join is None:
            return out
        joined = first_step_at(job.steps(), 3, job.members["c"].started)
        assert joined is not None
        out.joiner_first_step = joined.at - job.members["c"].started

        def leave() -> float:
            at = time.monotonic()
            job.members["c"].terminate()
            return at

        out.leave = _event(job, 2, limit, leave)
        if out.leave is None:
            return out
        # Not the member that prints the steps: for ours that is rank 0, whose agent hosts the
        # job's master store (torchft: every member prints; each hosts only its own store).
        printer = max(("a", "b"), key=lambda n: job.members[n].last_step_at())
        victim = "a" if printer == "b" else "b"
        out.notes.append(f"leave: SIGTERM to c's main process; kill: SIGKILL of {victim}'s "
                         f"process tree ({printer} printed the last step and stays)")

        def kill() -> float:
            at = time.monotonic()
            job.members[victim].kill_tree()
            return at

        out.kill = _event(job, 1, limit, kill)
        return out
    finally:
        job.close()


def run_join_only(system: System, workdir: Path, limit: float, name: str) -> float | None:
    """Two members, a third joins: the largest gap around the join (the 400 MB variant)."""
    job = Job(system, workdir, name)
    try:
        job.start("a")
        job.start("b")
        if job.wait_world(2, float("-inf"), limit) is None:
            return None
        time.sleep(SETTLE)
        return _event(job, 3, limit, lambda: job.start("c").started)
    finally:
        job.close()


def run_step_time(system: System, workdir: Path, limit: float, members: int,
                  name: str) -> float | None:
    """Median step time at world 2 of a run to the end with the script's defaults."""
    job = Job(system, workdir, name)
    try:
        for index in range(members):
            job.start("ab"[index])
        job.wait_exit(limit)
        return median_step_time(job.steps(), 2, span=8)
    finally:
        job.close()
