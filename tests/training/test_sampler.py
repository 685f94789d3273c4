"""ElasticSampler: exactly-once per epoch across resizes, restarts and rollbacks."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.training import BatchPlan, ElasticSampler, check_exactly_once


def test_order_is_a_deterministic_permutation_per_seed_and_epoch() -> None:
    a, b = ElasticSampler(50, seed=1), ElasticSampler(50, seed=1)
    assert a.order(0) == b.order(0) and sorted(a.order(0)) == list(range(50))
    assert a.order(0) != a.order(1) and a.order(0) != ElasticSampler(50, seed=2).order(0)
    assert ElasticSampler(5, seed=1, shuffle=False).order(3) == [0, 1, 2, 3, 4]


def test_state_from_another_dataset_or_seed_is_refused() -> None:
    state = ElasticSampler(50, seed=1).state_dict()
    with pytest.raises(ValueError, match="dataset_size=50 differs from this run's"):
        ElasticSampler(60, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=1 differs"):
        ElasticSampler(50, seed=2).load_state_dict(state)


def test_commit_rejects_a_step_that_is_not_next() -> None:
    sampler = ElasticSampler(10, seed=0)
    plan = BatchPlan.create("fixedPerWorker", world_size=2, micro_batch=2, base_world_size=2)
    step = sampler.next_step(plan)
    sampler.commit(step)
    with pytest.raises(ValueError, match="is not the next one"):
        sampler.commit(step)


segment = st.tuples(
    st.integers(1, 6),                       # world size
    st.integers(0, 12),                      # steps committed in this world
    st.sampled_from(["stop", "crash"]),      # SIGTERM (save at boundary) or SIGKILL
    st.booleans(),                           # crash: in the middle of an accumulation cycle
)


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 120), micro=st.integers(1, 7), batching=st.sampled_from(
    ["fixedGlobal", "fixedPerWorker"]), extra=st.integers(0, 9), interval=st.integers(1, 5),
    segments=st.lists(segment, min_size=1, max_size=6), seed=st.integers(0, 2**31))
def test_exactly_once_over_any_resize_sequence(size: int, micro: int, batching: str,
                                               extra: int, interval: int,
                                               segments: list[tuple[int, int, str, bool]],
                                               seed: int) -> None:
    """Play the session's protocol in-process; the audit reconstructs the lineage."""
    epochs, base = 2, 2
    records: list[dict[str, Any]] = []
    checkpoint: tuple[int, dict[str, Any]] = (0, ElasticSampler(size, seed=seed).state_dict())
    final = [*segments, (3, 10**6, "stop", False)]  # the last world runs to the end
    for generation, (world, steps, end, mid_cycle) in enumerate(final):
        global_batch = base * micro + extra if batching == "fixedGlobal" else None
        plan = BatchPlan.create(batching, world_size=world, micro_batch=micro,  # type: ignore[arg-type]
                                base_world_size=base, global_batch=global_batch)
        sampler = ElasticSampler(size, seed=seed)
        global_step, state = checkpoint
        sampler.load_state_dict(state)
        records.append({"event": "restore", "generation": generation, "step": global_step})
        for _ in range(steps):
            if sampler.epoch >= epochs:
                break
            step = sampler.next_step(plan)
            for rank in range(world):
                assert len(step.micro_batches(plan, rank)) == plan.accumulation
            sampler.commit(step)
            global_step += 1
            for rank in range(world):
                records.append({"event": "step", "generation": generation, "step": global_step,
                                "epoch": step.epoch, "indices": [
                                    i for mb in step.micro_batches(plan, rank)
                                    for i in mb.indices]})
            if global_step % interval == 0:
                checkpoint = (global_step, sampler.state_dict())
        if sampler.epoch < epochs and end == "crash" and mid_cycle:
            # Killed between micro-steps: the step is neither committed, logged, nor saved.
            sampler.next_step(plan).micro_batches(plan, 0)
        if end == "stop":
            checkpoint = (global_step, sampler.state_dict())
    assert sampler.epoch == epochs
    report = check_exactly_once(records, dataset_size=size, epochs=epochs)
    assert report.ok, report.problems
