"""Who this training process is: the launcher's environment, read once into a typed object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from launcher.contract import PodEnv, WorkerEnv
from launcher.inplace import STATUS_FILE, WorkerStatus, write_status

LRScaling = Literal["linear", "sqrt", "none"]
Batching = Literal["fixedGlobal", "fixedPerWorker"]

LR_SCALINGS: tuple[str, ...] = ("linear", "sqrt", "none")
BATCHINGS: tuple[str, ...] = ("fixedGlobal", "fixedPerWorker")

# Variables without which a process cannot take part in a distributed run.
_REQUIRED = (WorkerEnv.WORLD_SIZE, WorkerEnv.RANK, WorkerEnv.LOCAL_RANK, WorkerEnv.MASTER_ADDR,
             WorkerEnv.MASTER_PORT)


class LauncherEnvError(RuntimeError):
    """The process was not started by the launcher, or its environment is malformed."""


@dataclass(frozen=True)
class ElasticContext:
    """This process's place in the current world (one rendezvous generation).

    Values come from the environment the launcher's agent sets (``launcher.contract``); the object
    is immutable because a process never changes world: a resize restarts it.
    """

    world_size: int
    rank: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    generation: int
    previous_world_size: int
    base_world_size: int
    lr_scaling: LRScaling
    batching: Batching
    checkpoint_dir: str | None
    checkpoint_interval: int
    heartbeat_file: str | None
    outcome_file: str | None = None  # where to tell the agent "stopped" vs "completed"
    standalone: bool = False

    @property
    def is_resize(self) -> bool:
        """True when this generation follows one with a different world size."""
        return self.previous_world_size > 0 and self.previous_world_size != self.world_size

    @property
    def is_main(self) -> bool:
        """True on global rank 0, the rank that writes checkpoints."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *,
                 allow_standalone: bool = False, announce: bool = True) -> ElasticContext:
        """Read the launcher's environment.

        Under the launcher it also tells the agent, at once, that this process resizes by the
        restart path (its status file, ``launcher.inplace``), so the agent need not wait for
        a silent new process to say whether it can resize in place; the short API's
        ``init()`` passes ``announce=False`` and announces in-place itself.

        Raises ``LauncherEnvError`` naming every missing or invalid variable. With
        ``allow_standalone=True`` and none of the distributed variables set, returns a
        single-process context instead (world size 1, rank 0, generation 0, no heartbeat), so a
        script can also run as plain ``python train.py``; a *partial* environment is still an
        error, because it means a broken launch rather than a deliberate standalone run.
        """
        env = os.environ if env is None else env
        missing = [name for name in _REQUIRED if not env.get(name)]
        if missing and allow_standalone and len(missing) == len(_REQUIRED):
            return cls._standalone(env)
        if missing:
            raise LauncherEnvError(
                f"missing environment variable(s) {', '.join(missing)}: this script must be "
                "started by the launcher, e.g. `python -m launcher --nproc-per-node=2 "
                "train.py`; to run it as a single process, build the context with "
                "ElasticContext.from_env(allow_standalone=True)")
        if announce and env.get(STATUS_FILE):
            write_status(env[STATUS_FILE], WorkerStatus(inplace=False))
        world_size = _int(env, WorkerEnv.WORLD_SIZE, minimum=1)
        rank = _int(env, WorkerEnv.RANK, minimum=0)
        if rank >= world_size:
            raise LauncherEnvError(f"{WorkerEnv.RANK}={rank} is not below "
                                   f"{WorkerEnv.WORLD_SIZE}={world_size}; fix the launch command")
        return cls(
            world_size=world_size,
            rank=rank,
            local_rank=_int(env, WorkerEnv.LOCAL_RANK, minimum=0),
            local_world_size=_int(env, WorkerEnv.LOCAL_WORLD_SIZE, minimum=1, default=1),
            master_addr=env[WorkerEnv.MASTER_ADDR],
            master_port=_int(env, WorkerEnv.MASTER_PORT, minimum=1),
            generation=_int(env, WorkerEnv.RDZV_GENERATION, minimum=0, default=0),
            previous_world_size=_int(env, WorkerEnv.PREVIOUS_WORLD_SIZE, minimum=0, default=0),
            base_world_size=_int(env, PodEnv.BASE_WORLD_SIZE, minimum=1, default=world_size),
            lr_scaling=_choice(env, PodEnv.LR_SCALING, LR_SCALINGS, "none"),  # type: ignore[arg-type]
            batching=_choice(env, PodEnv.BATCHING, BATCHINGS, "fixedPerWorker"),  # type: ignore[arg-type]
            checkpoint_dir=env.get(PodEnv.CHECKPOINT_DIR) or None,
            checkpoint_interval=_int(env, PodEnv.CHECKPOINT_INTERVAL, minimum=0, default=0),
            heartbeat_file=env.get(WorkerEnv.HEARTBEAT_FILE) or None,
            outcome_file=env.get(WorkerEnv.OUTCOME_FILE) or None,
        )

    @classmethod
    def _standalone(cls, env: Mapping[str, str]) -> ElasticContext:
        return cls(
            world_size=1, rank=0, local_rank=0, local_world_size=1, master_addr="127.0.0.1",
            master_port=0, generation=0, previous_world_size=0,
            base_world_size=_int(env, PodEnv.BASE_WORLD_SIZE, minimum=1, default=1),
            lr_scaling=_choice(env, PodEnv.LR_SCALING, LR_SCALINGS, "none"),  # type: ignore[arg-type]
            batching=_choice(env, PodEnv.BATCHING, BATCHINGS, "fixedPerWorker"),  # type: ignore[arg-type]
            checkpoint_dir=env.get(PodEnv.CHECKPOINT_DIR) or None,
            checkpoint_interval=_int(env, PodEnv.CHECKPOINT_INTERVAL, minimum=0, default=0),
            heartbeat_file=None, standalone=True,
        )


def _int(env: Mapping[str, str], name: str, *, minimum: int, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise LauncherEnvError(f"missing environment variable {name}")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise LauncherEnvError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise LauncherEnvError(f"{name}={value} must be >= {minimum}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise LauncherEnvError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value
