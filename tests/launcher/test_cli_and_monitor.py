"""Fast checks: flags/env parsing, failure reports, worker env and hang detection."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from launcher import contract
from launcher.cli import ConfigError, parse_config
from launcher.contract import PodEnv, WorkerEnv
from launcher.etcd_rendezvous import Round
from launcher.monitor import GroupState, WorkerGroup
from launcher.reports import FailureReporter

BASE_ENV = {PodEnv.RDZV_ENDPOINT: "etcd:2379", PodEnv.RDZV_ID: "ns/job/uid"}


class TestConfig:
    def test_pod_env_alone_is_enough(self) -> None:
        env = {**BASE_ENV, PodEnv.MIN_NODES: "2", PodEnv.MAX_NODES: "4",
               PodEnv.NPROC_PER_NODE: "3", PodEnv.MAX_RESTARTS: "7",
               PodEnv.HANG_TIMEOUT: "60", PodEnv.TERMINATION_LOG: "/tmp/t"}
        cfg = parse_config(["train.py", "--lr", "0.1"], env)
        assert (cfg.min_nodes, cfg.max_nodes, cfg.nproc_per_node) == (2, 4, 3)
        assert (cfg.max_restarts, cfg.hang_timeout, cfg.termination_log) == (7, 60.0, "/tmp/t")
        assert (cfg.rdzv_endpoint, cfg.rdzv_id) == ("etcd:2379", "ns/job/uid")
        assert cfg.cmd == [sys.executable, "-u", "train.py", "--lr", "0.1"]

    def test_flags_win_over_env_and_torchrun_spellings_work(self) -> None:
        env = {**BASE_ENV, PodEnv.MIN_NODES: "2", PodEnv.MAX_NODES: "4"}
        cfg = parse_config(["--nnodes=1:2", "--nproc_per_node=2", "--rdzv_id=x",
                            "--rdzv-conf=lease_ttl=5,settle=0.5", "-m", "pkg.train"], env)
        assert (cfg.min_nodes, cfg.max_nodes, cfg.nproc_per_node, cfg.rdzv_id) == (1, 2, 2, "x")
        assert (cfg.lease_ttl, cfg.settle) == (5, 0.5)
        assert cfg.cmd[-2:] == ["-m", "pkg.train"]

    @pytest.mark.parametrize(("argv", "env", "needle"), [
        (["t.py"], {PodEnv.RDZV_ID: "x"}, PodEnv.RDZV_ENDPOINT),
        (["t.py"], {PodEnv.RDZV_ENDPOINT: "e:1"}, PodEnv.RDZV_ID),
        (["--nnodes=3:2", "t.py"], BASE_ENV, "MIN <= MAX"),
        (["--nnodes=a", "t.py"], BASE_ENV, "MIN:MAX"),
        (["--rdzv-backend=c10d", "t.py"], BASE_ENV, "etcd-v3"),
        (["--rdzv-conf=bogus=1", "t.py"], BASE_ENV, "bogus"),
        (["--max-restarts=-1", "t.py"], BASE_ENV, "--max-restarts"),
    ])
    def test_bad_configuration_names_the_field(self, argv: list[str], env: dict[str, str],
                                               needle: str) -> None:
        with pytest.raises(ConfigError, match=needle.replace("$", r"\$")):
            parse_config(argv, env)


class TestReports:
    def test_report_lands_in_termination_log_as_contract_json(self, tmp_path: Path) -> None:
        log = tmp_path / "termination-log"
        report = FailureReporter("job", "n1", log).report(
            "ProcessCrashed", "rank 3 exited with code 1", rank=3, exit_code=1, generation=2)
        assert contract.FailureReport.from_json(log.read_text()) == report
        assert report.node_id == "n1" and report.timestamp > 0

    def test_unwritable_termination_log_is_logged_not_fatal(self, tmp_path: Path) -> None:
        reporter = FailureReporter("job", "n1", tmp_path / "missing-dir" / "log")
        report = reporter.report("ProcessHung", "no progress")
        assert report.reason == "ProcessHung"
        assert not reporter.write_termination_log(report)

    def test_unknown_reason_is_rejected(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="Exploded"):
            FailureReporter("job", "n1", None).report("Exploded", "?")


def _group(tmp_path: Path, cmd: list[str], hang_timeout: float = 1.0) -> WorkerGroup:
    rnd = Round(4, ("a", "b"), "10.1.2.3", 29500, "b")
    return WorkerGroup(cmd, 2, rnd, tmp_path, hang_timeout, previous_world_size=6)


def test_worker_env_follows_the_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PodEnv.BASE_WORLD_SIZE, "8")
    env = _group(tmp_path, ["true"]).env_for(1)
    assert {k: env[k] for k in (
        WorkerEnv.WORLD_SIZE, WorkerEnv.RANK, WorkerEnv.LOCAL_RANK, WorkerEnv.LOCAL_WORLD_SIZE,
        WorkerEnv.GROUP_RANK, WorkerEnv.MASTER_ADDR, WorkerEnv.MASTER_PORT,
        WorkerEnv.RDZV_GENERATION, WorkerEnv.PREVIOUS_WORLD_SIZE, PodEnv.BASE_WORLD_SIZE,
    )} == {
        "WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "1", "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29500",
        "ELASTIC_RDZV_GENERATION": "4", "ELASTIC_PREVIOUS_WORLD_SIZE": "6",
        "ELASTIC_BASE_WORLD_SIZE": "8",
    }
    assert env[WorkerEnv.HEARTBEAT_FILE].startswith(str(tmp_path))


def test_hang_timer_is_armed_by_the_first_heartbeat(tmp_path: Path) -> None:
    group = _group(tmp_path, ["sleep", "30"]).start()
    try:
        later = time.time() + 100
        # No heartbeat yet: never hung, however long it takes.
        assert group.poll(now=later).state is GroupState.RUNNING
        beat = group.heartbeat_file(1)
        beat.touch()  # what Heartbeat() does when the session starts: opened, not written
        os.utime(beat, (time.time() - 5, time.time() - 5))
        assert group.poll().state is GroupState.RUNNING
        beat.write_text("1")
        os.utime(beat, (time.time() - 5, time.time() - 5))
        status = group.poll()
        assert (status.state, status.reason, status.local_rank) == (
            GroupState.FAILED, "ProcessHung", 1)
        assert "rank 3" in status.message
    finally:
        group.stop(grace=2)
    assert all(p.poll() is not None for p in group.procs)


def test_crash_is_reported_with_rank_and_signal(tmp_path: Path) -> None:
    group = _group(tmp_path, [sys.executable, "-c",
                              "import os,signal; os.kill(os.getpid(), signal.SIGSEGV)"]).start()
    try:
        deadline = time.monotonic() + 30
        while (status := group.poll()).state is GroupState.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status.state is GroupState.FAILED and status.exit_code == -11
        assert "SIGSEGV" in status.message
    finally:
        group.stop(grace=2)
