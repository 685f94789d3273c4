"""Run the example as a set of real training processes (one "world"), without the launcher.

The test plays the agent: it gives each process the launcher's environment, sends SIGTERM to the
whole world to simulate a resize, or SIGKILL to simulate a crash, and starts the next world
with a new generation on a fresh port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "train_elastic_classes.py"
DEADLINE = 90.0  # seconds; generous for a loaded 2-core CI machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class World:
    """``size`` processes of the example at rendezvous ``generation``."""

    def __init__(self, workdir: Path, *, size: int, generation: int, previous: int,
                 args: list[str], env: dict[str, str]) -> None:
        self.workdir = workdir
        self.size = size
        self.generation = generation
        self.stdout = workdir / f"gen{generation}.rank0.out"
        port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        for rank in range(size):
            proc_env = {**os.environ, **env, "WORLD_SIZE": str(size), "RANK": str(rank),
                        "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(size),
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                        "ELASTIC_RDZV_GENERATION": str(generation),
                        "ELASTIC_PREVIOUS_WORLD_SIZE": str(previous),
                        "ELASTIC_HEARTBEAT_FILE": str(workdir / f"hb.{rank}")}
            out = open(self.stdout if rank == 0 else os.devnull, "wb")  # noqa: SIM115
            err = open(workdir / f"gen{generation}.rank{rank}.err", "wb")  # noqa: SIM115
            with out, err:
                self.procs.append(subprocess.Popen(
                    [sys.executable, str(EXAMPLE), *args], env=proc_env, stdout=out,
                    stderr=err, start_new_session=True))

    def events(self) -> list[dict[str, Any]]:
        """Rank 0's JSON lines so far."""
        if not self.stdout.exists():
            return []
        lines = self.stdout.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_for_step(self, step: int) -> None:
        """Block until rank 0 reported ``step`` (or fail with the logs if it cannot)."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if any(e["event"] == "step" and e["step"] >= step for e in self.events()):
                return
            if any(p.poll() is not None for p in self.procs):
                raise AssertionError(f"generation {self.generation} exited before step "
                                     f"{step}:\n{self.diagnostics()}")
            time.sleep(0.05)
        raise AssertionError(f"generation {self.generation} did not reach step {step}:\n"
                             f"{self.diagnostics()}")

    def wait(self) -> list[int]:
        """Wait for every process to exit; returns the exit codes."""
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=DEADLINE))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"generation {self.generation} did not exit:\n"
                                     f"{self.diagnostics()}") from None
        return codes

    def expect_exit(self, codes: list[int]) -> None:
        """Wait for every process; fail with their logs unless they exit with ``codes``."""
        actual = self.wait()
        assert actual == codes, f"generation {self.generation} exited with {actual}:\n" + (
            self.diagnostics())

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every process of the world (what the agent does on a resize)."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, sig)

    def stop(self) -> None:
        """SIGTERM everyone (a resize or a shutdown); all must save and exit 0."""
        self.signal(signal.SIGTERM)
        self.expect_exit([0] * self.size)

    def kill_rank(self, rank: int) -> list[int]:
        """SIGKILL one process (no save); the survivors' next collective fails and they exit
        on their own. Returns everyone's exit codes."""
        os.killpg(self.procs[rank].pid, signal.SIGKILL)
        return self.wait()

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=DEADLINE)

    def diagnostics(self) -> str:
        tails = []
        for rank in range(self.size):
            err = self.workdir / f"gen{self.generation}.rank{rank}.err"
            text = err.read_text(errors="replace") if err.exists() else ""
            tails.append(f"--- rank {rank} stderr ---\n{text[-3000:]}")
        return "\n".join(tails)


class Cluster:
    """Starts worlds one after another; kills whatever is left at the end."""

    def __init__(self, workdir: Path, args: list[str], env: dict[str, str]) -> None:
        self.workdir = workdir
        self.args = args
        self.env = env
        self.worlds: list[World] = []

    def start(self, size: int) -> World:
        previous = self.worlds[-1].size if self.worlds else 0
        world = World(self.workdir, size=size, generation=len(self.worlds), previous=previous,
                      args=self.args, env=self.env)
        self.worlds.append(world)
        return world


@contextmanager
def cluster(workdir: Path, args: list[str], env: dict[str, str]) -> Iterator[Cluster]:
    """A ``Cluster`` whose processes are all killed on exit, pass or fail."""
    c = Cluster(workdir, args, env)
    try:
        yield c
    finally:
        for world in c.worlds:
            world.kill_all()
