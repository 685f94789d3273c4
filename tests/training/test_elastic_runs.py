"""Multi-process runs of the example (real torch, gloo) with resizes, restarts and crashes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from launcher.training import check_exactly_once, committed_steps, read_records
from tests.training.worlds import cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _steps(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {e["step"]: e for e in events if e["event"] == "step"}


def _one(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [e for e in events if e["event"] == kind]
    assert len(found) == 1, f"expected one {kind!r} event, got {events[-5:]}"
    return found[0]


def test_exactly_once_lr_and_rollback_across_3_2_4(tmp_path: Path) -> None:
    """fixedPerWorker, linear LR (base 2), warm-up 3: 3 -(SIGTERM)-> 2 -(SIGKILL of one rank,
    the other fails)-> 4, with a rollback to the last periodic checkpoint."""
    size, lr, gamma, warmup = 480, 0.05, 0.995, 3
    log = tmp_path / "indices.jsonl"
    args = ["--epochs", "2", "--dataset-size", str(size), "--batch-size", "4", "--lr", str(lr),
            "--lr-decay", str(gamma), "--warmup-steps", str(warmup), "--seed", "7",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-interval", "4",
            "--log-indices", str(log), "--step-time", "0.05"]
    env = {"ELASTIC_BASE_WORLD_SIZE": "2", "ELASTIC_LR_SCALING": "linear",
           "ELASTIC_BATCHING": "fixedPerWorker"}
    with cluster(tmp_path, args, env) as c:
        w0 = c.start(3)
        w0.wait_for_step(5)
        w0.stop()
        s0 = _one(w0.events(), "stopped")["step"]
        assert s0 < size // 12, "the resize should land inside the first epoch"

        w1 = c.start(2)
        w1.wait_for_step(s0 + 6)
        codes = w1.kill_rank(1)
        assert codes[1] == -9 and codes[0] != 0, f"survivors must fail, got {codes}"
        start1 = _one(w1.events(), "start")
        assert (start1["resumed_step"], start1["epoch"], start1["consumed"]) == (
            s0, 0, _steps(w0.events())[s0]["consumed"])

        w2 = c.start(4)
        w2.expect_exit([0, 0, 0, 0])
        r2 = _one(w2.events(), "start")["resumed_step"]
        done = _one(w2.events(), "done")

    # Exactly once in the committed lineage, across both epochs.
    records = read_records(log)
    report = check_exactly_once(records, dataset_size=size, epochs=2)
    assert report.ok, report.problems
    assert [c.step for c in committed_steps(records)] == list(range(1, done["step"] + 1))
    # gen 1 resumed where gen 0 stopped; gen 2 from gen 1's last periodic checkpoint.
    gen1_steps = [r["step"] for r in records if r["event"] == "step" and r["generation"] == 1]
    assert s0 < r2 <= max(gen1_steps) and r2 % 4 == 0

    def gen1_factor(step: int) -> float:
        return 1.5 + (1.0 - 1.5) * min(step - s0, warmup) / warmup

    before = gen1_factor(r2)
    factors = {  # per generation: a rolled-back step is taken again with another factor
        0: lambda step: 1.5,
        1: gen1_factor,
        2: lambda step: before + (2.0 - before) * min(step - r2, warmup) / warmup,
    }
    for world in (w0, w1, w2):
        for step, event in _steps(world.events()).items():
            want = lr * gamma ** (step - 1) * factors[world.generation](step)
            assert math.isclose(event["lr"], want, rel_tol=1e-9), (world.generation, step,
                                                                   event["lr"], want)
    # fixedPerWorker still converges.
    first = _steps(w0.events())[1]["loss"]
    assert done["loss"] < 0.5 * first
    assert int((tmp_path / "hb.0").read_text()) == done["step"]


def test_fixed_global_elastic_run_matches_fixed_size_run(tmp_path: Path) -> None:
    """fixedGlobal (global batch 40, uneven micro-batches): 2 -> 3 -> 1 ends where an
    uninterrupted 2-process run ends; each restart continues at the same step and position."""
    size = 400
    common = ["--epochs", "4", "--dataset-size", str(size), "--batch-size", "8",
              "--global-batch", "40", "--lr", "0.05", "--warmup-steps", "3", "--seed", "3",
              "--checkpoint-interval", "5"]
    env = {"ELASTIC_BASE_WORLD_SIZE": "2", "ELASTIC_LR_SCALING": "linear",
           "ELASTIC_BATCHING": "fixedGlobal"}
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "elastic"
    ref_dir.mkdir()
    run_dir.mkdir()
    with cluster(ref_dir, [*common, "--checkpoint-dir", str(ref_dir / "ckpt")], env) as ref:
        fixed = ref.start(2)
        fixed.expect_exit([0, 0])
    reference = _steps(fixed.events())
    ref_done = _one(fixed.events(), "done")

    log = run_dir / "indices.jsonl"
    args = [*common, "--checkpoint-dir", str(run_dir / "ckpt"), "--log-indices", str(log),
            "--step-time", "0.1"]
    with cluster(run_dir, args, env) as c:
        w0 = c.start(2)
        w0.wait_for_step(3)
        w0.stop()
        s0 = _one(w0.events(), "stopped")["step"]

        w1 = c.start(3)
        w1.wait_for_step(s0 + 3)
        w1.stop()
        s1 = _one(w1.events(), "stopped")["step"]

        w2 = c.start(1)
        w2.expect_exit([0])
        done = _one(w2.events(), "done")

    starts = [_one(w.events(), "start") for w in c.worlds]
    assert [s["accumulation"] for s in starts] == [3, 2, 5]
    # Each restart continues at the step and sample position the previous world stopped at.
    for start, stopped_at in zip(starts[1:], (s0, s1), strict=True):
        assert start["resumed_step"] == stopped_at
        before = reference[stopped_at]
        total = before["epoch"] * size + before["consumed"]
        assert (start["epoch"], start["consumed"]) == divmod(total, size)
    # Same global batches in the same order: same trajectory up to float summation order.
    assert done["step"] == ref_done["step"] == 40
    assert done["loss"] == pytest.approx(ref_done["loss"], rel=1e-3)
    for world in c.worlds:
        for step, event in _steps(world.events()).items():
            assert event["lr"] == 0.05
            assert event["loss"] == pytest.approx(reference[step]["loss"], rel=1e-3)
    report = check_exactly_once(read_records(log), dataset_size=size, epochs=4)
    assert report.ok, report.problems
