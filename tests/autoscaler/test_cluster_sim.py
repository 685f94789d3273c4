"""The cluster simulator runs the real policy end to end and prints its comparison."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "cluster_sim.py"
_SPEC = importlib.util.spec_from_file_location("cluster_sim", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
cluster_sim = importlib.util.module_from_spec(_SPEC)
sys.modules["cluster_sim"] = cluster_sim  # dataclasses resolve their module by name
_SPEC.loader.exec_module(cluster_sim)


def test_trace_is_seeded_and_follows_the_documented_ranges() -> None:
    a = cluster_sim.generate(7, 50, 20.0, 2.0, notebooks=10)
    assert a == cluster_sim.generate(7, 50, 20.0, 2.0, notebooks=10)
    assert a != cluster_sim.generate(8, 50, 20.0, 2.0, notebooks=10)
    for job in a.jobs:
        assert job.requested in (1, 2, 4, 8, 16)
        assert job.min_replicas == max(1, job.requested // 4)
        assert job.max_replicas == min(2 * job.requested, 32)
        assert job.gpus_per_worker in (1, 2) and 0.01 <= job.serial <= 0.08
    assert len(a.notebooks) == 10


def test_small_run_prints_the_table_and_the_ratio_line(capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    assert cluster_sim.main(["--jobs", "20", "--notebooks", "6", "--nodes", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    match = re.fullmatch(r"utilization_ratio=(\d+\.\d+) jct_ratio=(\d+\.\d+)", lines[-1])
    assert match, lines[-1]
    assert any(line.startswith("notebooks elastic") for line in lines)
    util, jct = map(float, match.groups())
    assert util > 1.0 and jct < 1.0  # elastic beats static even on a small trace


def test_every_job_finishes_and_utilization_is_a_fraction() -> None:
    trace = cluster_sim.generate(3, 30, 15.0, 1.0, notebooks=8)
    for elastic in (False, True):
        sim = cluster_sim.Sim(trace, 4, 8, 60.0, 60.0, 30.0, elastic)
        result = sim.run()
        assert len(sim.done_jobs) == 30 and not sim.jobs
        assert 0.0 < result.goodput <= result.utilization <= 1.0
