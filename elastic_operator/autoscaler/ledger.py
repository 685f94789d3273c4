"""What one allocation has decided so far: the pool, each job's replicas and reservations.

Shared by the allocation steps (:mod:`~elastic_operator.autoscaler.allocation`) and the
preemption they call (:mod:`~elastic_operator.autoscaler.preemption`), which both read and
change it; it holds no rule of its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from elastic_operator.autoscaler.model import Allocation, JobState, Worker
from elastic_operator.autoscaler.pool import Pool


class Ledger:
    """The mutable state of one allocation.

    ``raw`` is each job's target so far (the same dict as ``out.replicas``); ``reserved`` maps
    a pending or not yet created worker, ``(job, index)``, to the node whose GPUs were set
    aside for it; ``reservations`` logs every reservation in order (one given back and
    reserved again is logged again), so an index over them can catch up instead of being told
    of each.
    """

    def __init__(self, jobs: Mapping[str, JobState],
                 workers: Mapping[str, Mapping[int, Worker]],
                 pool: Pool, out: Allocation) -> None:
        self.jobs = jobs
        self.workers = workers
        self.pool = pool
        self.out = out
        self.raw = out.replicas
        self.reserved: dict[tuple[str, int], str] = {}
        self.reservations: list[tuple[str, int, str]] = []

    def reserve(self, key: str, index: int, node: str) -> None:
        self.reserved[(key, index)] = node
        self.reservations.append((key, index, node))

    def free_worker(self, job: JobState, index: int) -> str | None:
        """Take worker ``index`` out of the plan; the node whose GPUs it gave back, if any."""
        w = self.workers[job.key].get(index)
        node = w.node if w is not None and w.node is not None else self.reserved.pop(
            (job.key, index), None)
        if node is not None and node in self.pool.left:
            self.pool.give(node, job.gpus_per_worker)
            return node
        return None
