"""Fixtures for the launcher tests: a real etcd, and agents (``python -m launcher``) as processes.

Everything waits on observable state with generous deadlines (the CI box is a loaded 2-core
machine) and kills what it started (process groups) in ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import etcd3
import pytest

from kube_emulator.etcd import EtcdServer
from launcher import contract
from tests.harness import poll_until

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = Path(__file__).with_name("train_tiny.py")
T = TypeVar("T")


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    """A fresh single-member etcd on a random port, removed afterwards."""
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


def wait_for(predicate: Callable[[], T], timeout: float, what: str | Callable[[], str],
             interval: float = 0.1) -> T:
    """Return the first truthy ``predicate()`` within ``timeout`` s, else fail naming ``what``
    (a callable is called on timeout: logs quoted in it are then current). Any exception from
    ``predicate`` fails at once."""
    return poll_until(predicate, timeout, what, retry_on=(), interval=interval)


@dataclass
class AgentProc:
    node_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    termination_log: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def report(self) -> contract.FailureReport | None:
        try:
            return contract.FailureReport.from_json(self.termination_log.read_text())
        except (OSError, ValueError):
            return None


class LauncherCluster:
    """Start agents for one rendezvous id against one etcd; read progress and reports."""

    def __init__(self, etcd: EtcdServer, workdir: Path, rdzv_id: str) -> None:
        self.etcd = etcd
        self.workdir = workdir
        self.rdzv_id = rdzv_id
        self.out = workdir / "out"
        self.out.mkdir(parents=True, exist_ok=True)
        self.agents: dict[str, AgentProc] = {}

    def start(self, node_id: str, nnodes: str, *script_args: str,
              launcher_args: tuple[str, ...] = (), lease_ttl: int = 2,
              script: Path | None = None) -> AgentProc:
        """An agent running ``script`` (default: train_tiny.py with ``--out``)."""
        log_path = self.workdir / f"agent-{node_id}.log"
        term = self.workdir / f"termination-{node_id}.log"
        cmd = [
            sys.executable, "-m", "launcher",
            "--nnodes", nnodes, "--nproc-per-node", "1",
            "--rdzv-endpoint", self.etcd.endpoint, "--rdzv-id", self.rdzv_id,
            "--node-id", node_id, "--local-addr", "127.0.0.1",
            "--monitor-interval", "0.2", "--stop-timeout", "5",
            "--termination-log", str(term),
            "--rdzv-conf", f"lease_ttl={lease_ttl},join_timeout=120",
            *launcher_args,
            *([str(script)] if script else [str(TRAIN_SCRIPT), "--out", str(self.out)]),
            *script_args,
        ]
        env = dict(os.environ, PYTHONPATH=str(REPO), GRPC_VERBOSITY="ERROR")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        agent = AgentProc(node_id, proc, log_path, term)
        self.agents[node_id] = agent
        return agent

    def progress(self) -> list[tuple[int, int, int]]:
        """(generation, world_size, step) lines written by global rank 0, in order."""
        try:
            text = (self.out / "rank0.log").read_text()
        except FileNotFoundError:
            return []
        rows = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3:
                rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
        return rows

    def wait_training(self, world_size: int, timeout: float, min_generation: int = 1,
                      steps: int = 3) -> tuple[int, int, int]:
        """Wait until rank 0 made ``steps`` steps at ``world_size`` in a generation >= min."""
        def ok() -> tuple[int, int, int] | None:
            for row in reversed(self.progress()):
                gen, world, step = row
                if gen >= min_generation and world == world_size and step >= steps:
                    return row
            return None
        return wait_for(ok, timeout, lambda: f"training at world size {world_size} (generation "
                                             f">= {min_generation}); last rows "
                                             f"{self.progress()[-3:]}; logs:\n{self.logs_tail()}")

    def client(self) -> etcd3.Etcd3Client:
        host, port = self.etcd.endpoint.split(":")
        return etcd3.client(host=host, port=int(port), timeout=5)

    def etcd_report(self, node_id: str) -> contract.FailureReport | None:
        value, _ = self.client().get(contract.failure_key(self.rdzv_id, node_id))
        return contract.FailureReport.from_json(value.decode()) if value else None

    def resize_record(self, node_id: str) -> contract.ResizePath | None:
        """The node's record of how it left its last round (lease-bound: only while it runs)."""
        value, _ = self.client().get(contract.resize_key(self.rdzv_id, node_id))
        return contract.ResizePath.from_json(value) if value else None

    def round_members(self) -> list[str]:
        import json

        value, _ = self.client().get(f"{contract.etcd_prefix(self.rdzv_id)}round")
        return list(json.loads(value)["members"]) if value else []

    def logs_tail(self, lines: int = 15) -> str:
        out = []
        for agent in self.agents.values():
            tail = [ln for ln in agent.log().splitlines() if "[launcher]" in ln or "Error" in ln]
            out.append(f"--- {agent.node_id} (rc={agent.proc.poll()})\n" + "\n".join(tail[-lines:]))
        return "\n".join(out)

    def stop_all(self) -> None:
        for agent in self.agents.values():
            if agent.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(agent.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for agent in self.agents.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.proc.wait(max(deadline - time.monotonic(), 0.1))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.proc.wait(5)


@pytest.fixture
def cluster(etcd_server: EtcdServer, tmp_path: Path, request: pytest.FixtureRequest
            ) -> Iterator[LauncherCluster]:
    c = LauncherCluster(etcd_server, tmp_path, f"test-{request.node.name}-{os.getpid()}")
    try:
        yield c
    finally:
        c.stop_all()
