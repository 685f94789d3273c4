"""The GPUs each node has left while one allocation runs, and the best fit among a unit's nodes.

Best fit is the node the unit may use with room for all its GPUs that keeps the fewest left,
ties by name (:func:`best_fit` states it plainly). An allocation asks for a fit once per pending
worker and once per worker grown, thousands of times at 1,000 nodes, while its units share a
few eligible sets (jobs share templates). :class:`Pool` therefore keeps, for each eligible set
it was asked about, the set's nodes bucketed by GPUs left (a heap of names per bucket): a fit
looks at the buckets from ``gpus`` up and finds the tightest node at the top of the first
non-empty one, instead of testing every node of the set.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

# Heaps of node names by GPUs left (the list's index); entries whose node has since moved to
# another bucket stay until they surface (lazy deletion), so a move costs one push per set the
# node is in.
_Buckets = list[list[str]]


def best_fit(pool: Mapping[str, int], eligible: Iterable[str], gpus: int) -> str | None:
    """The eligible node with room for ``gpus`` that keeps the fewest left (ties: by name)."""
    fits = [(pool[n] - gpus, n) for n in eligible if n in pool and pool[n] >= gpus]
    return min(fits)[1] if fits else None


class Pool:
    """GPUs left per node (``left``, edited only through :meth:`take` and :meth:`give`).

    Guarantees: :meth:`fit` answers what :func:`best_fit` over ``left`` would, for any
    ``gpus >= 1``. The first fit for an eligible set costs the set's size; later fits cost
    the most GPUs any node of the set had left, plus the stale entries they drop; a take or
    give costs one heap push per eligible set asked about that holds the node.
    """

    def __init__(self, left: dict[str, int]) -> None:
        self.left = left
        self._buckets: dict[frozenset[str], _Buckets] = {}
        self._member_of: dict[str, list[_Buckets]] = {}

    def fit(self, eligible: frozenset[str], gpus: int) -> str | None:
        """:func:`best_fit` of ``gpus`` (at least 1) among ``eligible``."""
        buckets = self._buckets.get(eligible)
        if buckets is None:
            buckets = self._index(eligible)
        for left in range(gpus, len(buckets)):
            heap = buckets[left]
            while heap and self.left[heap[0]] != left:
                heapq.heappop(heap)
            if heap:
                return heap[0]
        return None

    def take(self, node: str, gpus: int) -> None:
        self.left[node] -= gpus
        self._moved(node)

    def give(self, node: str, gpus: int) -> None:
        self.left[node] += gpus
        self._moved(node)

    def _index(self, eligible: frozenset[str]) -> _Buckets:
        buckets: _Buckets = []
        for n in eligible:
            left = self.left.get(n)
            if left is None:
                continue
            self._member_of.setdefault(n, []).append(buckets)
            if left > 0:
                _bucket(buckets, left).append(n)
        for heap in buckets:
            heapq.heapify(heap)
        self._buckets[eligible] = buckets
        return buckets

    def _moved(self, node: str) -> None:
        left = self.left[node]
        if left > 0:
            for buckets in self._member_of.get(node, ()):
                heapq.heappush(_bucket(buckets, left), node)


def _bucket(buckets: _Buckets, left: int) -> list[str]:
    if len(buckets) <= left:
        buckets.extend([] for _ in range(left + 1 - len(buckets)))
    return buckets[left]
