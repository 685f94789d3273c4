"""The training loop's elastic bookkeeping in one object: resume, step boundaries, checkpoints.

Consistency argument (why a checkpoint written by rank 0 is the state of the whole world):
1. Every rank calls ``finish_step`` once per optimizer step, so ``global_step`` is the same
   number on all ranks at every boundary.
2. At a boundary, the replicated state is identical on all ranks: DDP gives all ranks the same
   averaged gradients, so the same model and optimizer state; the scheduler and ``ElasticLR``
   advance with the step count; the sampler's progress is a pure function of the committed
   steps. Rank 0's copy is therefore everyone's.
3. Every rank saves at the same boundaries: periodic saves depend only on ``global_step``; the
   stop decision is the result of one all-reduce per boundary (``StopRequest.agreed``), equal on
   all ranks. The per-rank part (RNG states) is gathered to rank 0 at that moment.
4. Progress (``sampler.commit``) moves only after the optimizer step, so a checkpoint never
   records samples whose gradients are not in the saved model, and a step cut short (e.g. a
   SIGKILL in the middle of a gradient-accumulation cycle) is not in any checkpoint; after the
   restore it is taken again, whole. The write itself is atomic (``checkpoint.write_atomic``).
5. The agent learns which of the two ways a process ended: after an agreed stop it records
   ``WorkerOutcome.STOPPED`` (the world is re-forming, the checkpoint is written), after the
   last step ``close`` records ``COMPLETED``. Both exit 0; only the second can make a job
   Succeeded.
On SIGTERM the agent's grace period must cover finishing the current step plus one save; if it
does not, the process is killed and the next generation rolls back to the previous checkpoint,
which is still exact under the lineage definition of ``launcher.training.audit``.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import torch
import torch.distributed as dist

from launcher.contract import WorkerOutcome, write_outcome
from launcher.training import rng
from launcher.training.audit import IndexLog
from launcher.training.batching import BatchPlan
from launcher.training.checkpoint import CheckpointDir, read_verified
from launcher.training.context import ElasticContext
from launcher.training.heartbeat import Heartbeat
from launcher.training.lr import ElasticLR
from launcher.training.sampler import ElasticSampler, Step
from launcher.training.stop import StopRequest

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class ElasticSession:
    """Ties sampler, LR scaling, checkpoints, heartbeat and stop handling to the step loop.

    Typical use (every rank runs the same code)::

        session = ElasticSession(ctx, model=net, optimizer=opt, sampler=sampler, plan=plan,
                                 elastic_lr=elr, scheduler=sched, checkpoints=CheckpointDir(d))
        session.resume()
        while session.epoch < epochs:
            step = session.next_step()
            ...forward/backward over step.micro_batches(plan, ctx.rank)...
            elr.step(); opt.zero_grad(); sched.step()
            if session.finish_step(step):
                break                       # agreed stop: checkpoint written, exit 0
        session.close()                     # saves progress not yet saved

    ``model`` is the plain module (not the DDP wrapper), so checkpoints load without DDP.
    ``extra_state`` is a dict of the user's own (``weights_only``-loadable) values that is saved
    and restored with the rest.
    """

    def __init__(self, ctx: ElasticContext, *, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, sampler: ElasticSampler, plan: BatchPlan,
                 elastic_lr: ElasticLR | None = None, scheduler: Any | None = None,
                 checkpoints: CheckpointDir | None = None, checkpoint_interval: int = 0,
                 seed: int = 0, index_log: IndexLog | None = None) -> None:
        if plan.world_size != ctx.world_size:
            raise ValueError(f"plan is for world size {plan.world_size}, this world has "
                             f"{ctx.world_size}")
        self.ctx = ctx
        self.model = model
        self.optimizer = optimizer
        self.sampler = sampler
        self.plan = plan
        self.elastic_lr = elastic_lr
        self.scheduler = scheduler
        self.checkpoints = checkpoints
        self.checkpoint_interval = checkpoint_interval
        self.seed = seed
        self.index_log = index_log
        self.extra_state: dict[str, Any] = {}
        self.global_step = 0
        self.restored_step = 0
        self.restored_world_size = 0
        self._saved_step = 0
        self._stopped = False
        self._heartbeat = Heartbeat(ctx.heartbeat_file)
        self._stop = StopRequest()

    @property
    def epoch(self) -> int:
        """The epoch the next step belongs to."""
        return self.sampler.epoch

    @property
    def stop_requested(self) -> bool:
        """This process received SIGTERM (the world stops at the next agreed boundary)."""
        return self._stop.requested

    def resume(self) -> int:
        """Load the newest valid checkpoint, if any; returns the step it was taken after.

        Rank 0 picks the checkpoint and broadcasts its step, so all ranks load the same file
        even if the directory changed meanwhile; the directory must therefore be shared by all
        nodes (same path). A collective when distributed.
        """
        step = 0
        state: dict[str, Any] | None = None
        if self.checkpoints is not None:
            if self.ctx.is_main:
                self.checkpoints.remove_stale_temporaries()
                found = self.checkpoints.load_latest()
                if found is not None:
                    step, state = found[0].step, found[1]
            step = _broadcast_int(step)
            if step and state is None:
                state = read_verified(self.checkpoints.path_for(step))
        if state is not None:
            self._apply(state)
        else:
            rng.reseed(self.seed, 0, self.ctx.rank)
        self.global_step = self._saved_step = self.restored_step = step
        if self.index_log is not None:
            self.index_log.restore(generation=self.ctx.generation, step=step, rank=self.ctx.rank)
        log.info("rank %d generation %d world %d: resumed after step %d (epoch %d, %d samples "
                 "consumed)", self.ctx.rank, self.ctx.generation, self.ctx.world_size, step,
                 self.sampler.epoch, self.sampler.consumed)
        return step

    def _apply(self, state: dict[str, Any]) -> None:
        if state.get("format") != FORMAT_VERSION:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not "
                             f"{FORMAT_VERSION}; it was written by another version")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.elastic_lr is not None and state.get("elastic_lr") is not None:
            self.elastic_lr.load_state_dict(state["elastic_lr"])
        self.sampler.load_state_dict(state["sampler"])
        self.extra_state = dict(state.get("extra", {}))
        self.restored_world_size = int(state["world_size"])
        rng_states = state["rng"]
        if self.restored_world_size == self.ctx.world_size:
            rng.restore(rng_states[self.ctx.rank])
        else:
            # A rank has no predecessor in a resized world; derive fresh, distinct streams.
            rng.reseed(self.seed, int(state["step"]), self.ctx.rank)

    def next_step(self) -> Step:
        """The samples of the next optimizer step (all ranks'; split with ``micro_batches``)."""
        return self.sampler.next_step(self.plan)

    def finish_step(self, step: Step) -> bool:
        """Commit ``step`` (call after the optimizer step); returns True when the world must stop.

        Writes the heartbeat, the index log, and a checkpoint every ``checkpoint_interval``
        steps and on an agreed stop. A collective when distributed: every rank calls it once per
        step.
        """
        self.sampler.commit(step)
        self.global_step += 1
        if self.index_log is not None:
            mine = [i for mb in step.micro_batches(self.plan, self.ctx.rank) for i in mb.indices]
            self.index_log.step(generation=self.ctx.generation, step=self.global_step,
                                epoch=step.epoch, rank=self.ctx.rank, indices=mine)
        self._heartbeat.beat(self.global_step)
        stop = self._stop.agreed()
        interval = self.checkpoint_interval
        if stop or (interval > 0 and self.global_step % interval == 0):
            self.save()
        if stop:
            self._stopped = True
            self._record(WorkerOutcome.STOPPED)
        return stop

    def save(self) -> None:
        """Checkpoint the current boundary (no-op when it is already saved or no directory is
        configured). A collective when distributed: all ranks call it at the same boundary."""
        if self.checkpoints is None or self.global_step == self._saved_step:
            return
        rng_states = _gather(rng.capture())
        if self.ctx.is_main:
            state = {
                "format": FORMAT_VERSION,
                "step": self.global_step,
                "world_size": self.ctx.world_size,
                "generation": self.ctx.generation,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "elastic_lr": None if self.elastic_lr is None else self.elastic_lr.state_dict(),
                "sampler": self.sampler.state_dict(),
                "rng": rng_states,
                "extra": self.extra_state,
            }
            path = self.checkpoints.save(self.global_step, state)
            log.info("saved %s (epoch %d, %d samples consumed)", path, self.sampler.epoch,
                     self.sampler.consumed)
        self._saved_step = self.global_step

    def close(self) -> None:
        """Save unsaved progress, release the heartbeat file and the SIGTERM handler.

        Called after the training loop. Unless the loop ended on an agreed stop, this records
        ``WorkerOutcome.COMPLETED``: the script says training reached its end.
        """
        self.save()
        if not self._stopped:
            self._record(WorkerOutcome.COMPLETED)
        self._heartbeat.close()
        self._stop.uninstall()
        if self.index_log is not None:
            self.index_log.close()


    def _record(self, outcome: WorkerOutcome) -> None:
        if self.ctx.outcome_file:
            write_outcome(self.ctx.outcome_file, outcome, self.global_step)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _broadcast_int(value: int) -> int:
    if not _distributed():
        return value
    box = torch.tensor([value], dtype=torch.int64)
    dist.broadcast(box, src=0)
    return int(box.item())


def _gather(state: dict[str, Any]) -> list[dict[str, Any]]:
    """All ranks' ``state`` on every rank (torch's ``all_gather_object`` needs NumPy; this
    does not). Peers are the same job's processes, so unpickling their bytes is trusted."""
    if not _distributed():
        return [state]
    payload = torch.frombuffer(bytearray(pickle.dumps(state)), dtype=torch.uint8)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([payload.numel()], dtype=torch.int64))
    longest = max(int(size.item()) for size in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[:payload.numel()] = payload
    buffers = [torch.empty(longest, dtype=torch.uint8) for _ in sizes]
    dist.all_gather(buffers, padded)
    return [pickle.loads(bytes(buf[:int(size.item())].tolist()))
            for buf, size in zip(buffers, sizes, strict=True)]
