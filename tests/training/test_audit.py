"""Reconstruction of the committed lineage from an index log."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.training import (
    IndexLog,
    check_exactly_once,
    committed_indices,
    committed_steps,
    committed_world_sizes,
    read_records,
)


def test_steps_after_the_restore_point_are_rolled_back(tmp_path: Path) -> None:
    log = IndexLog(tmp_path / "log")
    log.restore(generation=0, step=0, rank=0)
    for step, idx in ((1, [0, 1]), (2, [2, 3]), (3, [4, 5])):
        log.step(generation=0, step=step, epoch=0, rank=0, indices=idx)
    # generation 0 crashed after step 3; the newest checkpoint was after step 1
    for rank in (0, 1):
        log.restore(generation=1, step=1, rank=rank)
    log.step(generation=1, step=2, epoch=0, rank=0, indices=[2])
    log.step(generation=1, step=2, epoch=0, rank=1, indices=[3])
    log.step(generation=1, step=3, epoch=0, rank=0, indices=[5])
    log.step(generation=1, step=3, epoch=0, rank=1, indices=[4])
    log.close()
    (tmp_path / "log").write_text((tmp_path / "log").read_text() + "not json\n")
    records = read_records(tmp_path / "log")
    assert [(c.step, c.generation) for c in committed_steps(records)] == [(1, 0), (2, 1),
                                                                          (3, 1)]
    assert committed_indices(records) == {0: [0, 1, 2, 3, 5, 4]}
    assert check_exactly_once(records, dataset_size=6, epochs=1).ok
    # Generation 0 trained with one rank, generation 1 with two; step 1 of generation 0 is
    # all that stays of the first world.
    assert committed_world_sizes(records) == [1, 2]


def test_world_sizes_count_only_the_committed_lineage() -> None:
    def step(generation: int, number: int, ranks: int) -> list[dict[str, object]]:
        return [{"event": "step", "generation": generation, "step": number, "epoch": 0,
                 "rank": r, "indices": []} for r in range(ranks)]

    records = [*step(1, 1, 2), *step(1, 2, 2), *step(2, 3, 1),
               # generation 3 rolled back to step 2: generation 2's step 3 at world 1 is gone
               {"event": "restore", "generation": 3, "step": 2, "rank": 0},
               *step(3, 3, 3), *step(3, 4, 3)]
    assert committed_world_sizes(records) == [2, 3]
    assert committed_world_sizes(records[:5]) == [2, 1]
    assert committed_world_sizes([]) == []


def test_report_names_missing_repeated_and_foreign_indices() -> None:
    records = [{"event": "restore", "generation": 0, "step": 0},
               {"event": "step", "generation": 0, "step": 1, "epoch": 0, "indices": [0, 0, 9]}]
    report = check_exactly_once(records, dataset_size=3, epochs=1)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "2 indices never consumed" in text and "more than once, e.g. [0]" in text
    assert "outside the data set: [9]" in text


def test_ranks_disagreeing_on_restore_point_is_an_error() -> None:
    records = [{"event": "restore", "generation": 2, "step": 4},
               {"event": "restore", "generation": 2, "step": 8}]
    with pytest.raises(ValueError, match="generation 2 restored from both step 4 and step 8"):
        committed_steps(records)
