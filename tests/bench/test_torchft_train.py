"""bench/torchft_train.py (torchft's side of bench/rescale.py) trains, prints the examples' step
lines and leaves on SIGTERM with exit 0. Skipped where the optional [bench] extra is absent."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torchft")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_replica_group_trains_alone_and_leaves_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    lighthouse = subprocess.Popen(
        [str(Path(sys.executable).with_name("torchft_lighthouse")), "--min_replicas", "1",
         "--bind", f"[::]:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, TORCHFT_LIGHTHOUSE=f"http://127.0.0.1:{port}")
    replica = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "torchft_train.py"), "--replica-id", "0",
         "--replica-groups", "1", "--epochs", "1000", "--step-time", "0.05"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert replica.stdout is not None
        lines = []
        deadline = time.monotonic() + 120
        while len(lines) < 5:
            assert time.monotonic() < deadline, "no steps within 120 s"
            line = replica.stdout.readline()
            assert line, f"the replica exited with {replica.wait()}"
            lines.append(json.loads(line))
        replica.send_signal(signal.SIGTERM)
        rest, _ = replica.communicate(timeout=60)
        assert replica.returncode == 0
        lines += [json.loads(line) for line in rest.splitlines()]
        assert {line["event"] for line in lines} == {"step"}  # no "done": it left
        assert {line["world_size"] for line in lines} == {1}
        steps = [line["step"] for line in lines]
        assert steps == sorted(steps) and steps[-1] > steps[0]
    finally:
        replica.kill()
        replica.wait()
        lighthouse.kill()
        lighthouse.wait()
