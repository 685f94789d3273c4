"""The contract between the operator, the launcher (local agent) and the training processes.

One module, imported by all three sides, so that a name changed here changes everywhere. It must
stay importable with the standard library alone: it runs inside user images.

Three layers:
- ``PodEnv``: what the operator puts into a worker pod's environment (``ELASTIC_*``); every
  launcher flag defaults from it, so a pod's command is just ``python -m launcher train.py``.
- ``WorkerEnv``: what the agent gives each training process (torch's names plus ours).
- ``FailureReport``: how a failure is written where the operator reads it (termination message
  and an etcd key), so ``kubectl describe ej`` can say which worker failed and why.
- ``Completion``: the record that training reached its end, written only by a member of the
  final round; the only thing that makes the operator call a job Succeeded.

A stop is not a completion. Between a training process and its agent, exit code 0 alone keeps
torchrun's meaning (done); a process that uses the training helpers also writes a
``WorkerOutcome`` to ``WorkerEnv.OUTCOME_FILE`` first, so an agreed stop for a resize (also
exit 0) is never taken for the end of training.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Final


class PodEnv:
    """Environment variables the operator sets on every worker pod."""

    JOB_NAME: Final = "ELASTIC_JOB_NAME"
    JOB_NAMESPACE: Final = "ELASTIC_JOB_NAMESPACE"
    REPLICA_INDEX: Final = "ELASTIC_REPLICA_INDEX"
    # Comma-separated host:port list of etcd client endpoints.
    RDZV_ENDPOINT: Final = "ELASTIC_RDZV_ENDPOINT"
    # TLS to etcd (PEM file paths): the CA that signed etcd's serving certificate, and an
    # optional client certificate and key. Unset: plain HTTP (local cluster and tests only).
    RDZV_CA_FILE: Final = "ELASTIC_RDZV_CA_FILE"
    RDZV_CERT_FILE: Final = "ELASTIC_RDZV_CERT_FILE"
    RDZV_KEY_FILE: Final = "ELASTIC_RDZV_KEY_FILE"
    # The job's etcd v3 user and a file holding its password (mounted from a Secret).
    RDZV_USER: Final = "ELASTIC_RDZV_USER"
    RDZV_PASSWORD_FILE: Final = "ELASTIC_RDZV_PASSWORD_FILE"
    # A directory laid out like a credentials Secret (cert-manager's names): ``username``,
    # ``password``, ``ca.crt``, ``tls.crt``, ``tls.key``; each file is used when present. The
    # operator mounts the job's Secret there. Explicit settings above win.
    RDZV_CREDENTIALS_DIR: Final = "ELASTIC_RDZV_CREDENTIALS_DIR"
    # "Secret <namespace>/<name>" the credentials come from: errors name it as the thing to fix.
    RDZV_SECRET: Final = "ELASTIC_RDZV_SECRET"
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
    # File a training process writes its WorkerOutcome to just before it exits (see
    # ``write_outcome``); absent means "exit code 0 = done", as under torchrun.
    OUTCOME_FILE: Final = "ELASTIC_OUTCOME_FILE"
    # BASE_WORLD_SIZE, LR_SCALING, BATCHING, CHECKPOINT_* are passed through from PodEnv.


DEFAULT_TERMINATION_LOG: Final = "/dev/termination-log"
DEFAULT_MONITOR_INTERVAL: Final = 0.5  # seconds
DEFAULT_HANG_TIMEOUT: Final = 300.0  # seconds; generous: first steps may compile or load data
DEFAULT_MAX_RESTARTS: Final = 3

# Exit code of a training process that stopped because the agent asked it to (resize/shutdown)
# after saving its checkpoint; the agent does not count it as a failure. The same code as a
# finished run, so a wrapper that knows only torchrun sees no error: the WorkerOutcome written
# to OUTCOME_FILE is what tells the two apart.
EXIT_RESIZE: Final = 0


class WorkerOutcome(enum.Enum):
    """What a training process that exits 0 did, as written to ``WorkerEnv.OUTCOME_FILE``."""

    STOPPED = "stopped"  # agreed stop at a step boundary (resize, shutdown); state saved
    COMPLETED = "completed"  # the training loop reached its end


def write_outcome(path: str, outcome: WorkerOutcome, step: int) -> None:
    """Record ``outcome`` for the agent (overwrites: the last word before exit counts)."""
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps({"outcome": outcome.value, "step": step}))


def read_outcome(path: str) -> WorkerOutcome | None:
    """The outcome a process recorded, or None when it wrote none (or something unreadable)."""
    try:
        with open(path, encoding="utf-8") as src:
            return WorkerOutcome(json.loads(src.read(256))["outcome"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def etcd_prefix(rdzv_id: str) -> str:
    """Root of all etcd keys of one rendezvous (one job)."""
    return f"/elastic/{rdzv_id}/"


def round_key(rdzv_id: str) -> str:
    """etcd key holding the last formed round as JSON ``{"generation", "worldSize", "nodes"}``.

    Written by the agent of group rank 0 after each formation; the operator reads it for the
    job's status.worldSize and status.generation. Readers must tolerate it being absent.
    """
    return f"{etcd_prefix(rdzv_id)}round"


def completion_key(rdzv_id: str) -> str:
    """etcd key holding the job's ``Completion`` (torch's "closed" rendezvous); see Completion."""
    return f"{etcd_prefix(rdzv_id)}closed"


def failure_key(rdzv_id: str, node_id: str) -> str:
    """etcd key where the agent of ``node_id`` writes its latest FailureReport."""
    return f"{etcd_prefix(rdzv_id)}failures/{node_id}"


def resize_key(rdzv_id: str, node_id: str) -> str:
    """etcd key where the agent of ``node_id`` writes how it took its last re-formation."""
    return f"{etcd_prefix(rdzv_id)}resize/{node_id}"


@dataclass(frozen=True)
class ResizePath:
    """How the agent of ``node_id`` took the re-formation that ended round ``generation``.

    ``path`` is ``in-place`` (its training processes stayed alive and regrouped) or
    ``restart`` (they were stopped and started again; ``reason`` says why in-place was not
    possible). Written by the agent to ``resize_key`` (bound to its lease) and to its log; the
    operator turns the records of a generation change into one event, so the path taken is
    visible with ``kubectl describe`` and ``kubectl get events``.
    """

    generation: int
    node_id: str
    path: str
    reason: str = ""

    PATHS = ("in-place", "restart")

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ResizePath:
        """Parse and check a record; raises ValueError on anything that is not a sane one
        (pods can write these keys, so nothing unchecked reaches an event)."""
        if len(text) > 4096:
            raise ValueError(f"resize record of {len(text)} bytes is too large")
        try:
            data: Any = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a resize record: {str(text)[:200]!r}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"not a resize record: {str(text)[:200]!r}")
        generation, node, path, reason = (data.get("generation"), data.get("node_id"),
                                          data.get("path"), data.get("reason", ""))
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
            raise ValueError(f"resize record: generation {generation!r} is not >= 1")
        if not isinstance(node, str) or not 0 < len(node) <= MAX_NODE_ID:
            raise ValueError("resize record: node_id is not a node id")
        if path not in cls.PATHS:
            raise ValueError(f"resize record: path {str(path)[:40]!r} is not one of {cls.PATHS}")
        if not isinstance(reason, str):
            raise ValueError("resize record: reason is not text")
        return cls(generation, node, path, reason[:512])


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
    # Not failures: the worker left because it was told to (scale-down, eviction, drain).
    # Written to the termination log only, never to etcd, and never counted by the operator.
    DEPARTURES = ("Shutdown",)

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


# A completion names at most this many members and this long ids: anything larger did not come
# from our agents and is refused (the operator reads the record from etcd, which pods can write).
MAX_MEMBERS: Final = 4096
MAX_NODE_ID: Final = 253


@dataclass(frozen=True)
class Completion:
    """Training reached its end in round ``generation`` whose members were ``members``.

    Written by the agent of a member of that round once all its local training processes
    finished (``WorkerOutcome.COMPLETED`` or torchrun's plain exit 0), to ``completion_key``
    (compare-and-swap against the round, so a round that already moved on is never declared
    complete) and to the agent's termination log. Agents that find it set stop at once; the
    operator marks the job Succeeded only on a record whose writer is one of its members.
    """

    generation: int
    members: tuple[str, ...]
    node_id: str
    timestamp: float = 0.0

    def to_json(self) -> str:
        data = asdict(self)
        data["members"] = list(self.members)
        return json.dumps({"completed": True, **data}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Completion:
        """Parse and check a record; raises ValueError on anything that is not a sane one."""
        if len(text) > MAX_MEMBERS * (MAX_NODE_ID + 3) + 512:
            raise ValueError(f"completion record of {len(text)} bytes is too large")
        try:
            data: Any = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a completion record: {str(text)[:200]!r}") from exc
        if not isinstance(data, dict) or data.get("completed") is not True:
            raise ValueError(f"not a completion record: {str(text)[:200]!r}")
        generation, members, node = data.get("generation"), data.get("members"), \
            data.get("node_id")
        timestamp = data.get("timestamp", 0.0)
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
            raise ValueError(f"completion record: generation {generation!r} is not >= 1")
        if (not isinstance(members, list) or not 0 < len(members) <= MAX_MEMBERS
                or not all(isinstance(m, str) and 0 < len(m) <= MAX_NODE_ID for m in members)):
            raise ValueError("completion record: members is not a list of node ids")
        if not isinstance(node, str) or node not in members:
            raise ValueError(f"completion record: writer {str(node)[:80]!r} is not a member")
        if not isinstance(timestamp, (int, float)) or not math.isfinite(timestamp):
            raise ValueError("completion record: timestamp is not a number")
        return cls(generation, tuple(members), node, float(timestamp))
