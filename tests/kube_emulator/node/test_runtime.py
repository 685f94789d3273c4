"""The local container runtime: command lines, environment, process groups, terminations."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kube_emulator.node.runtime import (
    ContainerConfigError,
    ContainerProcess,
    RuntimeSettings,
    check_program,
    container_argv,
    container_env,
    container_processes,
    map_termination_path,
    process_table,
    termination,
)

ROOT = Path(__file__).resolve().parents[3]

# A product's settings: its termination variable and the prefix of its own configuration.
SETTINGS = RuntimeSettings(termination_log_env="APP_TERMINATION_LOG",
                           stripped_env_prefixes=("APP_",))
POD: dict[str, Any] = {
    "metadata": {"name": "w-0", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
    "spec": {"nodeName": "node-0"},
    "status": {"podIP": "127.0.0.1"},
}


def test_python_resolves_to_this_interpreter() -> None:
    argv = container_argv({"name": "c", "command": ["python", "-m", "launcher"],
                           "args": ["train.py", 3]})
    assert argv == [sys.executable, "-m", "launcher", "train.py", "3"]
    assert container_argv({"command": ["/bin/echo"]}) == ["/bin/echo"]


def test_missing_command_names_the_container() -> None:
    with pytest.raises(ContainerConfigError, match="'trainer' has no command"):
        container_argv({"name": "trainer", "image": "x", "args": ["a"]})


def test_env_resolution(tmp_path: Path) -> None:
    container = {"name": "c", "env": [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "$(A)-$(MISSING)-$$(A)"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "APP_TERMINATION_LOG", "value": "/dev/termination-log"},
    ]}
    term = tmp_path / "term"
    base = {"PATH": "/bin", "APP_JOB_NAME": "leak", "KUBECONFIG": "/k"}
    env = container_env(POD, container, term, base=base, settings=SETTINGS)
    assert env == {"PATH": "/bin", "A": "1", "B": "1-$(MISSING)-$(A)", "POD": "w-0",
                   "NS": "ns", "IP": "127.0.0.1", "NODE": "node-0", "APP": "x",
                   "HOSTNAME": "w-0", "APP_TERMINATION_LOG": str(term)}
    # Without settings only KUBECONFIG is dropped and no termination variable is set.
    plain = container_env(POD, {"name": "c"}, term, base=base)
    assert plain == {"PATH": "/bin", "APP_JOB_NAME": "leak", "HOSTNAME": "w-0"}


@pytest.mark.parametrize(("item", "match"), [
    ({"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}, "secretKeyRef"),
    ({"name": "F", "valueFrom": {"fieldRef": {"fieldPath": "spec.priority"}}}, "spec.priority"),
])
def test_unsupported_env_sources_are_named(item: dict[str, Any], match: str,
                                           tmp_path: Path) -> None:
    with pytest.raises(ContainerConfigError, match=match):
        container_env(POD, {"name": "c", "env": [item]}, tmp_path / "t", base={})


def test_termination_path_argument_is_mapped(tmp_path: Path) -> None:
    term = tmp_path / "t"
    argv = map_termination_path({"terminationMessagePath": "/tmp/msg"}, term,
                                ["x", "--report", "/tmp/msg"])
    assert argv == ["x", "--report", str(term)]
    assert map_termination_path({}, term, ["/dev/termination-log"]) == [str(term)]


def test_termination_reasons_and_messages(tmp_path: Path) -> None:
    term, log = tmp_path / "term", tmp_path / "log"
    term.write_text("")
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert termination(0, term, log).state("a", "b") == {
        "exitCode": 0, "reason": "Completed", "startedAt": "a", "finishedAt": "b"}
    killed = termination(-9, term, log)
    assert (killed.exit_code, killed.signal, killed.reason, killed.message) == (137, 9, "Error", "")
    fallback = termination(3, term, log, "FallbackToLogsOnError")
    assert fallback.message.splitlines() == [f"line {i}" for i in range(20, 100)]
    term.write_text("x" * 5000 + "why")
    told = termination(3, term, log, "FallbackToLogsOnError")
    assert told.message.endswith("why") and len(told.message) == 4096


def _proc(tmp_path: Path, code: str) -> ContainerProcess:
    term = tmp_path / "term"
    env = container_env(POD, {"name": "c"}, term, settings=SETTINGS)
    return ContainerProcess([sys.executable, "-c", code], env, tmp_path, tmp_path / "c.log", term)


async def test_process_runs_logs_and_reports(tmp_path: Path) -> None:
    code = ("import os,sys; print('out'); print('err', file=sys.stderr); "
            "open(os.environ['APP_TERMINATION_LOG'],'w').write('bad input'); sys.exit(4)")
    proc = _proc(tmp_path, code)
    await proc.start()
    result = await asyncio.wait_for(proc.wait(), 60)
    assert (result.exit_code, result.reason, result.message) == (4, "Error", "bad input")
    assert set((tmp_path / "c.log").read_text().split()) == {"out", "err"}


async def test_stop_terminates_the_whole_group(tmp_path: Path) -> None:
    """SIGTERM reaches a grandchild (the group), and a leader that ignores SIGTERM is
    SIGKILLed after the grace period."""
    marker = tmp_path / "child.pid"
    code = ("import signal,subprocess,sys,time,pathlib;"
            "c=subprocess.Popen([sys.executable,'-c','import time; time.sleep(600)']);"
            f"pathlib.Path({str(marker)!r}).write_text(str(c.pid));"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)")
    proc = _proc(tmp_path, code)
    await proc.start()
    deadline = asyncio.get_running_loop().time() + 60
    while not marker.exists() or not marker.read_text():
        assert asyncio.get_running_loop().time() < deadline, "child never started"
        await asyncio.sleep(0.05)
    child = int(marker.read_text())
    await asyncio.wait_for(proc.stop(grace=0.5), 60)
    result = await asyncio.wait_for(proc.wait(), 60)
    assert (result.exit_code, result.signal) == (137, signal.SIGKILL)
    for _ in range(200):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the grandchild survived the group's SIGTERM")


async def test_container_processes_include_descendants_in_other_sessions(
        tmp_path: Path) -> None:
    """A launcher starts training processes in sessions of their own; chaos and inspection
    must still find them as the pod's processes."""
    marker = tmp_path / "child.pid"
    code = ("import subprocess,sys,time,pathlib;"
            "c=subprocess.Popen([sys.executable,'-c','import time; time.sleep(600)'],"
            "start_new_session=True);"
            f"pathlib.Path({str(marker)!r}).write_text(str(c.pid)); time.sleep(600)")
    proc = _proc(tmp_path, code)
    await proc.start()
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while not marker.exists() or not marker.read_text():
            assert asyncio.get_running_loop().time() < deadline, "child never started"
            await asyncio.sleep(0.05)
        child = int(marker.read_text())
        assert proc.pid is not None
        assert container_processes({proc.pid}) == sorted({proc.pid, child})
        os.kill(child, signal.SIGKILL)
    finally:
        await proc.stop(grace=0)


def test_programs_die_with_the_cluster_process(tmp_path: Path) -> None:
    """A process started through die_with_parent is SIGKILLed when its parent (the cluster
    process) is SIGKILLed, so a crashed cluster leaves no orphan pod."""
    marker = tmp_path / "pid"
    parent_code = (
        "import subprocess, sys, time, pathlib\n"
        "from kube_emulator.node.runtime import die_with_parent\n"
        "c = subprocess.Popen(die_with_parent([sys.executable, '-c', "
        "'import time; time.sleep(600)']), start_new_session=True)\n"
        f"pathlib.Path({str(marker)!r}).write_text(str(c.pid))\n"
        "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() or not marker.read_text():
            assert time.monotonic() < deadline and parent.poll() is None, "no child started"
            time.sleep(0.05)
        child = int(marker.read_text())
        while b"sleep(600)" not in Path(f"/proc/{child}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the child never exec'd its program"
            time.sleep(0.05)
        parent.kill()
        parent.wait()
        while time.monotonic() < deadline + 30:
            if not any(pid == child for pid, _, _ in process_table()):
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the child outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_missing_program_is_reported_before_spawning(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-tool"):
        check_program(["no-such-tool"], {"PATH": "/bin"}, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\./run\.sh"):
        check_program(["./run.sh"], {}, tmp_path)
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    check_program(["./run.sh"], {}, tmp_path)
    check_program([sys.executable], {}, tmp_path)
