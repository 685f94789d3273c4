"""Forming an in-place round: join its process group and bring every rank to one state.

What :class:`~launcher.training.inplace.InPlaceSession` does between two rounds, in a module of
its own (the session holds the step boundary). It reads and sets the members of the session
that :class:`Forming` lists, and imports nothing of the session's module (no import cycle).

- After a failure, survivors can disagree by one step (the all-reduce completed on some ranks
  only). At every (re)formation the ranks exchange their committed step; the lowest rank with
  the highest step is the source, every rank behind it (and every joiner: step -1) loads the
  source's state. A rank that completed the all-reduce applied the same full gradient to the
  same state, so any rank at the highest step holds *the* state of that step: the new world is
  consistent, and the step is in the lineage exactly once (the source re-logs that step's index
  shares for every old rank, idempotently). When nobody completed it, everyone is at the
  previous step and the step is redone at the new size.
- A joiner's state comes from the source's memory over ``peer_state`` (authenticated by the
  job's secret), never from disk; only a fresh start (nobody holds state) reads the newest
  checkpoint.
- LR and batching follow the same rules as the restart path: the ``ElasticLR`` state of the
  boundary is loaded into an ``ElasticLR`` for the new world (a ramp from the old factor), the
  ``BatchPlan`` is rebuilt and the sampler continues from ``consumed``, so the remaining samples
  of the epoch are re-split over the new world.
- A round can be abandoned while it forms (see :func:`form`).
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any, Protocol

import torch
import torch.distributed as dist

from launcher.inplace import Assignment
from launcher.training import peer_state, rng
from launcher.training.audit import IndexLog
from launcher.training.batching import BatchPlan
from launcher.training.checkpoint import CheckpointDir, read_verified
from launcher.training.communicator import CollectiveAborted, Communicator
from launcher.training.context import ElasticContext
from launcher.training.lr import ElasticLR
from launcher.training.sampler import ElasticSampler, Step

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class Forming(Protocol):
    """What a formation reads and sets of the session (``InPlaceSession`` is one)."""

    ctx: ElasticContext
    comm: Communicator
    assignment: Assignment
    model: torch.nn.Module | None
    optimizer: torch.optim.Optimizer | None
    scheduler: Any | None
    elastic_lr: ElasticLR | None
    data_sampler: ElasticSampler | None
    plan: BatchPlan | None
    batch_size: int
    seed: int
    global_step: int
    saved_step: int
    index_log: IndexLog | None
    checkpoints: CheckpointDir | None
    local_addr: str
    secret: bytes
    last_step: tuple[int, Step, BatchPlan] | None
    formed: bool

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def adopt(self, assignment: Assignment) -> None: ...

    def set_status(self, **changes: Any) -> None: ...

    def superseded(self) -> bool: ...

    def wait_assignment(self, timeout: float = 600.0) -> Assignment: ...

    def retarget(self) -> None: ...


def form(session: Forming, assignment: Assignment) -> None:
    """Join ``assignment``'s group and bring every rank to the newest committed state.

    A round can be abandoned while it forms: a member dies, or the membership changes
    again (a scale flap) before every member arrived. Every wait of the formation is
    polled against a newer assignment (``session.superseded``), and a failed formation tells
    the agent (``lost``, so it re-forms now) and forms the next round instead: no member waits
    for a store or collective timeout. What a failed formation leaves is a committed state
    (a load from a peer is whole or not at all), so the next formation starts from it."""
    while True:
        try:
            _form_once(session, assignment)
            return
        except (CollectiveAborted, peer_state.PeerStateRefused, OSError) as exc:
            log.warning("rank %d: generation %d did not form (%s); waiting for the next "
                        "round", assignment.rank, assignment.generation, exc)
            session.comm.abort()
            session.set_status(lost=assignment.generation)
            assignment = session.wait_assignment()


def _form_once(session: Forming, assignment: Assignment) -> None:
    assert session.model is not None and session.optimizer is not None
    started = time.monotonic()
    session.adopt(assignment)
    world, rank = assignment.world_size, assignment.rank
    if session.ctx.standalone:  # a group of one, so the script's dist calls still work
        session.comm.init(0, 1, "127.0.0.1", _free_port())
    else:
        session.set_status(ready=assignment.generation)
        session.comm.init(rank, world, assignment.master_addr, assignment.master_port,
                          session.superseded)
    session.plan = BatchPlan.create("fixedPerWorker", world_size=world,
                                    micro_batch=session.batch_size,
                                    base_world_size=session.ctx.base_world_size)
    steps = _exchange_steps(session)
    top = max(steps)
    source, behind = steps.index(top), [r for r, s in enumerate(steps) if s != top]
    if top < 0:
        _fresh_start(session)
    else:
        healed = any(0 <= steps[r] < top for r in behind)
        if rank == source and (healed or assignment.peers_lost):
            _relog_last_step(session)
        if behind:
            _transfer(session, source, behind)
    session.retarget()
    rng.reseed(session.seed, session.global_step, rank)
    if session.index_log is not None:
        session.index_log.restore(generation=assignment.generation, step=session.global_step,
                                  rank=rank)
    session.formed = True
    if rank == 0:
        log.info("generation %d: world %d formed in place after step %d in %.3fs (state "
                 "from rank %d to %s)", assignment.generation, world, session.global_step,
                 time.monotonic() - started, source, behind if top >= 0 else "nobody")


def _exchange_steps(session: Forming) -> list[int]:
    if session.world_size == 1:
        return [session.global_step]
    box = torch.zeros(session.world_size, dtype=torch.int64, device=session.comm.device)
    box[session.rank] = session.global_step
    session.comm.all_reduce(box, session.superseded)
    return [int(v) for v in box.tolist()]


def _transfer(session: Forming, source: int, behind: list[int]) -> None:
    """Ranks in ``behind`` load the state of ``source`` from its memory."""
    comm = session.comm
    assert comm.store is not None
    generation = session.assignment.generation
    key = f"peer-state/{generation}"
    server = None
    if session.rank == source:
        server = peer_state.StateServer(session.local_addr, session.secret, generation,
                                        peer_state.Payload(state(session)))
        comm.store.set(key, server.address)
    try:
        if session.rank in behind:
            address = comm.get(key, session.superseded)
            load(session, peer_state.fetch(address, session.secret, generation))
        comm.all_reduce(torch.zeros(1, device=comm.device), session.superseded)
    finally:
        if server is not None:
            server.close()


def _relog_last_step(session: Forming) -> None:
    """After a lost peer, the last committed step is in the lineage with every old rank's
    share, but the dead rank (or a survivor that missed the step) may not have logged its
    own: log them all again (the audit counts a (generation, step, rank) once)."""
    if session.index_log is None or session.last_step is None:
        return
    generation, step, plan = session.last_step
    for old_rank in range(plan.world_size):
        indices = [i for mb in step.micro_batches(plan, old_rank) for i in mb.indices]
        session.index_log.step(generation=generation, step=session.global_step,
                               epoch=step.epoch, rank=old_rank, indices=indices)


def _fresh_start(session: Forming) -> None:
    """Nobody holds state: the newest checkpoint, or rank 0's initial weights (like DDP)."""
    assert session.model is not None
    comm, checkpoints = session.comm, session.checkpoints
    step, found_state = 0, None
    if checkpoints is not None:
        if session.rank == 0:
            checkpoints.remove_stale_temporaries()
            found = checkpoints.load_latest()
            if found is not None:
                step, found_state = found[0].step, found[1]
        if session.world_size > 1:
            box = torch.tensor([step if session.rank == 0 else 0], device=comm.device)
            comm.all_reduce(box, session.superseded)
            step = int(box.item())
        if step and found_state is None:
            found_state = read_verified(checkpoints.path_for(step))
    if found_state is not None:
        load(session, found_state)
    else:
        if session.world_size > 1:
            for tensor in session.model.state_dict().values():
                comm.wait(dist.broadcast(tensor, src=0, async_op=True), session.superseded)
        session.global_step = 0  # only now: an abandoned broadcast leaves no state (-1)
    session.saved_step = session.global_step


def state(session: Forming) -> dict[str, Any]:
    """Everything a process needs to continue this run (checkpoint and peer transfer)."""
    assert session.model is not None and session.optimizer is not None
    assert session.data_sampler is not None
    scheduler, elastic_lr = session.scheduler, session.elastic_lr
    return {
        "format": FORMAT_VERSION,
        "step": session.global_step,
        "world_size": session.world_size,
        "generation": session.assignment.generation,
        "model": session.model.state_dict(),
        "optimizer": session.optimizer.state_dict(),
        "scheduler": None if scheduler is None else {
            k: v for k, v in scheduler.state_dict().items() if k != "step"},
        "elastic_lr": None if elastic_lr is None else elastic_lr.state_dict(),
        "sampler": session.data_sampler.state_dict(),
    }


def load(session: Forming, loaded: dict[str, Any]) -> None:
    """Continue from ``loaded`` (what :func:`state` made, on this rank or another)."""
    assert session.model is not None and session.optimizer is not None
    assert session.data_sampler is not None
    if loaded.get("format") != FORMAT_VERSION:
        raise ValueError(f"state format {loaded.get('format')!r} is not {FORMAT_VERSION}")
    session.model.load_state_dict(loaded["model"])
    session.optimizer.load_state_dict(loaded["optimizer"])
    if session.scheduler is not None and loaded.get("scheduler") is not None:
        session.scheduler.load_state_dict(loaded["scheduler"])
    if loaded.get("elastic_lr") is not None:
        if session.elastic_lr is None:
            session.retarget()
        assert session.elastic_lr is not None
        session.elastic_lr.load_state_dict(loaded["elastic_lr"])
    session.data_sampler.load_state_dict(loaded["sampler"])
    session.global_step = int(loaded["step"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
