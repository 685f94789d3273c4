"""Reconstruction of the committed lineage from an index log."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.training import (
    IndexLog,
    check_exactly_once,
    committed_indices,
    committed_steps,
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
