"""The local agent: one per pod; rendezvous, run the training processes, react to failures.

Why our own loop and not torch's ``LocalElasticAgent``: with torch 2.13 a node joining a running
job (grow) kills torch's agent (it waits for the newcomer's ``role_info`` key and times out), and
torch's agent does not watch its peers, so a SIGKILLed peer leaves survivors hanging in a
collective. This loop keeps torch's conventions (env variables, restart budget, exit codes) and
adds peer watching through ``EtcdRendezvous``.

One iteration: join a round -> start ``nproc`` workers -> every ``monitor_interval`` (and at every
etcd change) check, in order: local process exits (crash / all done), heartbeats (hang), the
rendezvous (a peer lost, a member re-forming, a newcomer while below max). Then:
- all local workers finished training (exit 0, no ``WorkerOutcome.STOPPED``) -> record the
  job's ``Completion`` in etcd (only while this round is still the current one), write it to
  the termination log, exit 0. If the round moved on meanwhile, nothing is recorded and the
  agent joins the newer round, which resumes from the final checkpoint and completes at once:
  a race can cost a few seconds, never a false "finished";
- all local workers exited 0 and some after an agreed stop (a peer is leaving, the helpers'
  SIGTERM handling agreed on a step) -> re-form, exactly as when the rendezvous asks for it;
  a stop is never a completion;
- re-form -> SIGTERM the workers (they checkpoint), SIGKILL after ``stop_timeout``, join again;
  not a failure, not counted;
- local failure -> stop the workers, announce "re-forming" at once (peers follow), then decide
  whose failure it was: when one process dies, its peers' collectives fail too, so every node
  sees a crash. Each failing node records the wall-clock time its first process failed; the
  earliest claim is the origin, and a member whose lease expired makes it a lost peer. Only the
  origin counts a restart against ``max_restarts`` and writes a ProcessCrashed/ProcessHung
  report; past the budget it writes MaxRestartsExceeded and exits 1.

In-place resize (issue 15, ``launcher.inplace``): when every local training process announced
that it can resize in place, a re-formation does not stop them. The agent joins the next round
while they keep training, marks itself ready in it, and once every member of the round is ready
(a joiner is ready when its process has set up its model) writes each process its assignment;
the processes switch after an agreed step. A process that lost a peer mid-step says so in its
status file; the agent reports the loss in etcd and re-forms at once (the round closes without
the members that do not follow, before the dead one's lease expires). Otherwise -- a script
without the helpers, a backend that cannot abort, ``ELASTIC_INPLACE=0``, a crash or a hang --
the restart path below is taken, and the log line says which path and why.

Training processes come from a ``WarmPool`` (torch already imported) when one is ready, which
takes the interpreter start off every restart; SIGTERM to the agent (pod deletion) stops the
workers, revokes the lease (peers re-form at once) and exits 0 with a Shutdown note in the
termination log (a departure, not a failure: nothing goes to etcd's failure keys).
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TypeVar

from etcd3 import transactions as tx

from launcher import contract, inplace
from launcher.etcd_client import PLAIN, EtcdAuthError, EtcdSecurity
from launcher.etcd_rendezvous import (
    DEFAULT_JOIN_TIMEOUT,
    DEFAULT_LEASE_TTL,
    DEFAULT_REFORM_TIMEOUT,
    DEFAULT_SETTLE,
    EtcdRendezvous,
    RendezvousClosedError,
    RendezvousTimeoutError,
    Round,
)
from launcher.etcd_session import EtcdSession, EtcdUnavailableError
from launcher.monitor import GroupState, GroupStatus, WorkerGroup
from launcher.prewarm import WarmPool
from launcher.reports import FailureReporter

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a re-formation leaves a silent new training process (still importing) to announce
# in-place resize before taking the restart path with it: a cold Python + torch start on a
# loaded 2-core node takes 3-8 s.
STARTUP_GRACE = 15.0
# The most an agent waits for its pre-warmed processes before it registers anyway.
PREWARM_WAIT = 60.0
# The pool refills once the new processes committed a step, or this long after they started
# (a script that writes no heartbeat).
REFILL_AT_THE_LATEST = 30.0


class ShutdownRequested(Exception):
    """The agent got SIGTERM/SIGINT (pod deletion, scale-down)."""


@dataclass
class AgentConfig:
    """Everything the agent needs; built by ``launcher.cli`` from flags and ELASTIC_* env."""

    cmd: list[str]
    rdzv_endpoint: str
    rdzv_id: str
    node_id: str
    local_addr: str
    min_nodes: int = 1
    max_nodes: int = 1
    nproc_per_node: int = 1
    max_restarts: int = contract.DEFAULT_MAX_RESTARTS
    monitor_interval: float = contract.DEFAULT_MONITOR_INTERVAL
    hang_timeout: float = contract.DEFAULT_HANG_TIMEOUT
    stop_timeout: float = 30.0
    termination_log: str | None = contract.DEFAULT_TERMINATION_LOG
    lease_ttl: int = DEFAULT_LEASE_TTL
    settle: float = DEFAULT_SETTLE
    reform_timeout: float = DEFAULT_REFORM_TIMEOUT
    join_timeout: float = DEFAULT_JOIN_TIMEOUT
    prewarm: bool = True  # see launcher.prewarm
    run_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    security: EtcdSecurity = PLAIN  # TLS and the job's etcd user (launcher.cli)
    inplace: bool = True  # ELASTIC_INPLACE=0: always the restart path


@dataclass(frozen=True)
class Outcome:
    kind: str  # "succeeded" | "reform" | "failed" | "closed" (finished without us)
    reason: str = ""
    status: GroupStatus | None = None


class Agent:
    """Runs the loop in the module docstring; ``run()`` returns the process exit code."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.restarts = 0
        self.session: EtcdSession | None = None
        self.rdzv: EtcdRendezvous | None = None
        self.reporter = FailureReporter(config.rdzv_id, config.node_id, config.termination_log)
        self.group: WorkerGroup | None = None
        self.pool: WarmPool | None = None
        self._owns_run_dir = config.run_dir is None
        self.run_dir = config.run_dir or Path(tempfile.mkdtemp(prefix="elastic-agent-"))
        self._shutting_down = False
        self._lost_reported = -1
        self._marked = -1  # newest generation this node marked ready in etcd
        # A process of this agent announced in-place resize: the command can, so a restarted
        # process that has not announced yet will too (see _why_not_inplace).
        self._inplace_command = False

    # -- entry -----------------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.config
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if cfg.prewarm:
                env = dict(os.environ, **cfg.extra_env)
                if cfg.nproc_per_node > 1:
                    env.setdefault("OMP_NUM_THREADS", "1")
                self.pool = WarmPool(cfg.nproc_per_node, env)
                self.pool.maintain()  # imports torch while we rendezvous
            self.session = EtcdSession(
                cfg.rdzv_endpoint, contract.etcd_prefix(cfg.rdzv_id), cfg.lease_ttl,
                name=cfg.node_id, security=cfg.security,
            ).start(timeout=cfg.join_timeout)
            self.reporter.session = self.session
            self.rdzv = EtcdRendezvous(
                self.session, cfg.rdzv_id, cfg.node_id, cfg.min_nodes, cfg.max_nodes,
                cfg.local_addr, settle=cfg.settle, reform_timeout=cfg.reform_timeout,
            )
            self._write_peer_secret()
            if self.pool is not None:
                # Register only once torch is imported (see WarmPool.wait_ready): a round is
                # then never formed around processes that still need seconds to start.
                started = time.monotonic()
                warm = self.pool.wait_ready(PREWARM_WAIT)
                log.info("node %s: training processes %s in %.1fs; joining the rendezvous",
                         cfg.node_id, "pre-warmed" if warm else "still importing",
                         time.monotonic() - started)
            return self._loop()
        except ShutdownRequested:
            log.info("node %s: shutdown requested; leaving and stopping workers", cfg.node_id)
            if self.rdzv is not None:
                # Peers re-form without this node now, while its processes finish their step.
                self._retry(self.rdzv.announce_leaving, timeout=2.0)
            self._stop_group()
            self.reporter.report("Shutdown", "agent received SIGTERM (pod deleted or scaled down)",
                                 generation=self.rdzv.last_generation if self.rdzv else None)
            return 0
        except EtcdUnavailableError as exc:
            self.reporter.report("RendezvousFailed", f"etcd unreachable: {exc}")
            return 1
        except EtcdAuthError as exc:
            # Not retried: only new credentials (or a fixed role) can help; the message says
            # which Secret or flag to fix.
            self._stop_group(grace=0.0)
            self.reporter.report("RendezvousFailed", f"etcd credentials refused: {exc}")
            return 1
        finally:
            self._stop_group()
            if self.pool is not None:
                self.pool.close()
            if self.session is not None:
                self.session.close(revoke=True)
            if self._owns_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._shutting_down:
            return  # a second SIGTERM must not interrupt the orderly stop
        self._shutting_down = True
        raise ShutdownRequested(signal.Signals(signum).name)

    def _write_peer_secret(self) -> None:
        """The key joiners prove to a peer serving its state (see ``launcher.inplace``)."""
        assert self.session is not None
        password = self.config.security.password
        if password is not None:
            material = password.encode()
        else:
            key = f"{contract.etcd_prefix(self.config.rdzv_id)}peer-secret"
            self._retry(lambda: self.session.transaction(  # type: ignore[union-attr]
                [tx.Version(key) == 0], [tx.Put(key, secrets.token_hex(32).encode())]))
            raw = self._retry(lambda: self.session.get(key))  # type: ignore[union-attr]
            if raw is None:
                raise EtcdUnavailableError("could not read the job's peer-state secret")
            material = raw
        path = self.run_dir / "peer-secret"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        inplace.write_secret(path, inplace.derive_secret(material, self.config.rdzv_id))
        self.config.extra_env.setdefault(inplace.PEER_SECRET_FILE, str(path))
        self.config.extra_env.setdefault(inplace.LOCAL_ADDR, self.config.local_addr)

    def _stop_group(self, grace: float | None = None) -> None:
        if self.group is not None:
            self.group.stop(self.config.stop_timeout if grace is None else grace)
            self.group = None

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> int:
        cfg = self.config
        assert self.rdzv is not None
        previous_world = 0
        while True:
            try:
                rnd = self.rdzv.next_round(cfg.join_timeout)
            except RendezvousClosedError:
                log.info("node %s: job already finished; nothing to do", cfg.node_id)
                record = self._retry(self.rdzv.completion)
                if record is not None:
                    self.reporter.write_termination_log(record)
                return 0
            except RendezvousTimeoutError as exc:
                self.reporter.report("RendezvousFailed", str(exc))
                return 1
            log.info("node %s: joined generation %d as group rank %d of %d", cfg.node_id,
                     rnd.generation, rnd.rank, rnd.world_size)
            if self.group is None:  # else in place: the processes go on (see _inplace_tick)
                extra = dict(cfg.extra_env)
                extra.update({
                    "TORCHELASTIC_RUN_ID": cfg.rdzv_id,
                    "TORCHELASTIC_RESTART_COUNT": str(self.restarts),
                    "TORCHELASTIC_MAX_RESTARTS": str(cfg.max_restarts),
                })
                self.group = WorkerGroup(
                    cfg.cmd, cfg.nproc_per_node, rnd, self.run_dir, cfg.hang_timeout,
                    previous_world_size=previous_world, extra_env=extra, pool=self.pool,
                ).start()
            previous_world = rnd.world_size * cfg.nproc_per_node
            outcome = self._monitor(rnd)
            if outcome.kind == "closed":
                self._stop_group(grace=0.0)
                record = self._retry(self.rdzv.completion)
                if record is not None:
                    self.reporter.write_termination_log(record)
                log.info("node %s: the job finished before this node's processes joined it",
                         cfg.node_id)
                return 0
            if outcome.kind == "succeeded":
                self.group = None
                record = self._retry(functools.partial(self.rdzv.complete, rnd))
                if record is not None:
                    self.reporter.write_termination_log(record)
                    log.info("node %s: all local workers finished; training completed in "
                             "generation %d", cfg.node_id, record.generation)
                    return 0
                log.warning("node %s: local workers finished, but generation %d is no longer "
                            "the current round; joining the newer one", cfg.node_id,
                            rnd.generation)
                continue
            # A hung process cannot take the SIGTERM path (it would have to reach a step
            # boundary): the grace would only add to the stall of every survivor.
            hung = outcome.status is not None and outcome.status.reason == "ProcessHung"
            if outcome.kind == "reform":
                why_not = self._why_not_inplace()
                self._record_resize(rnd, why_not)
                if why_not is None:
                    log.info("node %s: resize path in-place for generation %d: %s",
                             cfg.node_id, rnd.generation, outcome.reason)
                    continue
                log.info("node %s: resize path restart for generation %d (%s)", cfg.node_id,
                         rnd.generation, why_not)
            self._stop_group(grace=0.0 if hung else None)
            if outcome.kind == "reform":
                log.info("node %s: re-forming generation %d: %s", cfg.node_id,
                         rnd.generation, outcome.reason)
                if outcome.reason.startswith("peer lost"):
                    self.reporter.write_etcd(self._report_obj("PeerLost", outcome.reason, rnd))
                continue
            assert outcome.status is not None
            if self._handle_failure(rnd, outcome.status):
                return 1

    def _record_resize(self, rnd: Round, why_not: str | None) -> None:
        """Tell the operator (through etcd) which path this node takes out of ``rnd``; best
        effort: an etcd outage must not hold up the resize itself."""
        assert self.rdzv is not None
        record = contract.ResizePath(rnd.generation, self.config.node_id,
                                     "restart" if why_not else "in-place", why_not or "")
        self._retry(functools.partial(self.rdzv.record_resize, record), timeout=1.0)

    def _why_not_inplace(self) -> str | None:
        """None when the running processes can take ``rnd``'s successor in place."""
        if not self.config.inplace:
            return f"{inplace.INPLACE}=0"
        if self.group is not None and self.group.inplace_capable():
            self._inplace_command = True
            return None
        if self.group is not None and self.group.starting(
                float("inf") if self._inplace_command else STARTUP_GRACE):
            # Still importing: killing it for this re-formation would only pay the same
            # start-up again (a cold one: the warm process is used up). A process of a
            # command that announced in-place before will again; any other gets until it is
            # STARTUP_GRACE old to say so (_inplace_tick re-forms by restart if it does not).
            return None
        return ("the training processes did not announce in-place resize (a script "
                "without launcher.training.init, or a backend that cannot abort)")

    def _inplace_tick(self, rnd: Round) -> str | None:
        """Hand ``rnd`` to in-place processes once every member is ready; a reason to
        re-form when a local process lost a peer."""
        assert self.group is not None and self.rdzv is not None
        if not self.config.inplace:
            return None
        assigned = self.group.round.generation
        if assigned < rnd.generation and self._why_not_inplace() is not None:
            return "the training processes did not announce in-place resize in time"
        lost = self.group.lost_peer()
        if lost >= assigned and lost > self._lost_reported:
            self._lost_reported = lost
            self._retry(lambda: self.rdzv.report_lost(rnd.generation))  # type: ignore[union-attr]
            return f"peer lost mid-step in generation {lost} (reported by a training process)"
        # A peer's processes lost someone in the round ours run in: ours are (or will be) stuck
        # in the same collective; say so too, so the round closes without the dead member now.
        reporters = [n for g, n in self.rdzv.snapshot().lost
                     if g in (assigned, rnd.generation) and n != self.config.node_id]
        if reporters and self._lost_reported < assigned:
            self._lost_reported = assigned
            self._retry(lambda: self.rdzv.report_lost(rnd.generation))  # type: ignore[union-attr]
            return f"peer lost mid-step in generation {assigned} (reported by {reporters[0]})"
        # Ready once our processes are set up: a joiner still importing torch is not, so the
        # survivors train on at the old size instead of waiting for its interpreter.
        if self._marked < rnd.generation and self.group.set_up():
            self._retry(lambda: self.rdzv.mark_ready(rnd.generation))  # type: ignore[union-attr]
            self._marked = rnd.generation
        snap = self.rdzv.snapshot()
        if assigned < rnd.generation and snap.all_ready(rnd):
            leaving = {n for n, p in snap.participants.items() if p.leaving}
            gone = set(self.group.round.members) - set(rnd.members) - leaving
            self.group.reassign(rnd, peers_lost=bool(gone))
            log.info("node %s: handed generation %d to the running training processes "
                     "(in place)", self.config.node_id, rnd.generation)
        return None

    def _monitor(self, rnd: Round) -> Outcome:
        assert self.group is not None and self.rdzv is not None and self.session is not None
        version = -1
        while True:
            lost = self._inplace_tick(rnd)
            if lost is not None:
                return Outcome("reform", lost)
            status = self.group.poll()
            if status.state is GroupState.FAILED:
                return Outcome("failed", status.message, status)
            if status.state is GroupState.SUCCEEDED:
                return Outcome("succeeded")
            if status.state is GroupState.STOPPED:
                return Outcome("reform", status.message)
            reason = self.rdzv.reform_reason(rnd)
            if reason is not None:
                return Outcome("reform", reason)
            waiting = self.group.waiting_to_join()  # a stat per process: once per tick
            if waiting and self.rdzv.snapshot().closed:
                return Outcome("closed")
            if self.pool is not None and (not waiting or time.monotonic()
                                          - self.group.started_at > REFILL_AT_THE_LATEST):
                # Refill once the new processes committed a step, not a fixed delay after
                # they started: the refill's torch import (seconds of a core) then does not
                # take CPU from their formation and a joiner's state transfer.
                self.pool.maintain()
            # In-place processes talk through files, not etcd: look at them often.
            interval = min(self.config.monitor_interval, 0.02) \
                if self.config.inplace and self.group.inplace_capable() \
                else self.config.monitor_interval
            version = self.session.wait_change(version, interval)

    def _handle_failure(self, rnd: Round, status: GroupStatus) -> bool:
        """Attribute and report a local failure; True when the agent must exit (budget spent)."""
        cfg = self.config
        assert self.rdzv is not None and self.session is not None
        closed = self._retry(self.rdzv.is_closed, default=False)
        if not closed:
            self._retry(lambda: self.rdzv.announce_waiting(after=rnd.generation))  # type: ignore[union-attr]
        own, why = (True, "") if closed else self._attribute(rnd, status.exit_time)
        if not own:
            log.info("node %s: local workers failed as a consequence (%s); not counted",
                     cfg.node_id, why)
            return False
        rank = self.group_rank_of(rnd, status.local_rank)
        self.reporter.report(status.reason, status.message, rank=rank,
                             exit_code=status.exit_code, generation=rnd.generation)
        if closed:
            return True  # the job is finished: no round to restart into
        self.restarts += 1
        if self.restarts > cfg.max_restarts:
            self.reporter.report(
                "MaxRestartsExceeded",
                f"{status.reason}: {status.message}; restart {self.restarts} exceeds "
                f"--max-restarts={cfg.max_restarts}",
                rank=rank, exit_code=status.exit_code, generation=rnd.generation,
            )
            return True
        log.info("node %s: restart %d of %d", cfg.node_id, self.restarts, cfg.max_restarts)
        return False

    def group_rank_of(self, rnd: Round, local_rank: int) -> int:
        return rnd.rank * self.config.nproc_per_node + local_rank

    def _attribute(self, rnd: Round, first_exit: float) -> tuple[bool, str]:
        """(is this node the origin of the failure, why not)."""
        assert self.rdzv is not None and self.session is not None
        self._retry(lambda: self.rdzv.claim_fault(rnd.generation, first_exit))  # type: ignore[union-attr]
        # A SIGKILLed peer is only known after its lease expires: wait that long at most.
        deadline = time.monotonic() + self.config.lease_ttl + 1.0
        version = -1
        while True:
            origin = self.rdzv.fault_origin(rnd.generation, own=first_exit)
            snap = self.rdzv.snapshot()
            if self.session.connected:
                lost = [m for m in rnd.members if m not in snap.participants]
                if lost:
                    return False, f"peer lost: {', '.join(lost)}"
                if origin is not None and origin != self.config.node_id:
                    return False, f"node {origin} failed first"
            if time.monotonic() >= deadline:
                return origin in (None, self.config.node_id), f"node {origin} failed first"
            version = self.session.wait_change(version, deadline - time.monotonic())

    # -- helpers ---------------------------------------------------------------------------

    def _report_obj(self, reason: str, message: str, rnd: Round) -> contract.FailureReport:
        return contract.FailureReport(reason=reason, message=message, node_id=self.config.node_id,
                                      generation=rnd.generation, timestamp=time.time())

    def _retry(self, fn: Callable[[], T], default: T | None = None,
               timeout: float = 60.0) -> T | None:
        """Call ``fn`` until etcd answers (backoff 0.1 -> 1 s) or ``timeout``, then ``default``."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            try:
                return fn()
            except EtcdUnavailableError as exc:
                if time.monotonic() + delay > deadline:
                    log.warning("giving up on etcd after %.0fs: %s", timeout, exc)
                    return default
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
