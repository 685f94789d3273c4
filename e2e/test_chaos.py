"""The seeded chaos soak (``bench/chaos.py``) with a fixed seed, as a test."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.chaos import MAX_REPLICAS, soak
from e2e.local_driver import LocalDriver
from elastic_operator.local.cluster import ClusterConfig, LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]


async def test_chaos_soak_seed_1(tmp_path: Path) -> None:
    config = ClusterConfig(state_dir=tmp_path / "cluster", nodes=MAX_REPLICAS, gpus_per_node=1,
                           workdir=REPO, operator_args=["--backoff-base", "0.3",
                                                        "--backoff-cap", "2", "--resync", "2"])
    async with LocalCluster(config) as cluster:
        # Events closer together than the benchmark's default: this test checks correctness.
        result = await soak(LocalDriver(cluster), seed=1, events=10, gap=24)
    print(result.summary())
    assert len(result.events) == 10
    assert len({kind for kind, _ in result.events}) >= 5
    assert result.goodput > 0
