"""Index log and the exactly-once audit over it.

Definition: a sample is *consumed* when it belongs to an optimizer step that is part of the
lineage of the final model. A restore from a checkpoint rolls the model back to the checkpoint's
step; steps taken after that checkpoint by the generation that crashed are not in the lineage
(their samples will be taken again and that second use is the one that counts). Exactly-once
means: in every epoch, the committed steps' indices are each index of the data set exactly once.

Log records (JSON lines, one ``os.write`` each on an ``O_APPEND`` descriptor, so lines of
several processes never interleave):
- ``{"event": "restore", "generation": g, "step": s, "rank": r}`` when a process of generation
  ``g`` starts from the checkpoint after step ``s`` (0 for a fresh start);
- ``{"event": "step", "generation": g, "step": s, "epoch": e, "rank": r, "indices": [...],
  "time": t}`` after the optimizer step ``s`` (numbered from 1), with the indices *this rank*
  trained on and the wall-clock time it was committed (for goodput and stall measurements);
- ``{"event": "discard", "generation": g, "step": s, "rank": r}`` when the in-place path
  discarded step ``s`` on ``rank`` (a peer was lost mid-step): the step is redone in a later
  generation, or it was committed by another rank and healed (then the serving rank logs every
  old rank's share of it again: records of one (generation, step, rank) count once).

Reconstruction requires what the launcher guarantees: every (re)start of the training processes
is a new, larger rendezvous generation, and each generation resumes from the newest valid
checkpoint. Then, going through generations in order, a generation's restore point drops every
step recorded after it, and its own steps are added.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class IndexLog:
    """Appends restore/step records to a file shared by all ranks."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _write(self, record: Mapping[str, Any]) -> None:
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())

    def restore(self, *, generation: int, step: int, rank: int) -> None:
        """Record that ``rank`` of ``generation`` starts after step ``step``."""
        self._write({"event": "restore", "generation": generation, "step": step, "rank": rank})

    def step(self, *, generation: int, step: int, epoch: int, rank: int,
             indices: list[int]) -> None:
        """Record the indices ``rank`` trained on in optimizer step ``step``."""
        self._write({"event": "step", "generation": generation, "step": step, "epoch": epoch,
                     "rank": rank, "indices": indices, "time": round(time.time(), 4)})

    def discard(self, *, generation: int, step: int, rank: int) -> None:
        """Record that ``rank`` discarded optimizer step ``step`` (in-place resize)."""
        self._write({"event": "discard", "generation": generation, "step": step, "rank": rank,
                     "time": round(time.time(), 4)})

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Parse a log written by ``IndexLog`` (or JSON progress lines; other lines are ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") in ("restore", "step", "discard"):
            records.append(record)
    return records


@dataclass(frozen=True)
class CommittedStep:
    """An optimizer step in the final model's lineage, with all ranks' indices."""

    step: int
    epoch: int
    generation: int
    indices: list[int]


def committed_steps(records: Iterable[Mapping[str, Any]]) -> list[CommittedStep]:
    """The lineage of the final model: committed steps in step order (rolled-back ones dropped).

    Raises ``ValueError`` when the ranks of one generation disagree on their restore point.
    """
    restores: dict[int, int] = {}
    steps: dict[int, dict[int, tuple[int, dict[int, list[int]]]]] = {}
    for record in records:
        generation = int(record["generation"])
        if record["event"] == "restore":
            step = int(record["step"])
            if restores.setdefault(generation, step) != step:
                raise ValueError(f"generation {generation} restored from both step "
                                 f"{restores[generation]} and step {step}")
        elif record["event"] == "step":
            per_step = steps.setdefault(generation, {})
            _, by_rank = per_step.setdefault(int(record["step"]), (int(record["epoch"]), {}))
            # One record per (generation, step, rank) counts; a record without a rank is its own.
            rank = int(record["rank"]) if "rank" in record else -1 - len(by_rank)
            by_rank[rank] = [int(i) for i in record["indices"]]
    lineage: dict[int, CommittedStep] = {}
    for generation in sorted(set(restores) | set(steps)):
        restored = restores.get(generation)
        if restored is not None:
            lineage = {s: c for s, c in lineage.items() if s <= restored}
        for step, (epoch, by_rank) in steps.get(generation, {}).items():
            indices = [i for rank in sorted(by_rank) for i in by_rank[rank]]
            lineage[step] = CommittedStep(step, epoch, generation, indices)
    return [lineage[s] for s in sorted(lineage)]


def committed_world_sizes(records: Iterable[Mapping[str, Any]]) -> list[int]:
    """The distinct world sizes of the committed steps in step order (consecutive repeats
    folded): ``[2, 1, 2]`` for a job that shrank once and grew back. A step's world size is the
    number of ranks that logged it in the generation that committed it."""
    records = list(records)
    ranks: dict[tuple[int, int], set[int]] = {}
    for record in records:
        if record["event"] == "step":
            key = (int(record["generation"]), int(record["step"]))
            ranks.setdefault(key, set()).add(int(record["rank"]))
    sizes: list[int] = []
    for committed in committed_steps(records):
        size = len(ranks[(committed.generation, committed.step)])
        if not sizes or sizes[-1] != size:
            sizes.append(size)
    return sizes


def redone_steps(records: Iterable[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """(generation, step) of every step discarded mid-way and not committed in that generation
    by any rank: steps the in-place path took again at the next world size."""
    records = list(records)
    committed = {(int(r["generation"]), int(r["step"])) for r in records if r["event"] == "step"}
    discarded = {(int(r["generation"]), int(r["step"])) for r in records
                 if r["event"] == "discard"}
    return sorted(discarded - committed)


def committed_indices(records: Iterable[Mapping[str, Any]]) -> dict[int, list[int]]:
    """Per epoch, the indices of the committed steps in commit order."""
    by_epoch: dict[int, list[int]] = {}
    for committed in committed_steps(records):
        by_epoch.setdefault(committed.epoch, []).extend(committed.indices)
    return by_epoch


@dataclass(frozen=True)
class ExactlyOnceReport:
    """Outcome of ``check_exactly_once``: ``ok`` or the list of problems found."""

    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every checked epoch consumed each index exactly once."""
        return not self.problems


def check_exactly_once(records: Iterable[Mapping[str, Any]], *, dataset_size: int,
                       epochs: int) -> ExactlyOnceReport:
    """Check that epochs ``0 .. epochs-1`` each consumed every index in ``range(dataset_size)``
    exactly once in the committed lineage."""
    by_epoch = committed_indices(records)
    problems = []
    expected = set(range(dataset_size))
    for epoch in range(epochs):
        counts = Counter(by_epoch.get(epoch, []))
        missing = expected - counts.keys()
        repeated = sorted(i for i, n in counts.items() if n > 1)
        foreign = sorted(counts.keys() - expected)
        if missing:
            problems.append(f"epoch {epoch}: {len(missing)} indices never consumed, e.g. "
                            f"{sorted(missing)[:10]}")
        if repeated:
            problems.append(f"epoch {epoch}: {len(repeated)} indices consumed more than once, "
                            f"e.g. {repeated[:10]}")
        if foreign:
            problems.append(f"epoch {epoch}: indices outside the data set: {foreign[:10]}")
    extra = sorted(e for e in by_epoch if not 0 <= e < epochs)
    if extra:
        problems.append(f"steps committed in unexpected epochs {extra}")
    return ExactlyOnceReport(problems)
