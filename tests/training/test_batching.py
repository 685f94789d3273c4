"""BatchPlan: division of a step over ranks and micro-steps, and gradient weighting."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from launcher.training import BatchPlan


def test_fixed_per_worker_global_batch_follows_world() -> None:
    plan = BatchPlan.create("fixedPerWorker", world_size=3, micro_batch=8, base_world_size=2)
    assert (plan.global_batch, plan.accumulation) == (24, 1)
    with pytest.raises(ValueError, match="only meaningful with batching=fixedGlobal"):
        BatchPlan.create("fixedPerWorker", world_size=3, micro_batch=8, base_world_size=2,
                         global_batch=48)


@pytest.mark.parametrize(("world", "accumulation"), [(1, 4), (2, 2), (3, 2), (4, 1), (8, 1)])
def test_fixed_global_keeps_global_batch_by_accumulation(world: int, accumulation: int) -> None:
    plan = BatchPlan.create("fixedGlobal", world_size=world, micro_batch=8, base_world_size=4)
    assert (plan.global_batch, plan.accumulation) == (32, accumulation)


def test_remainder_is_split_unevenly_without_padding() -> None:
    plan = BatchPlan.create("fixedGlobal", world_size=3, micro_batch=8, base_world_size=2,
                            global_batch=40)
    sizes = [[len(mb.indices) for mb in plan.split(list(range(40)), r)] for r in range(3)]
    assert sizes == [[7, 7], [7, 6], [7, 6]]
    tail = [[len(mb.indices) for mb in plan.split(list(range(4)), r)] for r in range(3)]
    assert tail == [[1, 1], [1, 0], [1, 0]]  # end of epoch: some micro-batches empty


@given(world=st.integers(1, 9), micro=st.integers(1, 9), base=st.integers(1, 9),
       extra=st.integers(0, 30), take=st.floats(0.01, 1.0))
def test_split_covers_step_once_with_exact_weights(world: int, micro: int, base: int,
                                                   extra: int, take: float) -> None:
    plan = BatchPlan.create("fixedGlobal", world_size=world, micro_batch=micro,
                            base_world_size=base, global_batch=base * micro + extra)
    n = max(1, int(plan.global_batch * take))
    step = list(range(100, 100 + n))
    per_rank = [plan.split(step, r) for r in range(world)]
    assert all(len(mbs) == plan.accumulation for mbs in per_rank)
    assert all(len(mb.indices) <= micro for mbs in per_rank for mb in mbs)
    assert [i for mbs in per_rank for mb in mbs for i in mb.indices] == step
    # DDP averages over ranks: sum of per-sample weights / world == 1 (an exact mean).
    total = sum(len(mb.indices) * mb.loss_weight for mbs in per_rank for mb in mbs)
    assert total / world == pytest.approx(1.0)


def test_weighted_accumulated_gradient_equals_full_batch_mean() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(37, 5), torch.randn(37, 1)
    model = torch.nn.Linear(5, 1)
    torch.nn.functional.mse_loss(model(x), y).backward()
    full = model.weight.grad.clone()
    plan = BatchPlan.create("fixedGlobal", world_size=3, micro_batch=4, base_world_size=2,
                            global_batch=37)
    rank_grads = []
    for rank in range(3):
        model.zero_grad()
        for mb in plan.split(list(range(37)), rank):
            idx = torch.tensor(mb.indices, dtype=torch.long)
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx], reduction="sum")
            (loss * mb.loss_weight).backward()
        rank_grads.append(model.weight.grad.clone())
    averaged = sum(rank_grads) / 3  # what DDP's all-reduce applies
    torch.testing.assert_close(averaged, full)
