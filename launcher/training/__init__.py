"""Training helpers for scripts run by the elastic launcher (``python -m launcher train.py``).

A script imports what it needs from here; each module has one purpose:

- ``context``: ``ElasticContext.from_env()`` - world size, rank, generation, base world size,
  policies, read from the launcher's environment (clear error when run without the launcher;
  ``allow_standalone=True`` for a deliberate single-process run).
- ``lr``: ``ElasticLR`` scales an existing optimizer's LRs by ``linear``/``sqrt``/``none``
  relative to the base world size, with a warm-up after a resize; composes with any scheduler.
- ``batching``: ``BatchPlan`` - ``fixedPerWorker`` or ``fixedGlobal`` (gradient accumulation),
  uneven remainders without padding, and the loss weight that keeps the gradient an exact mean.
- ``sampler``: ``ElasticSampler`` - per-(seed, epoch) shuffle, progress independent of the
  world size, so a resize re-partitions exactly the remaining samples.
- ``checkpoint``: ``CheckpointDir`` - atomic, checksummed files; newest valid one loaded,
  last K kept, truncated or corrupt files skipped.
- ``heartbeat``: ``Heartbeat`` - one cheap write per step for the agent's hang detection.
- ``stop``: ``StopRequest`` - SIGTERM sets a flag; all ranks agree on the step to stop after.
- ``session``: ``ElasticSession`` - the above wired into a step loop (resume, commit, save).
- ``inplace``: ``init()`` - the short API: an ``InPlaceSession`` that owns the step boundary
  of a plain DDP loop and resizes in place (survivors keep their processes, joiners get the
  state from a peer's memory); see the README for the diff from a torchrun script.
  ``formation`` forms its rounds, ``short_api`` holds the sampler and optimizer it hands out.
- ``audit``: ``IndexLog`` and ``check_exactly_once`` - verify exactly-once consumption on the
  committed lineage of the final model.

See ``examples/train_elastic.py`` for a complete script.
"""

from launcher.training.audit import (
    ExactlyOnceReport,
    IndexLog,
    check_exactly_once,
    committed_indices,
    committed_steps,
    committed_world_sizes,
    read_records,
    redone_steps,
)
from launcher.training.batching import BatchPlan, MicroBatch
from launcher.training.checkpoint import (
    CheckpointDir,
    CorruptCheckpointError,
    read_verified,
    verify,
    write_atomic,
)
from launcher.training.context import ElasticContext, LauncherEnvError
from launcher.training.heartbeat import Heartbeat
from launcher.training.inplace import InPlaceSession, init
from launcher.training.lr import ElasticLR, lr_factor
from launcher.training.sampler import ElasticSampler, Step
from launcher.training.session import ElasticSession
from launcher.training.stop import StopRequest

__all__ = [
    "BatchPlan",
    "CheckpointDir",
    "CorruptCheckpointError",
    "ElasticContext",
    "ElasticLR",
    "ElasticSampler",
    "ElasticSession",
    "ExactlyOnceReport",
    "Heartbeat",
    "InPlaceSession",
    "IndexLog",
    "LauncherEnvError",
    "MicroBatch",
    "Step",
    "StopRequest",
    "check_exactly_once",
    "committed_indices",
    "committed_steps",
    "committed_world_sizes",
    "init",
    "lr_factor",
    "read_records",
    "read_verified",
    "redone_steps",
    "verify",
    "write_atomic",
]
