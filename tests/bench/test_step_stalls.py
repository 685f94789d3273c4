"""bench/step_stalls.py's member handling: lines stamped as they arrive, whole trees killed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "step_stalls.py"
_SPEC = importlib.util.spec_from_file_location("step_stalls", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
step_stalls = importlib.util.module_from_spec(_SPEC)
sys.modules["step_stalls"] = step_stalls  # dataclasses resolve their module by name
_SPEC.loader.exec_module(step_stalls)

# Prints two step lines 0.3 s apart, then starts a grandchild in a session of its own (as a
# worker that left the pod's process group) and waits.
TREE = """
import json, subprocess, sys, time
for step in (1, 2):
    print(json.dumps({"event": "step", "step": step, "world_size": 2}), flush=True)
    time.sleep(0.3)
print("not a step line", flush=True)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         start_new_session=True)
print(json.dumps({"event": "child", "pid": child.pid}), flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_member_stamps_step_lines_on_arrival_and_kill_tree_takes_every_descendant(
        tmp_path: Path) -> None:
    member = step_stalls.Member("a", [sys.executable, "-c", TREE], dict(os.environ), tmp_path)
    try:
        deadline = time.monotonic() + 30
        out = tmp_path / "a.out"
        while '"child"' not in (out.read_text() if out.exists() else ""):
            assert time.monotonic() < deadline, "the member never started its grandchild"
            time.sleep(0.05)
        assert [(e.step, e.world_size) for e in member.events] == [(1, 2), (2, 2)]
        first, second = member.events
        assert member.started <= first.at < second.at
        assert second.at - first.at == pytest.approx(0.3, abs=0.25)
        [grandchild] = step_stalls.descendants(member.proc.pid)
        assert os.getsid(grandchild) != os.getsid(member.proc.pid)
        member.kill_tree()
        assert member.proc.returncode == -9
        deadline = time.monotonic() + 5
        while _alive(grandchild):
            assert time.monotonic() < deadline, "the grandchild survived kill_tree"
            time.sleep(0.05)
    finally:
        member.close()


def test_descendants_of_a_process_without_children_is_empty() -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as proc:
        try:
            assert step_stalls.descendants(proc.pid) == []
            assert proc.pid in step_stalls.descendants(os.getpid())
        finally:
            proc.kill()
