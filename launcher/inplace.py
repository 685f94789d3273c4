"""The local channel between an agent and its in-place-capable training processes.

Standard library only: the agent imports it and must start fast, and it is part of the contract
with user images, like ``launcher.contract``.

Two files per training process, both in the agent's run directory, both replaced atomically
(write to a temporary name, ``os.replace``), so a reader sees a whole old or a whole new value:

- the *status* file (``WorkerEnv.STATUS_FILE``), written by the training process: it says the
  process can resize in place (``inplace``), that it is set up and can join the process group
  of ``ready`` (its model and optimizer exist, so a round that includes it never waits for its
  interpreter or its imports), and the newest generation in which it lost a peer mid-step
  (``lost``): the agent then re-forms at once instead of waiting for the dead peer's lease;
- the *assignment* file (``WorkerEnv.ASSIGNMENT_FILE``), written by the agent: the process's
  place in a newer round (``Assignment``). The process checks the file's modification time at
  every step boundary (one ``stat``), and all ranks switch after the same step (see
  ``launcher.training.inplace``).

A process that never writes a status file (a script without the helpers) keeps today's
restart path: the agent stops it and starts a new one on every re-formation.

The peer-state secret: a joiner fetches the model and optimizer from a peer's memory over TCP;
the peer answers only a client that proves it knows the job's secret (HMAC of a fresh nonce).
The agent writes the secret to a file readable by its own user only (``WorkerEnv.PEER_SECRET_FILE``)
and derives it from the job's etcd password when the job has one (issue 14's per-job
credentials), else from a random value the first agent stores in the rendezvous (then it is as
private as etcd itself is).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

STATUS_FILE: Final = "ELASTIC_STATUS_FILE"
ASSIGNMENT_FILE: Final = "ELASTIC_ASSIGNMENT_FILE"
PEER_SECRET_FILE: Final = "ELASTIC_PEER_SECRET_FILE"
LOCAL_ADDR: Final = "ELASTIC_LOCAL_ADDR"
# "0" makes the agent take the restart path even for capable processes (an opt-out switch).
INPLACE: Final = "ELASTIC_INPLACE"
# Where the short API's session appends its ``IndexLog`` records (exactly-once audit), if set.
INDEX_LOG: Final = "ELASTIC_INDEX_LOG"


@dataclass(frozen=True)
class Assignment:
    """A training process's place in one round: what ``init_process_group`` needs, and more."""

    generation: int
    rank: int
    world_size: int
    master_addr: str
    master_port: int
    previous_world_size: int
    # A member of the previous round is gone (dead, not leaving): a collective of the previous
    # round that has not completed never will, so the process aborts it instead of waiting.
    peers_lost: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Assignment:
        """Parse; raises ValueError on anything that is not an assignment."""
        try:
            data = json.loads(text)
            return cls(int(data["generation"]), int(data["rank"]), int(data["world_size"]),
                       str(data["master_addr"]), int(data["master_port"]),
                       int(data["previous_world_size"]), bool(data.get("peers_lost", False)))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not an assignment: {text[:200]!r}") from exc


@dataclass(frozen=True)
class WorkerStatus:
    """What a training process tells its agent (see the module docstring)."""

    inplace: bool = False
    ready: int = -1  # generation whose process group this process can join now
    lost: int = -1  # newest generation in which a collective failed (a peer is gone)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def replace_file(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` atomically (readers see the old or the new content)."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, final)


def write_status(path: str, status: WorkerStatus) -> None:
    replace_file(path, status.to_json())


def read_status(path: str | os.PathLike[str]) -> WorkerStatus | None:
    """The status a process wrote, or None (none yet, or unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
        return WorkerStatus(bool(data["inplace"]), int(data["ready"]), int(data["lost"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_assignment(path: str | os.PathLike[str], assignment: Assignment) -> None:
    replace_file(path, assignment.to_json())


def read_assignment(path: str | os.PathLike[str]) -> Assignment | None:
    try:
        return Assignment.from_json(Path(path).read_text())
    except (OSError, ValueError):
        return None


def derive_secret(material: bytes, rdzv_id: str) -> bytes:
    """The peer-state key of job ``rdzv_id`` from secret ``material`` (a password, a random
    value): bound to the job, so a key of one job opens nothing of another."""
    return hmac.new(material, b"elastic-peer-state:" + rdzv_id.encode(), hashlib.sha256).digest()


def write_secret(path: str | os.PathLike[str], secret: bytes) -> None:
    """Owner-readable only: other users on the node cannot read it."""
    replace_file(path, secret.hex(), mode=0o600)


def read_secret(path: str | os.PathLike[str]) -> bytes:
    return bytes.fromhex(Path(path).read_text().strip())


def proof(secret: bytes, nonce: bytes, generation: int) -> bytes:
    """What a client sends to prove it holds ``secret``: bound to the server's fresh nonce
    (no replay) and to the generation (a stale member cannot fetch a newer round's state)."""
    return hmac.new(secret, nonce + generation.to_bytes(8, "big"), hashlib.sha256).digest()
