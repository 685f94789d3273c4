"""The pre-warmed process pool: ready signalling, hand-out, and clean-up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from kube_emulator.node.runtime import process_table
from launcher.prewarm import WarmPool
from tests.launcher.conftest import REPO, LauncherCluster, wait_for


def test_a_pooled_process_says_when_its_imports_are_done_and_then_runs_the_script(
        tmp_path: Path) -> None:
    pool = WarmPool(1, dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        pool.maintain()
        assert not pool.wait_ready(0.01)  # importing torch takes far longer than 10 ms
        assert pool.wait_ready(120)
        assert pool.wait_ready(0.01)  # already signalled: no second wait
        proc = pool.take()
        assert proc is not None
        out = tmp_path / "out"
        script = tmp_path / "script.py"
        script.write_text("import os, sys, torch\n"
                          f"open({str(out)!r}, 'w').write(repr((sys.argv[1:], "
                          "'ELASTIC_BOOT_READY_FD' in os.environ, 'torch' in sys.modules)))\n")
        assert WarmPool.launch(proc, dict(os.environ), [sys.executable, "-u", str(script), "x"])
        assert proc.wait(60) == 0
        assert out.read_text() == "(['x'], False, True)"
        assert pool._signals == {}  # the hand-out closed its pipe
    finally:
        pool.close()


def test_a_pooled_process_that_dies_does_not_hold_the_wait() -> None:
    pool = WarmPool(1, dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        pool.maintain()
        victim = pool._ready[0]
        victim.kill()  # dies before its imports are done
        started = time.monotonic()
        assert pool.wait_ready(60)  # EOF on its pipe: not waited for any longer
        assert time.monotonic() - started < 30
        # The kernel closes a dying process's files a moment before it can be reaped.
        victim.wait(30)
        assert pool.take() is None
    finally:
        pool.close()


def test_workers_start_without_fork_hooks_and_die_with_the_agent(tmp_path: Path) -> None:
    """The agent runs grpc threads (etcd3): a fork() in it runs grpc's atfork handlers, which
    can hang the forking thread for good (grpc/grpc#17986, #22624), the agent's main loop with
    it. Python calls its fork hooks exactly when it forks for a subprocess (it only does so with a
    ``preexec_fn``), so no hook may run while the warm pool or a cold start spawns a worker; and
    both kinds of worker must still be SIGKILLed when the agent dies."""
    pids = tmp_path / "pids"
    agent_code = f"""
import os, pathlib, subprocess, sys, time
from launcher.etcd_rendezvous import Round
from launcher.monitor import WorkerGroup
from kube_emulator.node.runtime import process_table
from launcher.prewarm import WarmPool
forks = []
os.register_at_fork(before=lambda: forks.append(1))
pool = WarmPool(1, dict(os.environ))
pool.maintain()
assert pool.wait_ready(120)
rnd = Round(1, ("a", "b"), "127.0.0.1", 29500, "a")
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
warm = WorkerGroup(sleeper, 1, rnd, pathlib.Path({str(tmp_path)!r}), 60, pool=pool).start()
cold = WorkerGroup(sleeper, 1, rnd, pathlib.Path({str(tmp_path)!r}), 60).start()
pathlib.Path({str(pids)!r}).write_text(f"{{len(forks)}} {{warm.procs[0].pid}} "
                                       f"{{cold.procs[0].pid}}")
time.sleep(600)
"""
    agent = subprocess.Popen([sys.executable, "-c", agent_code], cwd=REPO,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        deadline = time.monotonic() + 120
        while not pids.exists() or len(pids.read_text().split()) < 3:
            assert time.monotonic() < deadline and agent.poll() is None, "no workers started"
            time.sleep(0.1)
        forks, *workers = (int(word) for word in pids.read_text().split())
        assert forks == 0, "a worker was started through fork() + preexec_fn"
        for pid in workers:
            assert Path(f"/proc/{pid}").exists()
        agent.kill()
        agent.wait()
        while any(pid in workers for pid, _, _ in process_table()):
            assert time.monotonic() < deadline, "a worker outlived its SIGKILLed agent"
            time.sleep(0.1)
    finally:
        agent.kill()
        agent.wait()



def test_the_pool_refills_once_the_new_process_committed_a_step(
        cluster: LauncherCluster, tmp_path: Path) -> None:
    """The warm process handed out is replaced only after the new process's first step (its
    heartbeat), so the replacement's torch import does not compete with the formation and
    state transfer that come before that step (a fixed 2 s delay used to)."""
    beat = tmp_path / "beat-at"
    script = tmp_path / "slow_first_step.py"
    script.write_text("import os, pathlib, time\n"
                      "time.sleep(6)  # forming, fetching a peer's state\n"
                      f"pathlib.Path({str(beat)!r}).write_text(str(time.time()))\n"
                      "pathlib.Path(os.environ['ELASTIC_HEARTBEAT_FILE']).write_text('1')\n"
                      "time.sleep(600)\n")
    agent = cluster.start("n0", "1:1", script=script)

    def boots() -> list[int]:
        """The agent's pooled processes, the one running the script among them."""
        return [pid for pid, ppid, _ in process_table()
                if ppid == agent.proc.pid and b"launcher.worker_boot" in _cmdline(pid)]

    wait_for(lambda: "started 1 worker(s) (1 pre-warmed)" in agent.log(), 120,
             lambda: f"the worker to start\n{agent.log()}")
    started = time.time()
    while not beat.exists():
        assert len(boots()) == 1, f"refilled {time.time() - started:.1f}s after the start, " \
                                  "before the first step"
        assert time.time() - started < 60, agent.log()
        time.sleep(0.1)
    wait_for(lambda: len(boots()) == 2, 30, lambda: f"the refill\n{agent.log()}")



def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""  # gone meanwhile
