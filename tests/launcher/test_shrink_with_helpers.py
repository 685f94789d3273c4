"""The launcher and the training helpers together on every kind of shrink.

``examples/train_elastic_classes.py`` (the real helpers: agreed SIGTERM stop, checkpoints, sampler)
under three real agents. A stop for a resize exits 0 just like the end of training; these
tests pin down that the agents tell the two apart: survivors re-form and train every epoch, and
only a member of the final round records the job's Completion.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from launcher import contract
from launcher.training.audit import (
    check_exactly_once,
    committed_steps,
    committed_world_sizes,
    read_records,
)
from tests.launcher.conftest import REPO, LauncherCluster, wait_for

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "train_elastic_classes.py"
DATASET, BATCH, EPOCHS = 192, 8, 3
JOIN = 120.0


def start_three(cluster: LauncherCluster, tmp_path: Path) -> Path:
    log = tmp_path / "indices.jsonl"
    args = (f"--epochs={EPOCHS}", f"--dataset-size={DATASET}", f"--batch-size={BATCH}",
            "--step-time=0.15", f"--checkpoint-dir={tmp_path / 'ckpt'}",
            "--checkpoint-interval=4", f"--log-indices={log}")
    for node in ("n0", "n1", "n2"):
        cluster.start(node, "1:3", *args, script=EXAMPLE, launcher_args=("--stop-timeout", "20"))
    return log


def steps_at(log: Path, world: int) -> int:
    seen = {}
    for record in read_records(log) if log.exists() else []:
        if record["event"] == "step":
            seen.setdefault((record["generation"], record["step"]), set()).add(record["rank"])
    return sum(1 for ranks in seen.values() if len(ranks) == world)


def completion(cluster: LauncherCluster) -> contract.Completion | None:
    value, _ = cluster.client().get(contract.completion_key(cluster.rdzv_id))
    return contract.Completion.from_json(value) if value else None


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_survivors_of_a_shrink_train_every_epoch(cluster: LauncherCluster, tmp_path: Path,
                                                 how: str) -> None:
    log = start_three(cluster, tmp_path)
    wait_for(lambda: steps_at(log, 3) >= 5, JOIN,
             lambda: f"training at world 3\n{cluster.logs_tail()}")
    leaving = cluster.agents[cluster.round_members()[2]]
    leaving.proc.send_signal(getattr(signal, how))
    survivors = [a for a in cluster.agents.values() if a is not leaving]
    for agent in survivors:
        assert agent.proc.wait(JOIN * 2) == 0, cluster.logs_tail()
    records = read_records(log)
    report = check_exactly_once(records, dataset_size=DATASET, epochs=EPOCHS)
    assert report.ok, report.problems
    assert committed_world_sizes(records) == [3, 2], committed_world_sizes(records)
    assert max(c.epoch for c in committed_steps(records)) == EPOCHS - 1
    record = completion(cluster)
    assert record is not None
    assert set(record.members) == {a.node_id for a in survivors}
    # Each survivor's termination log says that training completed, in the same round.
    for agent in survivors:
        assert contract.Completion.from_json(agent.termination_log.read_text()).generation \
            == record.generation
    if how == "SIGTERM":
        assert leaving.proc.wait(30) == 0
        note = leaving.report()
        assert note is not None and note.reason == "Shutdown"
        assert cluster.etcd_report(leaving.node_id) is None  # a departure is no failure


def test_completion_is_refused_once_the_round_moved_on(cluster: LauncherCluster) -> None:
    """The compare-and-swap: an agent whose round is no longer current records nothing."""
    from launcher.etcd_rendezvous import EtcdRendezvous, Round
    from launcher.etcd_session import EtcdSession

    session = EtcdSession(cluster.etcd.endpoint, contract.etcd_prefix(cluster.rdzv_id), 2,
                          name="a").start(timeout=30)
    try:
        rdzv = EtcdRendezvous(session, cluster.rdzv_id, "a", 1, 1, "127.0.0.1")
        current = rdzv.next_round(30)
        stale = Round(current.generation + 1, ("a",), "h", 1, "a")  # not the current round
        assert rdzv.complete(stale) is None
        assert completion(cluster) is None
        record = rdzv.complete(current)
        assert record is not None and record.generation == current.generation
        # Written once: a second call returns the standing record, unchanged.
        assert rdzv.complete(current) == record == completion(cluster)
        raw, _ = cluster.client().get(contract.completion_key(cluster.rdzv_id))
        assert json.loads(raw)["node_id"] == "a"
    finally:
        session.close()
