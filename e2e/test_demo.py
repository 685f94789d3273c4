"""The README's main command: ``elastic-operator local demo`` runs the example job to the end,
survives the chaos it injects, prints the summary and leaves no process behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kube_emulator.node.runtime import process_table

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def test_demo_with_a_killed_worker_and_added_gpus_prints_the_summary(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "elastic_operator.cli", "local", "demo", "--plain",
         "--state-dir", str(state), "--kill-worker-at-step", "20",
         "--add-gpus-at-step", "40", "--add-gpus", "1", "--timeout", "300"],
        cwd=ROOT, capture_output=True, text=True, timeout=360, check=False)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "chaos: step" in out and "SIGKILL worker pod mlp-worker-" in out
    summary = out[out.index("job default/mlp: Succeeded"):]
    lines = dict(line.strip().split(": ", 1) for line in summary.splitlines()[1:6])
    assert int(lines["steps"]) > 0
    assert int(lines["worker restarts"]) >= 1
    assert float(lines["final loss"]) < 0.1
    assert lines["wall time"].endswith("s")
    # The grow report's lines are there (their figures are timings: not asserted).
    assert "chaos: step" in out and "GPU(s) on local-node-" in out
    assert "  GPUs added -> first step at world size " in summary
    assert "  survivors' largest gap between steps: " in summary
    assert "  worker pod start-up (pod seen until its agent registers in etcd): " in summary
    leftovers = []
    for pid, _, _ in process_table():
        # etcd and the operator name the state dir in their arguments, pod processes in
        # their environment (the termination-log path).
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if str(state).encode() in cmdline + environ:
            leftovers.append(cmdline.decode(errors="replace"))
    assert not leftovers, f"processes survived the demo: {leftovers}"
