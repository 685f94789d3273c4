"""In-place resize: the training process survives joins, leaves and lost peers.

``init()`` returns an ``InPlaceSession`` that owns the step boundary of a plain DDP-style loop
(see ``launcher/training/README.md`` for the diff from a ``torchrun`` script). The agent does not
restart a process that announced this capability; it hands it each newer round through the
local channel of ``launcher.inplace``.

One all-reduce per step carries the gradients *and* the agreement. Its buffer is this rank's
gradients, weighted by its share of the step's samples (so the sum is the exact mean over the
step, whatever the shares), followed by two counters: "I have an assignment for a newer round"
and "I am leaving (SIGTERM)". Consequences:

- Agreement costs nothing extra, and every rank that completes the all-reduce sees the same
  counters, so all ranks switch to the new round after the same step.
- The commit point is the all-reduce: a rank whose all-reduce completed holds every rank's
  gradients and applies the optimizer step (``commit``). A peer lost mid-step makes the
  collective fail (gloo: its sockets are reset; nccl: aborted, see ``communicator``); the rank
  discards the step (no optimizer step, no sampler progress, an ``IndexLog`` ``discard``
  record), tells its agent, and joins the next round before ``optimizer.step()`` returns
  (so the rest of the script's loop body sees a process group, of the new round).
- After a failure, survivors can disagree by one step (the all-reduce completed on some ranks
  only); every (re)formation brings all ranks to the newest committed state, a joiner's from a
  peer's memory, never from disk (``launcher.training.formation``). ``optimizer.step()`` returns
  False for a discarded step, and a scheduler given to ``wrap`` does not advance on it.
- What a committed step decides (a checkpoint, a leave, a regroup, the state served to a
  joiner) is carried out at the next boundary, when the script has finished the step (its
  scheduler stepped), so every rank and every copy of the state is at the same point of the
  loop. Checkpoints are written every ``ELASTIC_CHECKPOINT_INTERVAL`` steps by rank 0, and on an
  agreed stop of the whole world, for whole-job restarts.
- A stop is not a completion: a rank that leaves (its pod is deleted) records ``STOPPED`` and
  exits 0 after the agreed step; when every rank leaves, rank 0 writes a checkpoint first. Only
  the end of ``epochs()`` records ``COMPLETED``.

Limits: ``fixedPerWorker`` batching only (one loader batch per optimizer step; ``fixedGlobal``
needs gradient accumulation: use ``ElasticSession``), a ``DataLoader`` with ``num_workers=0``
(the sampler decides each step's samples when the previous step has committed), and the loss of
a batch must be the *mean* over its samples (as in any DDP script).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch

from launcher import contract
from launcher.contract import WorkerOutcome, write_outcome
from launcher.inplace import (
    ASSIGNMENT_FILE,
    INDEX_LOG,
    LOCAL_ADDR,
    PEER_SECRET_FILE,
    STATUS_FILE,
    Assignment,
    WorkerStatus,
    read_assignment,
    read_secret,
    write_status,
)
from launcher.training import formation
from launcher.training.audit import IndexLog
from launcher.training.batching import BatchPlan
from launcher.training.checkpoint import CheckpointDir
from launcher.training.communicator import CollectiveAborted, Communicator
from launcher.training.context import ElasticContext
from launcher.training.heartbeat import Heartbeat
from launcher.training.lr import ElasticLR
from launcher.training.sampler import ElasticSampler, Step
from launcher.training.short_api import ElasticOptimizer, RankSampler
from launcher.training.stop import StopRequest

log = logging.getLogger(__name__)


class InPlaceSession:
    """See the module docstring; made by ``init()``."""

    def __init__(self, ctx: ElasticContext, *, backend: str = "gloo",
                 env: dict[str, str] | None = None, collective_timeout: float = 60.0,
                 warmup_steps: int = 5) -> None:
        env = dict(os.environ if env is None else env)
        self.ctx = ctx
        self.comm = Communicator(backend, ctx.local_rank, collective_timeout)
        self.warmup_steps = warmup_steps
        self.status_file = env.get(STATUS_FILE) or None
        self.assignment_file = env.get(ASSIGNMENT_FILE) or None
        self.local_addr = env.get(LOCAL_ADDR) or "127.0.0.1"
        secret_file = env.get(PEER_SECRET_FILE)
        self.secret = read_secret(secret_file) if secret_file else b""
        self.assignment = Assignment(ctx.generation, ctx.rank, ctx.world_size, ctx.master_addr,
                                     ctx.master_port, ctx.previous_world_size)
        self.checkpoints = CheckpointDir(ctx.checkpoint_dir) if ctx.checkpoint_dir else None
        self.index_log = IndexLog(env[INDEX_LOG]) if env.get(INDEX_LOG) else None
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any | None = None
        self.elastic_lr: ElasticLR | None = None
        self.data_sampler: ElasticSampler | None = None
        self.batch_size = 0
        self.seed = 0
        self.plan: BatchPlan | None = None
        self.global_step = -1  # -1: this process holds no training state yet
        self.saved_step = 0
        self.discarded = 0
        self.last_discarded = False
        self.pending: Step | None = None
        self.boundaries = 0  # commits + discards: tells the sampler a step is over
        # Decided by the last step, done at the next boundary (see ``boundary``).
        self._due_save = False
        self._due_switch = False
        self._due_leaving = 0
        self.last_step: tuple[int, Step, BatchPlan] | None = None  # (generation, step, plan)
        self._assignment_mtime = self._mtime()
        self._status = WorkerStatus()
        self._heartbeat = Heartbeat(ctx.heartbeat_file)
        self._armed = False  # the first committed step arms the agent's hang timer
        self._last_beat = 0.0
        self._stop = StopRequest()
        self.formed = False
        if ctx.batching != "fixedPerWorker":
            raise ValueError(f"{contract.PodEnv.BATCHING}={ctx.batching}: the short API runs "
                             "one loader batch per optimizer step (fixedPerWorker); for "
                             "fixedGlobal use ElasticSession with BatchPlan micro-batches")
        if not ctx.standalone and self.status_file and self.comm.can_abort and self.secret:
            self.set_status(inplace=True)
        elif not ctx.standalone:
            log.info("rank %d: in-place resize unavailable (%s); the agent restarts this process "
                     "on every resize", ctx.rank,
                     "backend cannot abort" if not self.comm.can_abort else
                     "no agent channel or peer secret")

    # -- what the script registers ----------------------------------------------------------

    @property
    def rank(self) -> int:
        return self.assignment.rank

    @property
    def world_size(self) -> int:
        return self.assignment.world_size

    @property
    def step(self) -> int:
        """Committed optimizer steps so far (the same on every rank)."""
        return max(self.global_step, 0)

    def sampler(self, data: Sized, *, batch_size: int, seed: int = 0,
                shuffle: bool = True) -> RankSampler:
        """Replaces ``DistributedSampler``: this rank's share of each step, exactly once."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.data_sampler = ElasticSampler(len(data), seed=seed, shuffle=shuffle)
        self.batch_size, self.seed = batch_size, seed
        return RankSampler(self)

    def ddp(self, module: torch.nn.Module) -> torch.nn.Module:
        """Replaces ``DistributedDataParallel(module)``: returns ``module`` itself (the session
        all-reduces the gradients in ``optimizer.step()``), so it stays valid across resizes."""
        self.model = module.to(self.comm.device)
        return self.model

    def wrap(self, optimizer: torch.optim.Optimizer, scheduler: Any | None = None
             ) -> ElasticOptimizer:
        """The optimizer whose ``step()`` is the step boundary (agreement, gradient all-reduce,
        commit); ``scheduler`` is saved, transferred and not advanced after a discarded step."""
        self.optimizer = optimizer
        self.scheduler = scheduler
        if scheduler is not None:
            original: Callable[..., Any] = scheduler.step

            def step(*args: Any, **kwargs: Any) -> Any:
                return None if self.last_discarded else original(*args, **kwargs)
            scheduler.step = step
        return ElasticOptimizer(self, optimizer)

    def epochs(self, total: int) -> Iterator[int]:
        """Replaces ``range(total)``: the epochs still to run (a joiner starts mid-way).

        An epoch is yielded again when its last step was discarded (the loader then yields the
        redone step); a rank whose share of an epoch's last step is empty takes part in that
        step here. Ends with the final checkpoint and the ``COMPLETED`` outcome.
        """
        self._require_registered()
        assert self.data_sampler is not None
        if not self.formed:
            formation.form(self, self.assignment)
        self.boundary()
        while self.data_sampler.epoch < total:
            epoch = self.data_sampler.epoch
            yield epoch
            self.boundary()
            while self.data_sampler.epoch == epoch and not self.share(self.next_step()):
                self.pending = self.next_step()
                self.sync_step()
                self.boundary()
        self._finish()

    # -- the step boundary -------------------------------------------------------------------

    def next_step(self) -> Step:
        assert self.data_sampler is not None and self.plan is not None
        return self.data_sampler.next_step(self.plan)

    def share(self, step: Step) -> list[int]:
        assert self.plan is not None
        return self.plan.split(step.indices, self.rank)[0].indices

    def sync_step(self) -> bool:
        """All-reduce gradients + agreement, commit; False when the step was discarded."""
        assert self.model is not None and self.optimizer is not None
        assert self.elastic_lr is not None and self.data_sampler is not None
        step = self.pending
        if step is None:
            raise RuntimeError("optimizer.step() called without a batch from session.sampler "
                               "(iterate a DataLoader over it, num_workers=0)")
        params = [p for p in self.model.parameters() if p.requires_grad]
        weight = len(self.share(step)) / len(step.indices)
        sizes = [p.numel() for p in params]
        flat = torch.zeros(sum(sizes) + 2, dtype=torch.float32, device=self.comm.device)
        offset = 0
        for p, n in zip(params, sizes, strict=True):
            if p.grad is not None and weight > 0:
                flat[offset:offset + n].copy_(p.grad.reshape(-1)).mul_(weight)
            offset += n
        flat[-2] = 1.0 if self._newer_assignment() is not None else 0.0
        flat[-1] = 1.0 if self._stop.requested else 0.0
        if self.world_size > 1:
            def dead() -> bool:
                self._keepalive()  # waiting on a frozen peer is not being frozen
                newer = self._newer_assignment()
                return newer is not None and newer.peers_lost
            try:
                self.comm.all_reduce(flat, dead)
            except CollectiveAborted as exc:
                self._discard(step, exc)
                return False
        offset = 0
        for p, n in zip(params, sizes, strict=True):
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n
        self.elastic_lr.step()
        self._commit(step)
        self._due_leaving = int(flat[-1].item())
        self._due_switch = bool(flat[-2].item()) or self._due_leaving > 0
        return True

    def boundary(self) -> None:
        """What the last step decided, done once the script has finished that step (its
        scheduler stepped): so a checkpoint, a served state and a regroup all see the whole
        step. Called by the sampler before it picks the next step's samples, and by
        ``epochs()``; a no-op when nothing is due."""
        if self._due_save or self._due_leaving >= self.world_size:
            self._due_save = False
            self.save()
        if self._due_leaving >= self.world_size:
            self._exit(WorkerOutcome.STOPPED, "every rank is leaving: checkpoint written")
        if self._due_leaving and self._stop.requested:
            self._exit(WorkerOutcome.STOPPED, "leaving the job; the others go on without it")
        if self._due_switch:
            self._due_switch, self._due_leaving = False, 0
            self.comm.destroy()
            formation.form(self, self.wait_assignment())

    def _commit(self, step: Step) -> None:
        assert self.data_sampler is not None and self.plan is not None
        self.data_sampler.commit(step)
        self.global_step += 1
        self.last_discarded = False
        self.pending = None
        self.boundaries += 1
        self.last_step = (self.assignment.generation, step, self.plan)
        if self.index_log is not None:
            self.index_log.step(generation=self.assignment.generation, step=self.global_step,
                                epoch=step.epoch, rank=self.rank, indices=self.share(step))
        self._heartbeat.beat(self.global_step)
        self._armed, self._last_beat = True, time.monotonic()
        interval = self.ctx.checkpoint_interval
        self._due_save = interval > 0 and self.global_step % interval == 0

    def _discard(self, step: Step, exc: BaseException) -> None:
        log.warning("rank %d generation %d: step %d discarded, a peer is gone (%s); "
                    "regrouping in place", self.rank, self.assignment.generation,
                    self.global_step + 1, exc)
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        self.discarded += 1
        self.last_discarded = True
        self.pending = None
        self.boundaries += 1
        if self.index_log is not None:
            self.index_log.discard(generation=self.assignment.generation,
                                   step=self.global_step + 1, rank=self.rank)
        self.set_status(lost=self.assignment.generation)
        self.comm.abort()
        # Regroup now, not at the next boundary: the script's code after optimizer.step()
        # (``dist.get_rank()`` for its log line) needs a process group, and a discarded step
        # changed nothing (no optimizer or scheduler step), so the state served from here is
        # the last committed one either way.
        formation.form(self, self.wait_assignment())

    # -- rounds ------------------------------------------------------------------------------

    def _mtime(self) -> float:
        try:
            return os.stat(self.assignment_file).st_mtime if self.assignment_file else 0.0
        except FileNotFoundError:
            return 0.0

    def _newer_assignment(self) -> Assignment | None:
        """An assignment for a round newer than ours, if the agent wrote one (one ``stat``)."""
        mtime = self._mtime()
        if mtime == self._assignment_mtime or self.assignment_file is None:
            return None
        found = read_assignment(self.assignment_file)
        if found is None or found.generation <= self.assignment.generation:
            return None
        return found

    def wait_assignment(self, timeout: float = 600.0) -> Assignment:
        """The agent's next round (after a discarded step or a failed formation); a SIGTERM
        meanwhile saves this rank's state and leaves, since no group is left to agree in."""
        deadline = time.monotonic() + timeout
        while (found := self._newer_assignment()) is None:
            self._keepalive()
            if self._stop.requested:
                # The whole job is going away (this pod too): the group is gone, but this
                # rank holds the full state of the last committed step, so it saves it.
                self.save(any_rank=True)
                self._exit(WorkerOutcome.STOPPED, "stopped while between rounds")
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank {self.rank}: no newer round from the agent within "
                                   f"{timeout}s")
            time.sleep(0.002)
        return found

    def adopt(self, assignment: Assignment) -> None:
        """Form ``assignment``'s round from now on (a newer one is again news)."""
        self.assignment = assignment
        self._assignment_mtime = self._mtime()

    def superseded(self) -> bool:
        """The agent handed over a newer round: the one this process forms is abandoned.

        Called by every wait of a formation or between rounds, so it also keeps the heartbeat:
        a process that polls is waiting for its peers or its agent, not hung, and the hang
        detection must pick out the frozen process, not the ones waiting for it."""
        self._keepalive()
        return self._newer_assignment() is not None

    def _keepalive(self) -> None:
        """Beat (at most every 0.2 s) once the first step armed the agent's hang timer."""
        now = time.monotonic()
        if self._armed and now - self._last_beat >= 0.2:
            self._last_beat = now
            self._heartbeat.beat(self.global_step)

    def retarget(self) -> None:
        """The ElasticLR of the boundary, continued in this world (ramp after a resize)."""
        assert self.optimizer is not None
        state = self.elastic_lr.state_dict() if self.elastic_lr is not None else None
        self.elastic_lr = ElasticLR(self.optimizer, policy=self.ctx.lr_scaling,
                                    world_size=self.world_size,
                                    base_world_size=self.ctx.base_world_size,
                                    batching="fixedPerWorker", warmup_steps=self.warmup_steps)
        if state is not None:
            self.elastic_lr.load_state_dict(state)

    # -- state -------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything a process needs to continue this run (checkpoint and peer transfer)."""
        return formation.state(self)

    def save(self, any_rank: bool = False) -> None:
        """Rank 0 (or this rank: ``any_rank``) writes the boundary's checkpoint; no collective,
        so a lost peer cannot stop it."""
        if self.checkpoints is None or self.global_step <= self.saved_step:
            return
        if self.rank == 0 or any_rank:
            path = self.checkpoints.save(self.global_step, self.state())
            log.info("saved %s", path)
        self.saved_step = self.global_step

    # -- leaving -------------------------------------------------------------------------------

    def _finish(self) -> None:
        self.boundary()
        self.save()
        if self.world_size > 1:
            self.comm.all_reduce(torch.zeros(1, device=self.comm.device), lambda: False)
        self._record(WorkerOutcome.COMPLETED)
        self._close()

    def _exit(self, outcome: WorkerOutcome, why: str) -> None:
        log.info("rank %d: %s after step %d", self.rank, why, self.global_step)
        self._record(outcome)
        self._close()
        self.comm.abort()
        sys.exit(contract.EXIT_RESIZE)

    def _record(self, outcome: WorkerOutcome) -> None:
        if self.ctx.outcome_file:
            write_outcome(self.ctx.outcome_file, outcome, self.global_step)

    def _close(self) -> None:
        self._heartbeat.close()
        self._stop.uninstall()
        if self.index_log is not None:
            self.index_log.close()
            self.index_log = None

    def set_status(self, **changes: Any) -> None:
        """Tell the agent (the status file): in-place capable, ready for a round, lost one."""
        fields = {**self._status.__dict__, **changes}
        self._status = WorkerStatus(**fields)
        if self.status_file:
            write_status(self.status_file, self._status)

    def _require_registered(self) -> None:
        missing = [what for what, value in (("session.sampler(data, ...)", self.data_sampler),
                                            ("session.ddp(model)", self.model),
                                            ("session.wrap(optimizer)", self.optimizer))
                   if value is None]
        if missing:
            raise RuntimeError(f"call {', '.join(missing)} before session.epochs()")


def init(backend: str | None = None, *, collective_timeout: float = 60.0,
         warmup_steps: int = 5) -> InPlaceSession:
    """Replaces ``dist.init_process_group``: an elastic session for this process.

    Started by the launcher it resizes in place; started alone (plain ``python``) it is a
    one-process run. ``backend`` defaults to nccl when CUDA is available, else gloo.
    """
    ctx = ElasticContext.from_env(allow_standalone=True, announce=False)
    chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    return InPlaceSession(ctx, backend=chosen, collective_timeout=collective_timeout,
                          warmup_steps=warmup_steps)
