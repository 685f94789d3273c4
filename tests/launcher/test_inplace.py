"""In-place resize under real agents, etcd and gloo (issue 15).

Scripts on the short API (``launcher.training.init``) keep their training processes across a
join, a graceful leave and a SIGKILLed peer; a joiner gets the state from a peer's memory,
bit-identical; a step cut short by a lost peer is redone; the exactly-once audit holds; a script
without the helpers takes the restart path and the log says so.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from bench.step_stalls import descendants
from e2e.local_driver import writes_heartbeat
from launcher import contract
from launcher.training.audit import (
    check_exactly_once,
    committed_steps,
    committed_world_sizes,
    read_records,
    redone_steps,
)
from launcher.training.checkpoint import CheckpointDir
from tests.launcher.conftest import REPO, LauncherCluster, wait_for

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "train_elastic.py"
TEST_SCRIPT = Path(__file__).with_name("train_inplace.py")
JOIN = 150.0


@pytest.fixture
def job_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Index log, checkpoints and LR policy as the operator would set them (env)."""
    monkeypatch.setenv("ELASTIC_INDEX_LOG", str(tmp_path / "indices.jsonl"))
    monkeypatch.setenv("ELASTIC_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setenv("ELASTIC_CHECKPOINT_INTERVAL", "10")
    monkeypatch.setenv("ELASTIC_LR_SCALING", "linear")
    monkeypatch.setenv("ELASTIC_BASE_WORLD_SIZE", "2")
    return tmp_path / "indices.jsonl"


def world_of_last_step(log: Path) -> int:
    if not log.exists():
        return 0
    ranks: dict[tuple[int, int], set[int]] = {}
    for r in read_records(log):
        if r["event"] == "step":
            ranks.setdefault((r["step"], r["generation"]), set()).add(r["rank"])
    return len(ranks[max(ranks)]) if ranks else 0


def steps_logged(log: Path) -> int:
    return len({r["step"] for r in read_records(log) if r["event"] == "step"}) \
        if log.exists() else 0


def workers_started(cluster: LauncherCluster, node: str) -> int:
    return cluster.agents[node].log().count("started 1 worker(s)")


def states(out: Path) -> list[dict[str, Any]]:
    path = out / "states.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_identical_per_generation(rows: list[dict[str, Any]]) -> None:
    by_gen: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_gen.setdefault(row["generation"], []).append(row)
    for gen, members in by_gen.items():
        assert len({(m["step"], m["hash"]) for m in members}) == 1, \
            (gen, [(m["rank"], m["step"], m["parts"]) for m in members])


def start_two(cluster: LauncherCluster, log: Path, nnodes: str, args: tuple[str, ...],
              script: Path, launcher_args: tuple[str, ...] = ()) -> None:
    """Agents a and b, then wait until they train at world 2 (5 steps logged)."""
    for node in ("a", "b"):
        cluster.start(node, nnodes, *args, script=script, launcher_args=launcher_args)
    wait_for(lambda: world_of_last_step(log) == 2 and steps_logged(log) >= 5, JOIN,
             lambda: f"training at world 2\n{cluster.logs_tail()}")


def test_example_grows_in_place_exactly_once_with_the_lr_rules(
        cluster: LauncherCluster, job_env: Path, tmp_path: Path) -> None:
    """examples/train_elastic.py: a third node joins; the survivors keep their processes,
    every epoch consumes each sample once, and the LR ramps to the linear rule's 3/2."""
    log = job_env
    args = ("--epochs=40", "--dataset-size=128", "--batch-size=8", "--step-time=0.05")
    start_two(cluster, log, "2:3", args, EXAMPLE)
    cluster.start("c", "2:3", *args, script=EXAMPLE)
    wait_for(lambda: world_of_last_step(log) == 3, JOIN, lambda: f"world 3\n{cluster.logs_tail()}")
    record = cluster.resize_record("a")  # what the operator turns into a ResizedInPlace event
    assert record is not None and (record.node_id, record.path, record.reason) == (
        "a", "in-place", ""), record
    for agent in cluster.agents.values():
        assert agent.proc.wait(JOIN * 2) == 0, cluster.logs_tail()
    records = read_records(log)
    report = check_exactly_once(records, dataset_size=128, epochs=40)
    assert report.ok, report.problems
    assert committed_world_sizes(records) == [2, 3]
    assert workers_started(cluster, "a") == workers_started(cluster, "b") == 1
    assert "resize path in-place" in cluster.agents["a"].log()
    found = CheckpointDir(tmp_path / "ckpt").load_latest()
    assert found is not None
    lr_state = found[1]["elastic_lr"]
    assert (lr_state["start"], lr_state["target"], lr_state["length"]) == (1.0, 1.5, 5)
    assert found[1]["step"] == committed_steps(records)[-1].step


def test_example_trains_on_in_place_after_a_peer_is_killed(
        cluster: LauncherCluster, job_env: Path) -> None:
    """examples/train_elastic.py, one of two members SIGKILLed with its whole tree: the
    survivor's process lives on (its loop body calls ``dist.get_rank()`` right after the
    discarded step's ``optimizer.step()``, so that call must see a group) at world 1."""
    log = job_env
    args = ("--epochs=30", "--dataset-size=64", "--batch-size=8", "--step-time=0.05")
    start_two(cluster, log, "1:2", args, EXAMPLE)
    os.killpg(cluster.agents["b"].proc.pid, signal.SIGKILL)
    assert cluster.agents["a"].proc.wait(JOIN * 2) == 0, cluster.logs_tail()
    assert workers_started(cluster, "a") == 1, cluster.logs_tail()
    records = read_records(log)
    report = check_exactly_once(records, dataset_size=64, epochs=30)
    assert report.ok, report.problems
    assert committed_world_sizes(records) == [2, 1]


def test_joiners_arriving_together_keep_their_first_process(
        cluster: LauncherCluster, job_env: Path, tmp_path: Path) -> None:
    """Two nodes join within a moment: the first one's round is superseded while its process
    still imports torch; that process is not restarted for it (a cold restart would cost every
    member its start-up again), and all four train in place."""
    log, out = job_env, tmp_path / "states"
    out.mkdir()
    args = (f"--out={out}", "--epochs=60", "--dataset-size=96", "--batch-size=8",
            "--step-time=0.05", "--no-states")
    start_two(cluster, log, "1:4", args, TEST_SCRIPT)
    for node in ("c", "d"):
        cluster.start(node, "1:4", *args, script=TEST_SCRIPT)
    wait_for(lambda: world_of_last_step(log) == 4, JOIN, lambda: f"world 4\n{cluster.logs_tail()}")
    for node in cluster.agents:
        assert cluster.agents[node].proc.wait(JOIN * 2) == 0, cluster.logs_tail()
    assert {node: workers_started(cluster, node) for node in cluster.agents} == dict.fromkeys(
        cluster.agents, 1), cluster.logs_tail()
    report = check_exactly_once(read_records(log), dataset_size=96, epochs=60)
    assert report.ok, report.problems


def test_join_then_sigkill_of_the_store_host(cluster: LauncherCluster, job_env: Path,
                                             tmp_path: Path) -> None:
    """A joiner's state equals the survivors' bit for bit; SIGKILL of rank 0 (the process
    hosting the generation's store) mid-step: the step is discarded and redone at world 2."""
    log, out = job_env, tmp_path / "states"
    out.mkdir()
    args = (f"--out={out}", "--epochs=80", "--dataset-size=96", "--batch-size=8",
            "--step-time=0.05")
    start_two(cluster, log, "1:3", args, TEST_SCRIPT)
    cluster.start("c", "1:3", *args, script=TEST_SCRIPT)
    wait_for(lambda: world_of_last_step(log) == 3, JOIN, lambda: f"world 3\n{cluster.logs_tail()}")
    joined = [row for row in states(out) if row["world_size"] == 3]
    assert len(joined) == 3, joined
    assert_identical_per_generation(joined)
    assert {row["step"] for row in joined} != {0}
    host = cluster.round_members()[0]
    steps_before = steps_logged(log)
    wait_for(lambda: steps_logged(log) >= steps_before + 3, JOIN, "steps at world 3")
    os.killpg(cluster.agents[host].proc.pid, signal.SIGKILL)
    survivors = [n for n in cluster.agents if n != host]
    for node in survivors:
        assert cluster.agents[node].proc.wait(JOIN * 2) == 0, cluster.logs_tail()
        assert workers_started(cluster, node) == 1
    records = read_records(log)
    report = check_exactly_once(records, dataset_size=96, epochs=80)
    assert report.ok, report.problems
    assert committed_world_sizes(records) == [2, 3, 2]
    assert any(r["event"] == "discard" for r in records)
    assert_identical_per_generation(states(out))
    completion = contract.Completion.from_json(
        cluster.agents[survivors[0]].termination_log.read_text())
    assert set(completion.members) == set(survivors)


def test_graceful_leave_in_place(cluster: LauncherCluster, job_env: Path,
                                 tmp_path: Path) -> None:
    """SIGTERM to one of three agents: it leaves after an agreed step (outcome stopped, a
    Shutdown note), the others go on at world 2 in the same processes."""
    log, out = job_env, tmp_path / "states"
    out.mkdir()
    args = (f"--out={out}", "--epochs=25", "--dataset-size=96", "--batch-size=8",
            "--step-time=0.05")
    for node in ("a", "b", "c"):
        cluster.start(node, "2:3", *args, script=TEST_SCRIPT)
    wait_for(lambda: world_of_last_step(log) == 3 and steps_logged(log) >= 5, JOIN,
             lambda: f"training at world 3\n{cluster.logs_tail()}")
    leaving = cluster.agents[cluster.round_members()[1]]
    leaving.proc.send_signal(signal.SIGTERM)
    assert leaving.proc.wait(60) == 0
    note = leaving.report()
    assert note is not None and note.reason == "Shutdown"
    survivors = [a for a in cluster.agents.values() if a is not leaving]
    for agent in survivors:
        assert agent.proc.wait(JOIN * 2) == 0, cluster.logs_tail()
        assert workers_started(cluster, agent.node_id) == 1
    records = read_records(log)
    report = check_exactly_once(records, dataset_size=96, epochs=25)
    assert report.ok, report.problems
    assert committed_world_sizes(records) == [3, 2]
    assert not redone_steps(records)
    assert cluster.etcd_report(leaving.node_id) is None


def test_a_joiner_lost_while_its_round_forms_costs_no_timeout(
        cluster: LauncherCluster, job_env: Path, tmp_path: Path) -> None:
    """A joiner is SIGKILLed (agent and process) once it said it is ready, so the survivors
    were handed a round with a member that never arrives: they give that round up when the
    next one (without it) is handed over, well inside the 60 s collective timeout, keep their
    processes and finish exactly once."""
    log, out = job_env, tmp_path / "states"
    out.mkdir()
    args = (f"--out={out}", "--epochs=60", "--dataset-size=96", "--batch-size=8",
            "--step-time=0.05", "--no-states")
    start_two(cluster, log, "1:3", args, TEST_SCRIPT)
    joiner = cluster.start("c", "1:3", *args, script=TEST_SCRIPT)
    ready = f"{contract.etcd_prefix(cluster.rdzv_id)}ready/"
    wait_for(lambda: any(meta.key.decode().endswith("/c")
                         for _, meta in cluster.client().get_prefix(ready)), JOIN,
             lambda: f"the joiner to be ready\n{cluster.logs_tail()}", interval=0.01)
    os.killpg(joiner.proc.pid, signal.SIGKILL)
    before = steps_logged(log)
    # Progress again at world 2 after the lease (2 s) and a regroup; a round that waited for
    # the dead joiner would stall for the collective timeout (60 s).
    wait_for(lambda: steps_logged(log) >= before + 20, 30,
             lambda: f"steps again after the joiner was lost\n{cluster.logs_tail()}")
    for node in ("a", "b"):
        assert cluster.agents[node].proc.wait(JOIN * 2) == 0, cluster.logs_tail()
        assert workers_started(cluster, node) == 1
    records = read_records(log)
    report = check_exactly_once(records, dataset_size=96, epochs=60)
    assert report.ok, report.problems
    assert committed_world_sizes(records) in ([2], [2, 3, 2])


def test_only_the_frozen_process_is_declared_hung(cluster: LauncherCluster, job_env: Path,
                                                 tmp_path: Path) -> None:
    """SIGSTOP one member's training process: its agent declares it hung and restarts it; the
    other member, blocked in the all-reduce with it, keeps its heartbeat while it waits (it is
    waiting, not hung), keeps its process, and the job finishes exactly once."""
    log, out = job_env, tmp_path / "states"
    out.mkdir()
    args = (f"--out={out}", "--epochs=50", "--dataset-size=96", "--batch-size=8",
            "--step-time=0.05", "--no-states")
    start_two(cluster, log, "1:2", args, TEST_SCRIPT, launcher_args=("--hang-timeout", "3"))
    frozen = [pid for pid in descendants(cluster.agents["b"].proc.pid) if writes_heartbeat(pid)]
    assert len(frozen) == 1, frozen
    os.kill(frozen[0], signal.SIGSTOP)
    wait_for(lambda: "ProcessHung" in cluster.agents["b"].log(), JOIN,
             lambda: f"b's process to be declared hung\n{cluster.logs_tail()}")
    for node in ("a", "b"):
        assert cluster.agents[node].proc.wait(JOIN * 2) == 0, cluster.logs_tail()
    assert "ProcessHung" not in cluster.agents["a"].log(), cluster.logs_tail()
    assert workers_started(cluster, "a") == 1
    assert workers_started(cluster, "b") == 2
    report = check_exactly_once(read_records(log), dataset_size=96, epochs=50)
    assert report.ok, report.problems


def test_script_without_helpers_takes_the_restart_path(cluster: LauncherCluster) -> None:
    for node in ("a", "b"):
        cluster.start(node, "2:3")
    cluster.wait_training(2, JOIN)
    cluster.start("c", "2:3")
    cluster.wait_training(3, JOIN, min_generation=2)
    text = cluster.agents["a"].log()
    assert "resize path restart" in text and "did not announce in-place resize" in text
    record = cluster.resize_record("a")
    assert record is not None and record.path == "restart", record
    assert "did not announce in-place resize" in record.reason
