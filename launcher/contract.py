"""The contract between the operator, the launcher (local agent) and the training processes.

One module, imported by all three sides, so that a name changed here changes everywhere. It must
stay importable with the standard library alone: it runs inside user images.

Three layers:
- ``PodEnv``: what the operator puts into a worker pod's environment (``ELASTIC_*``); every
  launcher flag defaults from it, so a pod's command is just ``python -m launcher train.py``.
- ``WorkerEnv``: what the agent gives each training process (torch's names plus ours).
- ``FailureReport``: how a failure is written where the operator reads it (termination message
  and an etcd key), so ``kubectl describe ej`` can say which worker failed and why.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Final


class PodEnv:
    """Environment variables the operator sets on every worker pod."""

    JOB_NAME: Final = "ELASTIC_JOB_NAME"
    JOB_NAMESPACE: Final = "ELASTIC_JOB_NAMESPACE"
    REPLICA_INDEX: Final = "ELASTIC_REPLICA_INDEX"
    # Comma-separated host:port list of etcd client endpoints.
    RDZV_ENDPOINT: Final = "ELASTIC_RDZV_ENDPOINT"
    # Unique per job (namespace/name/uid), so a re-created job never joins a stale rendezvous.
    RDZV_ID: Final = "ELASTIC_RDZV_ID"
    MIN_NODES: Final = "ELASTIC_MIN_NODES"
    MAX_NODES: Final = "ELASTIC_MAX_NODES"
    NPROC_PER_NODE: Final = "ELASTIC_NPROC_PER_NODE"
    MAX_RESTARTS: Final = "ELASTIC_MAX_RESTARTS"
    MONITOR_INTERVAL: Final = "ELASTIC_MONITOR_INTERVAL"
    HANG_TIMEOUT: Final = "ELASTIC_HANG_TIMEOUT"
    LR_SCALING: Final = "ELASTIC_LR_SCALING"  # linear | sqrt | none
    BASE_WORLD_SIZE: Final = "ELASTIC_BASE_WORLD_SIZE"
    BATCHING: Final = "ELASTIC_BATCHING"  # fixedGlobal | fixedPerWorker
    CHECKPOINT_DIR: Final = "ELASTIC_CHECKPOINT_DIR"
    CHECKPOINT_INTERVAL: Final = "ELASTIC_CHECKPOINT_INTERVAL"  # steps
    TERMINATION_LOG: Final = "ELASTIC_TERMINATION_LOG"


class WorkerEnv:
    """Environment the agent gives each training process, on top of the pod's own."""

    WORLD_SIZE: Final = "WORLD_SIZE"
    RANK: Final = "RANK"
    LOCAL_RANK: Final = "LOCAL_RANK"
    LOCAL_WORLD_SIZE: Final = "LOCAL_WORLD_SIZE"
    GROUP_RANK: Final = "GROUP_RANK"
    MASTER_ADDR: Final = "MASTER_ADDR"
    MASTER_PORT: Final = "MASTER_PORT"
    # Rendezvous round that formed this world; grows by one on every re-formation.
    RDZV_GENERATION: Final = "ELASTIC_RDZV_GENERATION"
    # World size before this round (0 on the first), so helpers can tell a resize from a start.
    PREVIOUS_WORLD_SIZE: Final = "ELASTIC_PREVIOUS_WORLD_SIZE"
    # File the training helpers touch once per step; the agent treats a stale one as a hang.
    HEARTBEAT_FILE: Final = "ELASTIC_HEARTBEAT_FILE"
    # BASE_WORLD_SIZE, LR_SCALING, BATCHING, CHECKPOINT_* are passed through from PodEnv.


DEFAULT_TERMINATION_LOG: Final = "/dev/termination-log"
DEFAULT_MONITOR_INTERVAL: Final = 0.5  # seconds
DEFAULT_HANG_TIMEOUT: Final = 300.0  # seconds; generous: first steps may compile or load data
DEFAULT_MAX_RESTARTS: Final = 3

# Exit code of a training process that stopped because the agent asked it to (resize/shutdown)
# after saving its checkpoint; the agent does not count it as a failure.
EXIT_RESIZE: Final = 0


def etcd_prefix(rdzv_id: str) -> str:
    """Root of all etcd keys of one rendezvous (one job)."""
    return f"/elastic/{rdzv_id}/"


def round_key(rdzv_id: str) -> str:
    """etcd key holding the last formed round as JSON ``{"generation", "worldSize", "nodes"}``.

    Written by the agent of group rank 0 after each formation; the operator reads it for the
    job's status.worldSize and status.generation. Readers must tolerate it being absent.
    """
    return f"{etcd_prefix(rdzv_id)}round"


def failure_key(rdzv_id: str, node_id: str) -> str:
    """etcd key where the agent of ``node_id`` writes its latest FailureReport."""
    return f"{etcd_prefix(rdzv_id)}failures/{node_id}"


@dataclass(frozen=True)
class FailureReport:
    """Why a worker stopped: written to the termination log and to ``failure_key``.

    ``reason`` is one of REASONS; ``rank`` is the global rank of the failing training process
    (-1 when the failure is not tied to one process, e.g. a lost peer or an etcd outage).
    """

    reason: str
    message: str
    node_id: str
    rank: int = -1
    exit_code: int | None = None
    generation: int | None = None
    timestamp: float = 0.0

    REASONS = ("ProcessCrashed", "ProcessHung", "PeerLost", "MaxRestartsExceeded",
               "RendezvousFailed", "Shutdown")

    def to_json(self) -> str:
        """Compact JSON; fits Kubernetes' 4 KiB termination-message limit for sane messages."""
        data = asdict(self)
        data["message"] = data["message"][-2048:]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> FailureReport:
        """Parse a report; raises ValueError on anything that is not one."""
        try:
            data = json.loads(text)
            return cls(**{k: data[k] for k in data if k in cls.__dataclass_fields__})
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"not a FailureReport: {text[:200]!r}") from exc
