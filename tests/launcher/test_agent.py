"""The launcher end to end: real etcd, 2-3 agents on localhost, a real gloo training script."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.launcher.conftest import LauncherCluster, wait_for

pytestmark = pytest.mark.slow

JOIN = 90.0  # generous: torch import + gloo init on a loaded 2-core box


def test_formation_at_expected_size_and_clean_finish(cluster: LauncherCluster) -> None:
    a = cluster.start("n0", "2:3", "--steps", "20")
    b = cluster.start("n1", "2:3", "--steps", "20")
    assert a.proc.wait(JOIN) == 0, cluster.logs_tail()
    assert b.proc.wait(JOIN) == 0, cluster.logs_tail()
    rows = cluster.progress()
    # min=2 < max=3: the round closed after the settle window with both, and never re-formed.
    assert {(gen, world) for gen, world, _ in rows} == {(1, 2)}
    assert rows[-1][2] == 20
    assert a.report() is None and b.report() is None


def test_crash_of_one_process_restarts_the_round(cluster: LauncherCluster) -> None:
    cluster.start("n0", "2:2", "--crash-rank", "1", "--crash-step", "5")
    cluster.start("n1", "2:2", "--crash-rank", "1", "--crash-step", "5")
    cluster.wait_training(2, JOIN)
    crashed_node = cluster.round_members()[1]  # group rank 1 holds global rank 1
    cluster.wait_training(2, JOIN, min_generation=2)
    report = wait_for(lambda: cluster.etcd_report(crashed_node), 30, "crash report in etcd")
    assert (report.reason, report.rank, report.exit_code, report.generation) == (
        "ProcessCrashed", 1, 3, 1)
    assert cluster.agents[crashed_node].report() == report
    # The peer's collective failed too, but the restart is attributed to the origin only.
    other = next(n for n in cluster.agents if n != crashed_node)
    assert cluster.etcd_report(other) is None
    assert all(agent.proc.poll() is None for agent in cluster.agents.values())


def test_sigkill_of_an_agent_survivors_resume_smaller(cluster: LauncherCluster) -> None:
    for node in ("n0", "n1", "n2"):
        cluster.start(node, "2:3")
    cluster.wait_training(3, JOIN)
    victim = cluster.agents[cluster.round_members()[2]]
    os.kill(victim.proc.pid, signal.SIGKILL)  # its workers die with it (parent-death signal)
    killed_at = time.monotonic()
    _, world, _ = cluster.wait_training(2, 60, min_generation=2)
    resumed_after = time.monotonic() - killed_at
    assert world == 2
    assert resumed_after < 30, f"survivors took {resumed_after:.1f}s to resume"
    for node, agent in cluster.agents.items():
        if agent is victim:
            continue
        assert agent.proc.poll() is None, cluster.logs_tail()
        report = cluster.etcd_report(node)
        # A lost peer is not this node's failure: at most a PeerLost note, never a crash.
        assert report is None or report.reason == "PeerLost", report


def test_hung_process_is_detected_and_replaced(cluster: LauncherCluster) -> None:
    args = ("--hang-rank", "1", "--hang-step", "5")
    cluster.start("n0", "2:2", *args, launcher_args=("--hang-timeout", "3"))
    cluster.start("n1", "2:2", *args, launcher_args=("--hang-timeout", "3"))
    cluster.wait_training(2, JOIN)
    cluster.wait_training(2, JOIN, min_generation=2)

    def hang_reports() -> list[object]:
        reports = [cluster.etcd_report(node) for node in cluster.agents]
        return [r for r in reports if r is not None]

    reports = wait_for(hang_reports, 30, lambda: f"a hang report in etcd\n{cluster.logs_tail(40)}")
    # A hang in a collective job stalls every rank's heartbeat (the peer waits in all_reduce),
    # so either node may time out first; exactly one of them counts it.
    assert len(reports) == 1, reports
    report = reports[0]
    assert report.reason == "ProcessHung" and report.rank in (0, 1)  # type: ignore[attr-defined]
    assert "no progress" in report.message  # type: ignore[attr-defined]


def test_new_agent_joins_then_one_is_scaled_down(cluster: LauncherCluster) -> None:
    cluster.start("n0", "2:3")
    cluster.start("n1", "2:3")
    cluster.wait_training(2, JOIN)
    cluster.start("n2", "2:3")
    gen, world, _ = cluster.wait_training(3, JOIN, min_generation=2)
    assert world == 3
    assert all(agent.proc.poll() is None for agent in cluster.agents.values())
    # Scale-down: SIGTERM (pod deletion). The agent stops its workers, leaves the rendezvous
    # (lease revoked, no TTL wait) and exits 0 with a Shutdown note; the others re-form.
    leaving = cluster.agents[cluster.round_members()[2]]
    leaving.proc.send_signal(signal.SIGTERM)
    assert leaving.proc.wait(30) == 0, cluster.logs_tail()
    report = leaving.report()
    assert report is not None and report.reason == "Shutdown"
    cluster.wait_training(2, JOIN, min_generation=gen + 1)


def test_etcd_restart_does_not_fail_the_job(cluster: LauncherCluster) -> None:
    cluster.start("n0", "1:2")
    cluster.start("n1", "1:2")
    gen, _, _ = cluster.wait_training(2, JOIN)
    cluster.etcd.stop()
    steps_before = len(cluster.progress())
    # Training continues while etcd is down: the agents never block their workers on etcd.
    wait_for(lambda: len(cluster.progress()) >= steps_before + 20, 30,
             "training progress while etcd is down")
    cluster.etcd.start()
    rows_after = len(cluster.progress())
    wait_for(lambda: len(cluster.progress()) >= rows_after + 20, 30,
             "training progress after etcd came back")
    # Leases survive an etcd restart (same data dir), so no peer looked lost: same round.
    assert cluster.progress()[-1][0] == gen
    assert all(agent.proc.poll() is None for agent in cluster.agents.values())
    for node in cluster.agents:
        assert cluster.etcd_report(node) is None
    # The agents are connected and watching again: a peer lost now is noticed as usual.
    os.kill(cluster.agents[cluster.round_members()[1]].proc.pid, signal.SIGKILL)
    cluster.wait_training(1, 60, min_generation=gen + 1)


def test_max_restarts_exhausted_fails_with_report(cluster: LauncherCluster) -> None:
    agent = cluster.start("n0", "1:1", "--crash-rank", "0", "--crash-step", "2",
                          "--crash-always", launcher_args=("--max-restarts", "1"))
    assert agent.proc.wait(120) == 1, cluster.logs_tail()
    report = agent.report()
    assert report is not None
    assert (report.reason, report.rank, report.exit_code) == ("MaxRestartsExceeded", 0, 3)
    assert "--max-restarts=1" in report.message
    assert cluster.etcd_report("n0") == report
    # Two generations ran (the first try and one restart), each crashing at step 2.
    assert {gen for gen, _, _ in cluster.progress()} == {1, 2}
