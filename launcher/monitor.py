"""The local training processes of one round: start them, watch them, stop them.

``WorkerGroup`` guarantees:
- every process gets torch's variables (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE,
  GROUP_RANK, MASTER_ADDR, MASTER_PORT) plus ours (``contract.WorkerEnv``), on top of the
  agent's own environment (which carries the operator's ELASTIC_BASE_WORLD_SIZE, LR_SCALING,
  BATCHING, CHECKPOINT_* through unchanged);
- each runs in its own session (process group), and dies with the agent (Linux parent-death
  signal), so a SIGKILLed agent leaves no orphan holding a GPU or a port;
- the exit time of each process is taken when it exits (a waiter thread), not when polled, so
  nodes can tell which failure came first;
- a stop is not a completion: all processes exiting 0 is SUCCEEDED only when none of them
  recorded ``WorkerOutcome.STOPPED`` in its outcome file (``ELASTIC_OUTCOME_FILE``, written by
  the training helpers at an agreed stop); otherwise the group is STOPPED, which the agent
  answers with a re-formation. A script without the helpers writes nothing: exit 0 = done;
- hang detection: a process is hung when its heartbeat file (``ELASTIC_HEARTBEAT_FILE``, touched
  by the training helpers once per step) is older than ``hang_timeout``. The timer is armed by
  the first heartbeat: a script that never touches the file is never declared hung, and the
  first step (compilation, data loading) is not timed at all;
- in-place resize (``launcher.inplace``): a process that announces the capability in its
  status file keeps running across rounds; ``reassign`` hands it the next round through its
  assignment file. Its files keep the names of the round it was started in.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from launcher import inplace
from launcher.contract import WorkerEnv, WorkerOutcome, read_outcome
from launcher.etcd_rendezvous import Round
from launcher.parent_death import die_with_parent

if TYPE_CHECKING:
    from launcher.prewarm import WarmPool

log = logging.getLogger(__name__)

class GroupState(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every process finished training
    STOPPED = "stopped"  # every process exited 0, at least one after an agreed stop
    FAILED = "failed"


@dataclass(frozen=True)
class GroupStatus:
    """Result of one ``WorkerGroup.poll``; for FAILED, the first process that failed."""

    state: GroupState
    local_rank: int = -1
    exit_code: int | None = None
    exit_time: float = 0.0  # wall clock, comparable across nodes
    reason: str = ""  # contract.FailureReport reason
    message: str = ""


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class WorkerGroup:
    """``nproc`` training processes for one round; see the module docstring."""

    def __init__(
        self,
        cmd: Sequence[str],
        nproc: int,
        rnd: Round,
        run_dir: Path,
        hang_timeout: float,
        previous_world_size: int = 0,
        extra_env: Mapping[str, str] | None = None,
        pool: WarmPool | None = None,
    ) -> None:
        self.cmd = list(cmd)
        self.nproc = nproc
        self.round = rnd
        self.run_dir = run_dir
        self.hang_timeout = hang_timeout
        self.previous_world_size = previous_world_size
        self.extra_env = dict(extra_env or {})
        self.pool = pool
        self.start_generation = rnd.generation
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started_at = 0.0  # monotonic, set by start()
        self.exit_times: dict[int, float] = {}
        self._exit_lock = threading.Lock()

    @property
    def world_size(self) -> int:
        return self.round.world_size * self.nproc

    def global_rank(self, local_rank: int) -> int:
        return self.round.rank * self.nproc + local_rank

    def _file(self, kind: str, local_rank: int) -> Path:
        return self.run_dir / f"{kind}-{self.start_generation}-{local_rank}"

    def heartbeat_file(self, local_rank: int) -> Path:
        return self._file("heartbeat", local_rank)

    def outcome_file(self, local_rank: int) -> Path:
        return self._file("outcome", local_rank)

    def status_file(self, local_rank: int) -> Path:
        return self._file("status", local_rank)

    def assignment_file(self, local_rank: int) -> Path:
        return self._file("assignment", local_rank)

    def statuses(self) -> list[inplace.WorkerStatus | None]:
        return [inplace.read_status(self.status_file(i)) for i in range(self.nproc)]

    def inplace_capable(self) -> bool:
        """Every process is alive and announced that it can resize in place."""
        return bool(self.procs) and all(p.poll() is None for p in self.procs) and all(
            s is not None and s.inplace for s in self.statuses())

    def starting(self, within: float) -> bool:
        """Started less than ``within`` s ago, every process alive and silent so far (no status,
        no heartbeat): its script is still importing, so whether it can resize in place is
        not known yet."""
        return (bool(self.procs) and time.monotonic() - self.started_at < within
                and all(p.poll() is None for p in self.procs)
                and all(s is None for s in self.statuses()) and self.waiting_to_join())

    def set_up(self) -> bool:
        """Every process has built its model and optimizer (it reached its first round), so
        it can join any newer round at once: a round it was still forming is abandoned when a
        newer one is handed over (``launcher.training.inplace``)."""
        return all(s is not None and s.ready >= 0 for s in self.statuses())

    def lost_peer(self) -> int:
        """The newest generation in which a local process lost a peer mid-step (-1: none)."""
        return max((s.lost for s in self.statuses() if s is not None), default=-1)

    def waiting_to_join(self) -> bool:
        """No process has finished a step yet (a joiner still waiting for its first round)."""
        return not any(self.heartbeat_file(i).exists() and self.heartbeat_file(i).stat().st_size
                       for i in range(self.nproc))

    def reassign(self, rnd: Round, peers_lost: bool) -> None:
        """Hand the running processes their place in ``rnd`` (in-place resize)."""
        previous = self.world_size
        self.round = rnd
        for local_rank in range(self.nproc):
            inplace.write_assignment(self.assignment_file(local_rank), inplace.Assignment(
                rnd.generation, self.global_rank(local_rank), self.world_size,
                rnd.master_addr, rnd.master_port, previous, peers_lost))

    def env_for(self, local_rank: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update({
            WorkerEnv.WORLD_SIZE: str(self.world_size),
            WorkerEnv.RANK: str(self.global_rank(local_rank)),
            WorkerEnv.LOCAL_RANK: str(local_rank),
            WorkerEnv.LOCAL_WORLD_SIZE: str(self.nproc),
            WorkerEnv.GROUP_RANK: str(self.round.rank),
            "GROUP_WORLD_SIZE": str(self.round.world_size),
            "ROLE_RANK": str(self.global_rank(local_rank)),
            "ROLE_WORLD_SIZE": str(self.world_size),
            WorkerEnv.MASTER_ADDR: self.round.master_addr,
            WorkerEnv.MASTER_PORT: str(self.round.master_port),
            WorkerEnv.RDZV_GENERATION: str(self.round.generation),
            WorkerEnv.PREVIOUS_WORLD_SIZE: str(self.previous_world_size),
            WorkerEnv.HEARTBEAT_FILE: str(self.heartbeat_file(local_rank)),
            WorkerEnv.OUTCOME_FILE: str(self.outcome_file(local_rank)),
            inplace.STATUS_FILE: str(self.status_file(local_rank)),
            inplace.ASSIGNMENT_FILE: str(self.assignment_file(local_rank)),
        })
        if self.nproc > 1:
            env.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: avoid oversubscription
        return env

    def start(self) -> WorkerGroup:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        warm = 0
        for local_rank in range(self.nproc):
            self.heartbeat_file(local_rank).unlink(missing_ok=True)
            self.outcome_file(local_rank).unlink(missing_ok=True)
            self.status_file(local_rank).unlink(missing_ok=True)
            self.assignment_file(local_rank).unlink(missing_ok=True)
            env = self.env_for(local_rank)
            proc = self.pool.take() if self.pool is not None else None
            if proc is not None and self.pool is not None and self.pool.launch(proc, env, self.cmd):
                warm += 1
            else:
                proc = subprocess.Popen(die_with_parent(self.cmd), env=env,
                                        start_new_session=True)
            self.procs.append(proc)
            threading.Thread(target=self._wait_exit, args=(local_rank, proc),
                             name=f"worker-wait-{local_rank}", daemon=True).start()
        log.info("generation %d: started %d worker(s) (%d pre-warmed) as ranks %d..%d of %d "
                 "(master %s:%d)", self.round.generation, self.nproc, warm, self.global_rank(0),
                 self.global_rank(self.nproc - 1), self.world_size,
                 self.round.master_addr, self.round.master_port)
        return self

    def _wait_exit(self, local_rank: int, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        with self._exit_lock:
            self.exit_times[local_rank] = time.time()

    def poll(self, now: float | None = None) -> GroupStatus:
        """Current state: FAILED names the earliest failing process, crash before hang."""
        codes = [p.poll() for p in self.procs]
        failed = [(self.exit_times.get(i, time.time()), i, c)
                  for i, c in enumerate(codes) if c is not None and c != 0]
        if failed:
            exit_time, local_rank, code = min(failed)
            return GroupStatus(
                GroupState.FAILED, local_rank, code, exit_time, "ProcessCrashed",
                f"training process rank {self.global_rank(local_rank)} "
                f"(local rank {local_rank}) {describe_exit(code)}",
            )
        if all(c == 0 for c in codes):
            stopped = [i for i in range(len(self.procs))
                       if read_outcome(str(self.outcome_file(i))) is WorkerOutcome.STOPPED]
            if stopped:
                return GroupStatus(GroupState.STOPPED, stopped[0], 0, self.exit_times.get(
                    stopped[0], time.time()), message="training processes stopped at an "
                    "agreed step boundary (state saved)")
            return GroupStatus(GroupState.SUCCEEDED)
        hung = self._hung(time.time() if now is None else now)
        if hung is not None:
            local_rank, age = hung
            return GroupStatus(
                GroupState.FAILED, local_rank, None, time.time(), "ProcessHung",
                f"training process rank {self.global_rank(local_rank)} "
                f"(local rank {local_rank}) made no progress for {age:.1f}s "
                f"(hang timeout {self.hang_timeout}s)",
            )
        return GroupStatus(GroupState.RUNNING)

    def _hung(self, now: float) -> tuple[int, float] | None:
        for local_rank, proc in enumerate(self.procs):
            if proc.poll() is not None:
                continue
            try:
                beat = self.heartbeat_file(local_rank).stat()
            except FileNotFoundError:
                continue  # not armed yet: no heartbeat so far in this round
            if not beat.st_size:
                continue  # opened, never written: still setting up or forming its first group
            age = now - beat.st_mtime
            if age > self.hang_timeout:
                return local_rank, age
        return None

    def stop(self, grace: float) -> None:
        """SIGTERM every process group, wait up to ``grace`` s, then SIGKILL what is left."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d ignored SIGTERM for %.0fs; SIGKILL", proc.pid, grace)
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
