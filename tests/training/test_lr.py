"""LR scaling policies, warm-up after a resize, composition with torch schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from launcher.training import ElasticLR, lr_factor


@pytest.mark.parametrize(("policy", "world", "base", "batching", "expected"), [
    ("linear", 4, 2, "fixedPerWorker", 2.0),
    ("linear", 1, 4, "fixedPerWorker", 0.25),
    ("sqrt", 8, 2, "fixedPerWorker", 2.0),
    ("sqrt", 3, 2, "fixedPerWorker", math.sqrt(1.5)),
    ("none", 8, 2, "fixedPerWorker", 1.0),
    ("linear", 8, 2, "fixedGlobal", 1.0),
    ("sqrt", 1, 2, "fixedGlobal", 1.0),
])
def test_factor_table(policy: str, world: int, base: int, batching: str,
                      expected: float) -> None:
    assert lr_factor(policy, world, base, batching) == pytest.approx(expected)  # type: ignore[arg-type]


def test_factor_rejects_unknown_policy() -> None:
    with pytest.raises(ValueError, match="'cubic' is not one of linear, sqrt, none"):
        lr_factor("cubic", 2, 2, "fixedPerWorker")  # type: ignore[arg-type]


def _opt(lr: float = 0.1) -> torch.optim.Optimizer:
    p = torch.nn.Parameter(torch.zeros(1))
    return torch.optim.SGD([{"params": [p]}, {"params": [torch.nn.Parameter(torch.zeros(1))],
                                              "lr": lr / 10}], lr=lr)


def _lr_seen_by_step(opt: torch.optim.Optimizer, elr: ElasticLR) -> list[float]:
    seen: list[float] = []
    opt.param_groups[0]["params"][0].grad = torch.ones(1)
    opt.param_groups[1]["params"][0].grad = torch.ones(1)

    def spy() -> None:
        seen.extend(group["lr"] for group in opt.param_groups)

    with elr.scaled():
        spy()
        opt.step()
    return seen


def test_scaled_step_uses_factor_and_restores_exact_lrs() -> None:
    opt = _opt(0.1)
    elr = ElasticLR(opt, policy="linear", world_size=3, base_world_size=2,
                    batching="fixedPerWorker")
    assert _lr_seen_by_step(opt, elr) == pytest.approx([0.15, 0.015])
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]  # unscaled, bit-exact
    assert opt.param_groups[0]["params"][0].item() == pytest.approx(-0.15)


def test_composes_with_scheduler() -> None:
    opt = _opt(0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    elr = ElasticLR(opt, policy="sqrt", world_size=8, base_world_size=2,
                    batching="fixedPerWorker")
    seen = []
    for _ in range(5):
        seen.append(_lr_seen_by_step(opt, elr)[0])
        sched.step()
    assert seen == pytest.approx([0.2, 0.2, 0.1, 0.1, 0.05])
    assert sched.get_last_lr()[0] == pytest.approx(0.025)  # unscaled: the scheduler's own


@pytest.mark.parametrize(("policy", "old", "new"), [
    ("linear", 1.5, 2.0), ("sqrt", math.sqrt(1.5), math.sqrt(2.0)), ("none", 1.0, 1.0)])
def test_warmup_after_resize_ramps_from_old_to_new_factor(policy: str, old: float,
                                                          new: float) -> None:
    opt3 = _opt(1.0)
    before = ElasticLR(opt3, policy=policy, world_size=3, base_world_size=2,  # type: ignore[arg-type]
                       batching="fixedPerWorker", warmup_steps=4)
    _lr_seen_by_step(opt3, before)
    opt4 = _opt(1.0)
    after = ElasticLR(opt4, policy=policy, world_size=4, base_world_size=2,  # type: ignore[arg-type]
                      batching="fixedPerWorker", warmup_steps=4)
    after.load_state_dict(before.state_dict())
    seen = [_lr_seen_by_step(opt4, after)[0] for _ in range(6)]
    ramp = [old + (new - old) * k / 4 for k in (1, 2, 3, 4)] + [new, new]
    assert seen == pytest.approx(ramp)


def test_restart_continues_a_ramp_and_zero_warmup_switches_at_once() -> None:
    opt = _opt(1.0)
    ramping = ElasticLR(opt, policy="linear", world_size=2, base_world_size=2,
                        batching="fixedPerWorker", warmup_steps=4)
    ramping.load_state_dict({"start": 2.0, "target": 1.0, "length": 4, "done": 0})
    _lr_seen_by_step(opt, ramping)
    restarted = ElasticLR(opt, policy="linear", world_size=2, base_world_size=2,
                          batching="fixedPerWorker", warmup_steps=4)
    restarted.load_state_dict(ramping.state_dict())
    assert restarted.factor == pytest.approx(2.0 - 2 / 4)
    immediate = ElasticLR(opt, policy="linear", world_size=2, base_world_size=2,
                          batching="fixedPerWorker", warmup_steps=0)
    immediate.load_state_dict({"start": 2.0, "target": 2.0, "length": 0, "done": 0})
    assert immediate.factor == 1.0
